// Node memory: see numa_mem.hpp.
#include "numa_mem.hpp"

#include <errno.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

#include "threadpool.hpp"
#include "topology.hpp"

namespace numoe {
namespace {

constexpr int kMpolPreferred = 1;  // <linux/mempolicy.h>
constexpr int kMpolBind = 2;

std::mutex g_mu;
std::map<int, int64_t> g_allocated;  // node -> bytes mapped by live NodeBuffers

void account(int node, int64_t delta) {
  std::lock_guard<std::mutex> lock(g_mu);
  const int64_t v = (g_allocated[node] += delta);
  if (v == 0) g_allocated.erase(node);
}

size_t page_size() {
  static const size_t p = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return p;
}

std::string errno_text(const char *call, int err) {
  return std::string(call) + ": " + std::strerror(err);
}

// NUMOE_NUMA_SYSCALLS=off: act as if mbind and move_pages were refused (as under a container's
// seccomp profile), so the fallbacks can be tested on any machine. Read at each call.
bool syscalls_off() {
  const char *v = std::getenv("NUMOE_NUMA_SYSCALLS");
  return v != nullptr && std::strcmp(v, "off") == 0;
}

// MemAvailable of /proc/meminfo in bytes (page cache that can be dropped counts); 0 if unknown.
size_t mem_available() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  unsigned long long kb = 0;
  while (f >> key >> kb) {
    if (key == "MemAvailable:") return static_cast<size_t>(kb) * 1024;
    f.ignore(1 << 10, '\n');
  }
  return 0;
}

// Throws for a null pointer or a range past the end of the address space.
uintptr_t check_range(const void *ptr, size_t bytes, const char *what) {
  const uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
  if (ptr == nullptr) throw std::invalid_argument(std::string(what) + ": null pointer");
  if (p + bytes < p) throw std::invalid_argument(std::string(what) + ": range wraps around");
  return p;
}

// Write one byte per page of chunks claimed from `next` (chunk c = [c, c+1) * kNodeAlign).
void touch_chunks(uint8_t *base, size_t n_chunks, std::atomic<size_t> &next) {
  const size_t pg = page_size();
  for (size_t c; (c = next.fetch_add(1)) < n_chunks;) {
    volatile uint8_t *p = base + c * kNodeAlign;
    for (size_t off = 0; off < kNodeAlign; off += pg) p[off] = 0;
  }
}

// First-touch every 2 MiB chunk of [base, base + bytes) from CPUs of `cpus` (sorted): the pool's
// pinned workers (not thread 0, the unpinned caller) that run on one of them take chunks; a
// temporary thread allowed only on `cpus` touches whatever they left (all of it when the pool has
// no worker there, or when this call ran serially inside another parallel_for).
void first_touch(uint8_t *base, size_t bytes, const std::vector<int> &cpus) {
  const size_t n_chunks = bytes / kNodeAlign;
  std::atomic<size_t> next{0};
  ThreadPool &pool = ThreadPool::instance();
  const auto groups = pool.groups();
  std::vector<bool> on_node(groups.size(), false);
  bool any = false;
  for (size_t g = 0; g < groups.size(); ++g)
    for (int c : groups[g])
      if (std::binary_search(cpus.begin(), cpus.end(), c)) on_node[g] = any = true;
  if (any && pool.num_threads() > 1) {
    pool.parallel_for(pool.num_threads(), [&](int64_t, int th) {
      const int g = pool.group_of(th);
      if (th == 0 || g < 0 || g >= static_cast<int>(on_node.size()) || !on_node[g]) return;
      if (!std::binary_search(cpus.begin(), cpus.end(), sched_getcpu())) return;
      touch_chunks(base, n_chunks, next);
    });
  }
  if (next.load() >= n_chunks) return;
  std::thread t([&] {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int c : cpus)
      if (c < CPU_SETSIZE) CPU_SET(c, &set);
    sched_setaffinity(0, sizeof(set), &set);  // best effort: placement is reported, not assumed
    touch_chunks(base, n_chunks, next);
  });
  t.join();
}

}  // namespace

std::map<int, int64_t> node_memory() {
  std::map<int, int64_t> out;
  for (const NumaNode &n : read_topology("/sys").nodes)
    out[n.id] = static_cast<int64_t>(n.mem_total);
  return out;
}

std::map<int, int64_t> allocated_per_node() {
  std::lock_guard<std::mutex> lock(g_mu);
  return g_allocated;
}

