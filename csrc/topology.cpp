#include "topology.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <set>
#include <thread>
#include <tuple>

#ifdef __linux__
#include <sched.h>
#endif

namespace fs = std::filesystem;

namespace numoe {
namespace {

// sysfs attribute files are at most a page; anything far bigger is not what we expect.
constexpr std::size_t kMaxFileBytes = 1 << 20;

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}
bool is_digit(char c) { return c >= '0' && c <= '9'; }

std::string trim(const std::string &s) {
  std::size_t b = 0, e = s.size();
  while (b < e && is_space(s[b])) ++b;
  while (e > b && is_space(s[e - 1])) --e;
  return s.substr(b, e - b);
}

[[noreturn]] void fail(const std::string &where, const std::string &what) {
  throw SysfsError(where + ": " + what);
}

std::string show(const std::string &s) {
  // Show at most 60 characters of the offending text, with control characters escaped.
  std::string out = "'";
  for (std::size_t i = 0; i < s.size() && i < 60; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '\n') {
      out += "\\n";
    } else if (c < 0x20 || c >= 0x7f) {
      static const char hex[] = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > 60) out += "...";
  return out + "'";
}

// Whole file, or nullopt when it does not exist / cannot be opened.
std::optional<std::string> read_file(const fs::path &p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) return std::nullopt;
  std::string data;
  char buf[4096];
  while (f) {
    f.read(buf, sizeof buf);
    data.append(buf, static_cast<std::size_t>(f.gcount()));
    if (data.size() > kMaxFileBytes) fail(p.string(), "file larger than 1 MiB");
  }
  if (f.bad()) return std::nullopt;  // e.g. EIO from a sysfs attribute: treat as absent
  return data;
}

// Non-negative decimal integer at s[i...], at most `max`; advances i.
int parse_uint_at(const std::string &s, std::size_t &i, int max, const std::string &where,
                  const std::string &text) {
  if (i >= s.size() || !is_digit(s[i])) fail(where, "expected a number in " + show(text));
  long long v = 0;
  while (i < s.size() && is_digit(s[i])) {
    v = v * 10 + (s[i] - '0');
    if (v > max)
      fail(where, "number out of range (max " + std::to_string(max) + ") in " + show(text));
    ++i;
  }
  return static_cast<int>(v);
}

// A whole (trimmed) string that is one integer, optionally negative, fitting in int.
int parse_int(const std::string &raw, const std::string &where) {
  std::string s = trim(raw);
  std::size_t i = 0;
  bool neg = false;
  if (i < s.size() && s[i] == '-') {
    neg = true;
    ++i;
  }
  int v = parse_uint_at(s, i, std::numeric_limits<int>::max(), where, s);
  if (i != s.size()) fail(where, "expected one integer, got " + show(s));
  return neg ? -v : v;
}

std::optional<int> read_int(const fs::path &p) {
  auto text = read_file(p);
  if (!text) return std::nullopt;
  return parse_int(*text, p.string());
}

std::optional<std::vector<int>> read_cpulist(const fs::path &p) {
  auto text = read_file(p);
  if (!text) return std::nullopt;
  return parse_cpulist(*text, p.string());
}

