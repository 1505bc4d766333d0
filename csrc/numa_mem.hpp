// Node memory: buffers placed on one NUMA node, page placement queries, releasing file pages.
//
// No libnuma: the memory-policy system calls are made with syscall() (mbind, move_pages), and
// where the kernel refuses them (EPERM under a container's seccomp profile, ENOSYS without
// CONFIG_NUMA) numoe falls back to first touch from threads pinned to the node's CPUs (and,
// for queries, to mincore). Nothing here aborts: bad arguments throw std::invalid_argument
// (-> Python ValueError), failed system calls that leave no fallback std::runtime_error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

namespace numoe {

// Keys of pages_per_node besides node ids.
constexpr int kNotResident = -1;         // page not mapped in this process (or no page there)
constexpr int kUnknownNode = -2;         // resident, node unknown (move_pages refused, >1 node)
constexpr size_t kNodeAlign = 2u << 20;  // NodeBuffer alignment and size granule: 2 MiB

// `bytes` (> 0) of anonymous, zero-filled memory on NUMA node `node`, 2 MiB aligned (and
// MADV_HUGEPAGE, best effort), freed on destruction. Placement: mbind (MPOL_BIND when
// strict, else MPOL_PREFERRED: a full node spills instead of killing the process) when the
// kernel allows it; then every page is first-touched from threads pinned to the node's CPUs
// (the pool's workers of a group on that node when there are any, else a temporary thread),
// so the pages land on the node even when mbind was refused. A node without CPUs (memory
// only) relies on mbind alone.
// Throws std::invalid_argument for bytes == 0, bytes beyond the machine's memory or beyond
// MemAvailable (every page is touched at once), or a node this machine does not have;
// std::runtime_error when mmap fails.
class NodeBuffer {
 public:
  NodeBuffer(size_t bytes, int node, bool strict = false);
  ~NodeBuffer();
  NodeBuffer(const NodeBuffer &) = delete;
  NodeBuffer &operator=(const NodeBuffer &) = delete;

  uint8_t *data() const { return data_; }
  size_t size() const { return size_; }      // bytes asked for
  size_t mapped() const { return mapped_; }  // bytes mapped: size rounded up to 2 MiB
  int node() const { return node_; }
  bool bound() const { return bound_; }  // mbind succeeded
  // How the pages were placed: "mbind+touch", "first-touch" (mbind refused: see
  // mbind_error), "mbind" (memory-only node, nothing to touch from).
  const std::string &how() const { return how_; }
  const std::string &mbind_error() const { return mbind_error_; }  // "" when bound

 private:
  uint8_t *data_ = nullptr;
  size_t size_ = 0, mapped_ = 0;
  int node_ = 0;
  bool bound_ = false;
  std::string how_, mbind_error_;
};

// The allocator's own accounting: node -> bytes currently mapped by live NodeBuffers
// (each counts mapped(), i.e. rounded up to 2 MiB). Nodes with nothing are left out.
std::map<int, int64_t> allocated_per_node();

// Where the pages of [ptr, ptr + bytes) are: node -> bytes, plus kNotResident (and
// kUnknownNode, see above) for the rest; the values add up to `bytes` (partial first and last
// pages count only their bytes inside the range). move_pages in query mode, one address per
// page, in chunks; file mappings work too (the page-cache page mapped here). When move_pages is
// refused: mincore (page-cache residency), attributed to node 0 on a one-node machine, else
// to kUnknownNode. map_cached: first read one byte of every page the page cache holds (mincore)
// so that cached file pages not yet mapped here are counted on their node (minor faults, no disk
// reads): where a file's cached pages sit, for a fresh mapping. Throws std::invalid_argument for
// a null ptr or a range that wraps.
std::map<int, int64_t> pages_per_node(const void *ptr, size_t bytes, bool map_cached = false);

// Drop the pages of a read-only file mapping from this process (madvise MADV_DONTNEED on the
// range rounded inward to whole pages), so they leave RSS once copied to node memory; the file
// stays mapped and re-reads fault them back in. Returns the bytes released (0 when the range
// holds no whole page). Throws std::invalid_argument when part of the range is not a
// read-only file mapping of this process (anonymous or writable memory would lose data).
size_t release_file_pages(const void *ptr, size_t bytes);

// Map every page of [ptr, ptr + bytes) into this process now, reading it from the file if
// it is not cached (as llama.cpp's MAP_POPULATE): madvise(MADV_POPULATE_READ) where the kernel
// has it (5.14+), else one read per page on the pool. A decode step then never takes a page
// fault on the first use of an expert. Returns true when madvise did it.
bool prefault_pages(const void *ptr, size_t bytes);

// Nodes this machine has (online, from sysfs; {0} without node directories).
std::map<int, int64_t> node_memory();  // node -> MemTotal bytes (0 when unknown)

}  // namespace numoe