NodeBuffer::NodeBuffer(size_t bytes, int node, bool strict) : size_(bytes), node_(node) {
  if (bytes == 0) throw std::invalid_argument("NodeBuffer: bytes must be > 0");
  const Topology topo = read_topology("/sys");
  const NumaNode *nd = nullptr;
  std::string ids;
  for (const NumaNode &n : topo.nodes) {
    if (n.id == node) nd = &n;
    ids += (ids.empty() ? "" : ",") + std::to_string(n.id);
  }
  if (nd == nullptr)
    throw std::invalid_argument("NodeBuffer: node " + std::to_string(node) +
                                ": this machine has nodes " + ids);
  const size_t phys =
      static_cast<size_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
  if (bytes > phys)
    throw std::invalid_argument("NodeBuffer: " + std::to_string(bytes) +
                                " bytes is more than this machine's memory (" +
                                std::to_string(phys) + " bytes)");
  // Every page is touched now: more than the kernel can give would end in the OOM killer.
  const size_t avail = mem_available();
  if (avail > 0 && bytes > avail)
    throw std::invalid_argument("NodeBuffer: " + std::to_string(bytes) +
                                " bytes is more than the memory available now (MemAvailable " +
                                std::to_string(avail) + " bytes)");
  mapped_ = (bytes + kNodeAlign - 1) / kNodeAlign * kNodeAlign;  // no overflow: bytes <= phys

  // Over-map by 2 MiB, then trim head and tail so the buffer starts on a 2 MiB boundary.
  void *raw = mmap(nullptr, mapped_ + kNodeAlign, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED)
    throw std::runtime_error("NodeBuffer: " + errno_text("mmap", errno) + " (" +
                             std::to_string(mapped_) + " bytes)");
  const uintptr_t r = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t a = (r + kNodeAlign - 1) / kNodeAlign * kNodeAlign;
  if (a > r) munmap(raw, a - r);
  if (r + kNodeAlign > a) munmap(reinterpret_cast<void *>(a + mapped_), r + kNodeAlign - a);
  data_ = reinterpret_cast<uint8_t *>(a);
#ifdef MADV_HUGEPAGE
  madvise(data_, mapped_, MADV_HUGEPAGE);  // best effort (THP may be off)
#endif

  // mbind before the first touch: nodemask with bit `node`; maxnode = bits + 1 (the kernel
  // reads maxnode - 1 bits), as libnuma passes it.
#ifdef SYS_mbind
  const size_t bits = 8 * sizeof(unsigned long);
  std::vector<unsigned long> mask(static_cast<size_t>(node) / bits + 1, 0);
  mask[static_cast<size_t>(node) / bits] |= 1ul << (static_cast<size_t>(node) % bits);
  const long rc = syscalls_off()
                      ? (errno = EPERM, -1L)
                      : syscall(SYS_mbind, data_, mapped_, strict ? kMpolBind : kMpolPreferred,
                                mask.data(), mask.size() * bits + 1, 0u);
  const int err = errno;
  bound_ = rc == 0;
  if (!bound_)
    mbind_error_ = errno_text("mbind", err) + (syscalls_off() ? " (NUMOE_NUMA_SYSCALLS=off)" : "");
#else
  mbind_error_ = "mbind: not available on this platform";
#endif

  std::vector<int> cpus;  // the node's CPUs this process may run on
  for (int c : nd->cpus)
    if (std::binary_search(topo.allowed_cpus.begin(), topo.allowed_cpus.end(), c))
      cpus.push_back(c);
  if (!cpus.empty()) {
    first_touch(data_, mapped_, cpus);
    how_ = bound_ ? "mbind+touch" : "first-touch";
  } else {
    // No CPU to touch from: mbind alone decides (pages are placed on first use).
    how_ = bound_ ? "mbind" : "unplaced";
  }
  account(node_, static_cast<int64_t>(mapped_));
}

NodeBuffer::~NodeBuffer() {
  if (data_ != nullptr) {
    munmap(data_, mapped_);
    account(node_, -static_cast<int64_t>(mapped_));
  }
}

