// numoe._cpu bindings: the machine's topology (csrc/topology.*), node memory and page
// placement (csrc/numa_mem.*), and the pool's read bandwidth (csrc/linear.*).
#include "bindings.hpp"
#include "linear.hpp"
#include "numa_mem.hpp"
#include "topology.hpp"

namespace numoe::py {

using namespace nb::literals;

namespace {

nb::list int_list(const std::vector<int> &v) {
  nb::list out;
  for (int x : v) out.append(x);
  return out;
}

nb::dict topology_dict(const Topology &t) {
  nb::list nodes;
  for (const auto &n : t.nodes) {
    nb::dict d;
    d["id"] = n.id;
    d["cpus"] = int_list(n.cpus);
    d["mem_total"] = n.mem_total;
    d["mem_free"] = n.mem_free;
    d["distances"] = int_list(n.distances);
    d["synthetic"] = n.synthetic;
    nodes.append(d);
  }
  nb::list cpus;
  for (const auto &c : t.cpus) {
    nb::dict d;
    d["id"] = c.id;
    d["node"] = c.node;
    d["package"] = c.package;
    d["die"] = c.die;
    d["core"] = c.core;
    d["siblings"] = int_list(c.siblings);
    d["primary"] = c.primary;
    d["allowed"] = c.allowed;
    cpus.append(d);
  }
  nb::dict out;
  out["nodes"] = nodes;
  out["cpus"] = cpus;
  out["allowed_cpus"] = int_list(t.allowed_cpus);
  out["smt"] = t.smt;
  return out;
}

}  // namespace

void bind_memory(nb::module_ &m) {
  m.def(
      "read_topology",
      [](const std::string &root, const std::optional<std::vector<int>> &allowed_cpus) {
        Topology t;
        {
          nb::gil_scoped_release release;
          t = read_topology(root, allowed_cpus);
        }
        return topology_dict(t);
      },
      "root"_a = "/sys", "allowed_cpus"_a = nb::none(),
      "NUMA nodes, CPUs (package, core, SMT siblings, primary thread) and the allowed CPUs, "
      "read from sysfs under `root`. `allowed_cpus` overrides the process affinity. Raises "
      "ValueError naming the file on malformed content.");
  m.def("sched_getaffinity", &sched_getaffinity_cpus,
        "CPUs this process may run on (sched_getaffinity), sorted.");
  m.def(
      "parse_cpulist", [](const std::string &text) { return parse_cpulist(text); }, "text"_a,
      "Parse a Linux cpulist such as '0-3,8,10-11' (strides 'a-b:used/group' too) into sorted "
      "CPU ids; ValueError on malformed input.");
  m.def(
      "read_bandwidth_bytes",
      [](const Bytes &a) {
        nb::gil_scoped_release release;
        return read_bytes(a.data(), a.size());
      },
      "a"_a.noconvert(),
      "Read every byte of `a` on all pool threads (STREAM-style read); returns a checksum.");
  m.attr("NOT_RESIDENT") = kNotResident;
  m.attr("UNKNOWN_NODE") = kUnknownNode;
  nb::class_<NodeBuffer>(m, "NodeBuffer",
                         "Anonymous memory placed on one NUMA node (mbind and/or first "
                         "touch from the node's CPUs), 2 MiB aligned; freed when the "
                         "object and every array view of it are gone.")
      .def(
          "__init__",
          [](NodeBuffer *self, int64_t bytes, int node, bool strict) {
            if (bytes <= 0)
              throw std::invalid_argument("NodeBuffer: bytes must be > 0, got " +
                                          std::to_string(bytes));
            nb::gil_scoped_release release;
            new (self) NodeBuffer(static_cast<size_t>(bytes), node, strict);
          },
          "bytes"_a, "node"_a, "strict"_a = false,
          "bytes > 0 on NUMA node `node` (ValueError for a node this machine lacks or more than "
          "its memory). strict: MPOL_BIND instead of MPOL_PREFERRED.")
      .def_prop_ro(
          "array",
          [](nb::object self) {
            auto &b = nb::cast<NodeBuffer &>(self);
            return nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>>(b.data(), {b.size()}, self);
          },
          "uint8 [nbytes] view of the buffer (keeps it alive).")
      .def_prop_ro("address",
                   [](const NodeBuffer &b) { return reinterpret_cast<uintptr_t>(b.data()); })
      .def_prop_ro("nbytes", &NodeBuffer::size, "Bytes asked for.")
      .def_prop_ro("mapped", &NodeBuffer::mapped, "Bytes mapped (nbytes rounded up to 2 MiB).")
      .def_prop_ro("node", &NodeBuffer::node)
      .def_prop_ro("bound", &NodeBuffer::bound, "mbind succeeded.")
      .def_prop_ro("how", &NodeBuffer::how,
                   "'mbind+touch', 'first-touch' (mbind refused), 'mbind' or 'unplaced' (a node "
                   "without CPUs this process may use).")
      .def_prop_ro("mbind_error", &NodeBuffer::mbind_error, "'' when bound.");
  m.def("node_allocated", &allocated_per_node,
        "The allocator's accounting: node -> bytes mapped by live NodeBuffers.");
  m.def("node_memory", &node_memory, "This machine's nodes: node -> MemTotal bytes.");
  m.def(
      "pages_per_node",
      [](const Bytes &a, bool map_cached) {
        nb::gil_scoped_release release;
        return pages_per_node(a.data(), a.size(), map_cached);
      },
      "a"_a.noconvert(), "map_cached"_a = false,
      "Where the pages of uint8 array `a` are: node -> bytes, NOT_RESIDENT (and UNKNOWN_NODE "
      "when move_pages is refused on a machine with several nodes) -> bytes; the values add up "
      "to a.size. map_cached: count page-cache pages of a file mapping not yet mapped here too.");
  m.def(
      "release_file_pages",
      [](const Bytes &a) {
        nb::gil_scoped_release release;
        return release_file_pages(a.data(), a.size());
      },
      "a"_a.noconvert(),
      "madvise(MADV_DONTNEED) the whole pages inside uint8 array `a`, which must lie in a "
      "read-only file mapping (ValueError otherwise): they leave RSS. Returns bytes released.");
  m.def(
      "prefault_pages",
      [](const Bytes &a) {
        nb::gil_scoped_release release;
        return prefault_pages(a.data(), a.size());
      },
      "a"_a.noconvert(),
      "Map every page of uint8 array `a` now (MADV_POPULATE_READ, else one read per page on the "
      "pool); True when madvise did it.");
}

}  // namespace numoe::py