// "Node 0 MemTotal:  5334816 kB" lines -> bytes for MemTotal and MemFree.
void parse_meminfo(const std::string &text, const std::string &where, uint64_t &total,
                   uint64_t &free) {
  bool have_total = false, have_free = false;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    // Split on whitespace.
    std::vector<std::string> tok;
    std::size_t i = 0;
    while (i < line.size()) {
      while (i < line.size() && is_space(line[i])) ++i;
      std::size_t b = i;
      while (i < line.size() && !is_space(line[i])) ++i;
      if (i > b) tok.push_back(line.substr(b, i - b));
    }
    for (std::size_t k = 0; k < tok.size(); ++k) {
      bool is_total = tok[k] == "MemTotal:", is_free = tok[k] == "MemFree:";
      if (!is_total && !is_free) continue;
      if (k + 1 >= tok.size()) fail(where, "no value in " + show(line));
      const std::string &num = tok[k + 1];
      uint64_t v = 0;
      if (num.empty()) fail(where, "no value in " + show(line));
      for (char c : num) {
        if (!is_digit(c)) fail(where, "bad value in " + show(line));
        if (v > (std::numeric_limits<uint64_t>::max() / 1024 - 9) / 10)
          fail(where, "value out of range in " + show(line));
        v = v * 10 + static_cast<uint64_t>(c - '0');
      }
      uint64_t mult = 1024;  // the kernel always writes kB
      if (k + 2 < tok.size()) {
        if (tok[k + 2] == "kB") {
          mult = 1024;
        } else {
          fail(where, "unknown unit in " + show(line));
        }
      }
      (is_total ? total : free) = v * mult;
      (is_total ? have_total : have_free) = true;
      break;
    }
  }
  if (!have_total) total = 0;
  if (!have_free) free = 0;
}

std::vector<int> parse_int_list(const std::string &text, const std::string &where) {
  std::vector<int> out;
  std::size_t i = 0;
  while (true) {
    while (i < text.size() && is_space(text[i])) ++i;
    if (i >= text.size()) break;
    std::size_t b = i;
    while (i < text.size() && !is_space(text[i])) ++i;
    out.push_back(parse_int(text.substr(b, i - b), where));
    if (out.size() > static_cast<std::size_t>(kMaxNodeId) + 1) fail(where, "too many entries");
  }
  return out;
}