std::map<int, int64_t> pages_per_node(const void *ptr, size_t bytes, bool map_cached) {
  std::map<int, int64_t> out;
  if (bytes == 0) return out;
  const uintptr_t p = check_range(ptr, bytes, "pages_per_node");
  const size_t pg = page_size();
  const uintptr_t first = p / pg * pg, end = p + bytes;
  const size_t n_pages = (end - first + pg - 1) / pg;
  // bytes of page i inside [p, end)
  auto page_bytes = [&](size_t i) {
    const uintptr_t lo = std::max<uintptr_t>(first + i * pg, p);
    const uintptr_t hi = std::min<uintptr_t>(first + (i + 1) * pg, end);
    return static_cast<int64_t>(hi - lo);
  };
  constexpr size_t kChunk = 4096;  // pages per system call
  std::vector<void *> addrs(kChunk);
  std::vector<int> status(kChunk);
  std::vector<unsigned char> vec(kChunk);
  bool use_mincore = false;
  int mincore_node = kUnknownNode;
  for (size_t i0 = 0; i0 < n_pages; i0 += kChunk) {
    const size_t n = std::min(kChunk, n_pages - i0);
    if (map_cached && mincore(reinterpret_cast<void *>(first + i0 * pg), n * pg, vec.data()) == 0)
      for (size_t i = 0; i < n; ++i)
        if (vec[i] & 1) (void)*reinterpret_cast<const volatile uint8_t *>(first + (i0 + i) * pg);
    if (!use_mincore) {
      for (size_t i = 0; i < n; ++i) addrs[i] = reinterpret_cast<void *>(first + (i0 + i) * pg);
      const long rc = syscalls_off() ? -1L
                                     : syscall(SYS_move_pages, 0, static_cast<unsigned long>(n),
                                               addrs.data(), nullptr, status.data(), 0);
      if (rc == 0) {
        for (size_t i = 0; i < n; ++i)
          out[status[i] >= 0 ? status[i] : kNotResident] += page_bytes(i0 + i);
        continue;
      }
      // Refused (EPERM: seccomp; ENOSYS: no CONFIG_NUMA): residency only, from mincore.
      use_mincore = true;
      const auto nodes = node_memory();
      if (nodes.size() == 1) mincore_node = nodes.begin()->first;
    }
    if (mincore(reinterpret_cast<void *>(first + i0 * pg), n * pg, vec.data()) != 0)
      std::fill(vec.begin(), vec.begin() + n, 0);  // ENOMEM: part of the range is unmapped
    for (size_t i = 0; i < n; ++i)
      out[(vec[i] & 1) ? mincore_node : kNotResident] += page_bytes(i0 + i);
  }
  return out;
}

bool prefault_pages(const void *ptr, size_t bytes) {
  if (bytes == 0) return true;
  const uintptr_t p = check_range(ptr, bytes, "prefault");
  const size_t pg = page_size();
  const uintptr_t lo = p / pg * pg;
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
  if (madvise(reinterpret_cast<void *>(lo), p + bytes - lo, MADV_POPULATE_READ) == 0) return true;
  constexpr size_t kChunk = 2 << 20;
  const int64_t n = static_cast<int64_t>((bytes + kChunk - 1) / kChunk);
  std::atomic<uint64_t> sink{0};
  parallel_for(n, [&](int64_t t, int) {
    const volatile uint8_t *b = static_cast<const uint8_t *>(ptr);
    const size_t b0 = static_cast<size_t>(t) * kChunk, b1 = std::min(bytes, b0 + kChunk);
    uint64_t s = 0;
    for (size_t i = b0; i < b1; i += pg) s += b[i];
    s += b[b1 - 1];
    sink.fetch_add(s, std::memory_order_relaxed);
  });
  return false;
}

size_t release_file_pages(const void *ptr, size_t bytes) {
  if (bytes == 0) return 0;
  const uintptr_t p = check_range(ptr, bytes, "release");
  const size_t pg = page_size();
  const uintptr_t lo = (p + pg - 1) / pg * pg, hi = (p + bytes) / pg * pg;
  if (hi <= lo) return 0;
  // Every byte of [lo, hi) must be in a read-only, file-backed mapping of this process.
  std::ifstream maps("/proc/self/maps");
  if (!maps) throw std::runtime_error("release: cannot read /proc/self/maps");
  uintptr_t covered = lo;
  std::string line;
  while (covered < hi && std::getline(maps, line)) {
    std::istringstream in(line);
    std::string range, perms, offset, dev;
    unsigned long long inode = 0;
    in >> range >> perms >> offset >> dev >> inode;
    const size_t dash = range.find('-');
    if (dash == std::string::npos || perms.size() < 2) continue;
    const uintptr_t a = std::stoull(range.substr(0, dash), nullptr, 16);
    const uintptr_t b = std::stoull(range.substr(dash + 1), nullptr, 16);
    if (b <= covered || a > covered) continue;  // maps is sorted: a gap shows as a > covered
    if (perms[1] == 'w' || inode == 0)
      throw std::invalid_argument("release: " + line +
                                  ": not a read-only file mapping (its pages would be lost)");
    covered = b;
  }
  if (covered < hi)
    throw std::invalid_argument("release: the range is not (entirely) mapped in this process");
  if (madvise(reinterpret_cast<void *>(lo), hi - lo, MADV_DONTNEED) != 0)
    throw std::runtime_error("release: " + errno_text("madvise", errno));
  return hi - lo;
}

}  // namespace numoe
