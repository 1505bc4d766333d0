// CPU and NUMA topology from sysfs.
//
// Everything is read under a root directory ("/sys" on a live system; tests point it at
// fixture trees). Malformed content throws SysfsError (-> Python ValueError) naming the file;
// missing optional files fall back to documented defaults. Nothing here aborts.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace numoe {

// Malformed sysfs content (or a bad argument). Derives from std::invalid_argument, which
// nanobind turns into ValueError.
class SysfsError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Largest CPU id accepted anywhere (Linux NR_CPUS tops out at 8192 on x86; leave headroom).
constexpr int kMaxCpuId = (1 << 20) - 1;
// Largest NUMA node id accepted (Linux MAX_NUMNODES is at most 1024).
constexpr int kMaxNodeId = (1 << 16) - 1;

struct NumaNode {
  int id = 0;
  std::vector<int> cpus;       // online CPUs of the node (empty for a memory-only node)
  uint64_t mem_total = 0;      // bytes (0 for a CPU-only node or when unknown)
  uint64_t mem_free = 0;       // bytes
  std::vector<int> distances;  // the node's `distance` line: one entry per online node,
                               // in node-id order (empty when the file is missing)
  bool synthetic = false;      // true when made up because sysfs has no node directories
};

struct CpuInfo {
  int id = 0;
  int node = -1;              // -1 when no node lists this CPU
  int package = 0;            // physical_package_id (0 when unknown)
  int die = 0;                // die_id (0 when unknown)
  int core = 0;               // core_id (the CPU id when unknown)
  std::vector<int> siblings;  // online hardware threads of the same physical core, sorted
  bool primary = false;       // lowest CPU of its sibling group
  bool allowed = false;       // in the allowed set (affinity or override)
};

struct Topology {
  std::vector<NumaNode> nodes;    // sorted by id
  std::vector<CpuInfo> cpus;      // online CPUs, sorted by id
  std::vector<int> allowed_cpus;  // sorted; the allowed set intersected with online CPUs
  bool smt = false;               // some physical core has more than one online thread
};

// "0-3,8,10-11" -> {0,1,2,3,8,10,11}; also "a-b:used/group" strides as in the kernel's
// bitmap_parselist. Empty / whitespace-only -> {}. Result sorted, no duplicates.
// Throws SysfsError mentioning `where` (a file path or "cpulist") on malformed input.
std::vector<int> parse_cpulist(const std::string &text, const std::string &where = "cpulist");

// CPUs this process may run on (sched_getaffinity), sorted.
std::vector<int> sched_getaffinity_cpus();

// Read the topology under `root`. `allowed_cpus` overrides the process affinity (to simulate
// containers / taskset in tests).
Topology read_topology(const std::string &root = "/sys",
                       const std::optional<std::vector<int>> &allowed_cpus = std::nullopt);

}  // namespace numoe