// Sorted ids N of the entries `<prefix>N` that are directories of `dir`.
std::vector<int> numbered_dirs(const fs::path &dir, const std::string &prefix, int max_id) {
  std::vector<int> ids;
  std::error_code ec;
  fs::directory_iterator it(dir, ec), end;
  if (ec) return ids;
  for (; it != end; it.increment(ec)) {
    if (ec) break;
    std::string name = it->path().filename().string();
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    std::string digits = name.substr(prefix.size());
    if (!std::all_of(digits.begin(), digits.end(), is_digit) || digits.size() > 9) continue;
    long long id = std::stoll(digits);
    if (id > max_id) continue;
    std::error_code ec2;
    if (!it->is_directory(ec2) || ec2) continue;
    ids.push_back(static_cast<int>(id));
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

struct DisjointSets {
  std::vector<std::size_t> parent;
  explicit DisjointSets(std::size_t n) : parent(n) { std::iota(parent.begin(), parent.end(), 0); }
  std::size_t find(std::size_t x) {
    while (parent[x] != x) x = parent[x] = parent[parent[x]];
    return x;
  }
  void unite(std::size_t a, std::size_t b) {
    a = find(a);
    b = find(b);
    if (a != b) parent[std::max(a, b)] = std::min(a, b);  // root = lowest index = lowest CPU
  }
};

}  // namespace

std::vector<int> parse_cpulist(const std::string &text, const std::string &where) {
  const std::string s = trim(text);
  std::vector<char> bits;
  auto set = [&](int cpu) {
    if (static_cast<std::size_t>(cpu) >= bits.size())
      bits.resize(static_cast<std::size_t>(cpu) + 1, 0);
    bits[static_cast<std::size_t>(cpu)] = 1;
  };
  std::size_t i = 0;
  while (i < s.size()) {
    int a = parse_uint_at(s, i, kMaxCpuId, where, s);
    int b = a, used = 1, group = 1;
    if (i < s.size() && s[i] == '-') {
      ++i;
      b = parse_uint_at(s, i, kMaxCpuId, where, s);
      if (b < a)
        fail(where,
             "descending range " + std::to_string(a) + "-" + std::to_string(b) + " in " + show(s));
      if (i < s.size() && s[i] == ':') {  // a-b:used/group
        ++i;
        used = parse_uint_at(s, i, kMaxCpuId + 1, where, s);
        if (i >= s.size() || s[i] != '/') fail(where, "expected '/' in stride of " + show(s));
        ++i;
        group = parse_uint_at(s, i, kMaxCpuId + 1, where, s);
        if (used < 1 || group < 1 || used > group) fail(where, "bad stride in " + show(s));
      }
    }
    for (long long c = a; c <= b; c += group) {
      for (long long u = 0; u < used && c + u <= b; ++u) set(static_cast<int>(c + u));
    }
    if (i == s.size()) break;
    if (s[i] != ',')
      fail(where, "unexpected character " + show(std::string(1, s[i])) + " in " + show(s));
    ++i;
    if (i == s.size()) fail(where, "trailing ',' in " + show(s));
  }
  std::vector<int> out;
  for (std::size_t c = 0; c < bits.size(); ++c)
    if (bits[c]) out.push_back(static_cast<int>(c));
  return out;
}

std::vector<int> sched_getaffinity_cpus() {
  std::vector<int> out;
#ifdef __linux__
  for (int n = 1024; n <= kMaxCpuId + 1; n *= 2) {
    std::unique_ptr<cpu_set_t, void (*)(cpu_set_t *)> set(CPU_ALLOC(n),
                                                          [](cpu_set_t *p) { CPU_FREE(p); });
    if (!set) throw std::bad_alloc();
    std::size_t size = CPU_ALLOC_SIZE(n);
    CPU_ZERO_S(size, set.get());
    if (sched_getaffinity(0, size, set.get()) == 0) {
      for (int c = 0; c < n; ++c)
        if (CPU_ISSET_S(c, size, set.get())) out.push_back(c);
      return out;
    }
    if (errno != EINVAL)
      throw std::runtime_error(std::string("sched_getaffinity: ") + std::strerror(errno));
  }
  throw std::runtime_error("sched_getaffinity: more CPUs than supported");
#else
  unsigned n = std::thread::hardware_concurrency();
  for (unsigned c = 0; c < std::max(1u, n); ++c) out.push_back(static_cast<int>(c));
  return out;
#endif
}

Topology read_topology(const std::string &root_str,
                       const std::optional<std::vector<int>> &allowed_override) {
  const fs::path root(root_str);
  const fs::path node_dir = root / "devices" / "system" / "node";
  const fs::path cpu_dir = root / "devices" / "system" / "cpu";
  Topology t;

  // Allowed set: the override (validated) or this process's affinity.
  std::vector<int> allowed;
  if (allowed_override) {
    for (int c : *allowed_override) {
      if (c < 0 || c > kMaxCpuId)
        throw SysfsError("allowed_cpus: CPU id " + std::to_string(c) + " out of range");
      allowed.push_back(c);
    }
    std::sort(allowed.begin(), allowed.end());
    allowed.erase(std::unique(allowed.begin(), allowed.end()), allowed.end());
  } else {
    allowed = sched_getaffinity_cpus();
  }

  // NUMA nodes.
  for (int id : numbered_dirs(node_dir, "node", kMaxNodeId)) {
    const fs::path d = node_dir / ("node" + std::to_string(id));
    NumaNode n;
    n.id = id;
    n.cpus = read_cpulist(d / "cpulist").value_or(std::vector<int>{});
    if (auto mi = read_file(d / "meminfo"))
      parse_meminfo(*mi, (d / "meminfo").string(), n.mem_total, n.mem_free);
    if (auto dist = read_file(d / "distance"))
      n.distances = parse_int_list(*dist, (d / "distance").string());
    t.nodes.push_back(std::move(n));
  }

  // Online CPUs: cpu/online, else cpu/present, else the cpuN directories, else the nodes'
  // cpulists, else (a sandbox hiding all of sysfs) the allowed set.
  std::vector<int> online;
  if (auto l = read_cpulist(cpu_dir / "online")) {
    online = *l;
  } else if (auto p = read_cpulist(cpu_dir / "present")) {
    online = *p;
  } else {
    online = numbered_dirs(cpu_dir, "cpu", kMaxCpuId);
    if (online.empty()) {
      for (const auto &n : t.nodes) online.insert(online.end(), n.cpus.begin(), n.cpus.end());
      std::sort(online.begin(), online.end());
      online.erase(std::unique(online.begin(), online.end()), online.end());
    }
    if (online.empty()) online = allowed;
  }
  const std::set<int> online_set(online.begin(), online.end());

  if (t.nodes.empty()) {
    NumaNode n;
    n.id = 0;
    n.cpus = online;
    n.distances = {10};
    n.synthetic = true;
    t.nodes.push_back(std::move(n));
  }
  // Node CPUs are kept only when online; each CPU belongs to the first (lowest) node listing it.
  std::map<int, int> node_of;
  for (auto &n : t.nodes) {
    std::vector<int> kept;
    for (int c : n.cpus)
      if (online_set.count(c)) {
        kept.push_back(c);
        node_of.emplace(c, n.id);
      }
    n.cpus = std::move(kept);
  }

  // Per-CPU topology.
  const std::size_t ncpu = online.size();
  std::map<int, std::size_t> index_of;
  for (std::size_t i = 0; i < ncpu; ++i) index_of[online[i]] = i;
  std::vector<std::optional<std::vector<int>>> sibling_lists(ncpu);
  std::vector<bool> have_core_id(ncpu, false);
  t.cpus.resize(ncpu);
  for (std::size_t i = 0; i < ncpu; ++i) {
    CpuInfo &c = t.cpus[i];
    c.id = online[i];
    auto it = node_of.find(c.id);
    c.node = it == node_of.end() ? -1 : it->second;
    const fs::path td = cpu_dir / ("cpu" + std::to_string(c.id)) / "topology";
    c.package = read_int(td / "physical_package_id").value_or(0);
    c.die = read_int(td / "die_id").value_or(0);
    auto core = read_int(td / "core_id");
    have_core_id[i] = core.has_value() && *core >= 0;
    c.core = core.value_or(c.id);
    sibling_lists[i] = read_cpulist(td / "thread_siblings_list");
    if (!sibling_lists[i]) sibling_lists[i] = read_cpulist(td / "core_cpus_list");
  }

  // Physical cores: thread_siblings_list (or core_cpus_list) is authoritative; a CPU without
  // either file is grouped with the other such CPUs of the same (package, die, core_id).
  // (core_id alone can repeat across dies, or be 0 for every CPU on some virtual ARM machines.)
  DisjointSets ds(ncpu);
  std::map<std::tuple<int, int, int>, std::size_t> by_core;
  for (std::size_t i = 0; i < ncpu; ++i) {
    if (sibling_lists[i]) {
      for (int s : *sibling_lists[i]) {
        auto j = index_of.find(s);
        if (j != index_of.end()) ds.unite(i, j->second);
      }
    } else if (have_core_id[i]) {
      auto key = std::make_tuple(t.cpus[i].package, t.cpus[i].die, t.cpus[i].core);
      auto [j, inserted] = by_core.emplace(key, i);
      if (!inserted) ds.unite(i, j->second);
    }
  }
  std::map<std::size_t, std::vector<int>> groups;
  for (std::size_t i = 0; i < ncpu; ++i) groups[ds.find(i)].push_back(t.cpus[i].id);
  const std::set<int> allowed_set(allowed.begin(), allowed.end());
  for (std::size_t i = 0; i < ncpu; ++i) {
    CpuInfo &c = t.cpus[i];
    c.siblings = groups[ds.find(i)];  // sorted: CPUs were visited in id order
    c.primary = c.siblings.front() == c.id;
    c.allowed = allowed_set.count(c.id) > 0;
    if (c.siblings.size() > 1) t.smt = true;
  }

  for (int c : allowed)
    if (online_set.count(c)) t.allowed_cpus.push_back(c);
  return t;
}

}  // namespace numoe
