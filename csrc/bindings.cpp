// Every Python binding of numoe._cpu lives in this file.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "topology.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

nb::list int_list(const std::vector<int> &v) {
  nb::list out;
  for (int x : v) out.append(x);
  return out;
}

nb::dict topology_dict(const numoe::Topology &t) {
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

NB_MODULE(_cpu, m) {
  m.doc() = "numoe's CPU extension: topology now; quantized kernels and the MoE op later.";

  m.def(
      "read_topology",
      [](const std::string &root, const std::optional<std::vector<int>> &allowed_cpus) {
        numoe::Topology t;
        {
          nb::gil_scoped_release release;
          t = numoe::read_topology(root, allowed_cpus);
        }
        return topology_dict(t);
      },
      "root"_a = "/sys", "allowed_cpus"_a = nb::none(),
      "NUMA nodes, CPUs (package, core, SMT siblings, primary thread) and the allowed CPUs, "
      "read from sysfs under `root`. `allowed_cpus` overrides the process affinity. Raises "
      "ValueError naming the file on malformed content.");
  m.def("sched_getaffinity", &numoe::sched_getaffinity_cpus,
        "CPUs this process may run on (sched_getaffinity), sorted.");
  m.def(
      "parse_cpulist", [](const std::string &text) { return numoe::parse_cpulist(text); }, "text"_a,
      "Parse a Linux cpulist such as '0-3,8,10-11' (strides 'a-b:used/group' too) into sorted "
      "CPU ids; ValueError on malformed input.");
}
