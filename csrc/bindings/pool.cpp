// numoe._cpu bindings: the thread pool (csrc/threadpool.*).
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <utility>

#include "bindings.hpp"
#include "threadpool.hpp"

namespace numoe::py {

using namespace nb::literals;

void bind_pool(nb::module_ &m) {
  m.def(
      "set_threads",
      [](const std::vector<std::vector<int>> &groups) {
        nb::gil_scoped_release release;
        ThreadPool::instance().set_threads(groups);
      },
      "groups"_a,
      "Size numoe's thread pool: one CPU list per NUMA node (numoe.runtime.numa.plan_threads). The "
      "calling thread takes the first slot; every other CPU gets a worker pinned to it.");
  m.def(
      "set_threads",
      [](const std::vector<int> &cpus) {
        nb::gil_scoped_release release;
        ThreadPool::instance().set_threads({cpus});
      },
      "cpus"_a, "set_threads with one group (one NUMA node).");
  m.def(
      "num_threads", [] { return ThreadPool::instance().num_threads(); },
      "Threads of numoe's pool, the caller included.");
  m.def("set_spin_us", &set_spin_us, "us"_a,
        "How long idle pool workers spin before sleeping (microseconds, clamped to 0..1e6).");
  m.def("spin_us", &spin_us, "The pool's spin time in microseconds.");
  m.def(
      "thread_groups", [] { return ThreadPool::instance().groups(); },
      "The CPU lists the pool was set up with (one per node; [[-1]] before set_threads).");
  m.def(
      "worker_affinity", [] { return ThreadPool::instance().worker_affinity(); },
      "Per pool thread, the CPUs of its affinity mask as the worker read it after pinning "
      "(slot 0, the caller: []).");
  m.def(
      "pool_trace",
      [](int64_t n_tasks, int64_t spin_ns) {
        if (n_tasks < 0) throw std::invalid_argument("n_tasks must be >= 0");
        std::vector<int> thread(n_tasks), cpu(n_tasks);
        {
          nb::gil_scoped_release release;
          parallel_for(n_tasks, [&](int64_t t, int th) {
            thread[t] = th;
            cpu[t] = sched_getcpu();
            const auto until = std::chrono::steady_clock::now() + std::chrono::nanoseconds(spin_ns);
            while (std::chrono::steady_clock::now() < until) {
            }
          });
        }
        return std::make_pair(thread, cpu);
      },
      "n_tasks"_a, "spin_ns"_a = 0,
      "Run n_tasks tasks on the pool (each busy for spin_ns); returns (thread id, CPU) per task. "
      "For tests.");
  m.def(
      "pool_groups_trace",
      [](const std::vector<int64_t> &n, const std::vector<int> &group) {
        std::vector<std::vector<std::pair<int64_t, int>>> out(n.size());
        for (size_t s = 0; s < n.size(); ++s) out[s].resize(std::max<int64_t>(n[s], 0));
        nb::gil_scoped_release release;
        ThreadPool::instance().parallel_for_groups(
            n, group, [&](int64_t s, int64_t t, int) { out[s][t] = {t, sched_getcpu()}; });
        return out;
      },
      "n_tasks"_a, "groups"_a,
      "parallel_for_groups: slot s's tasks on group groups[s]; (task, CPU) per task. For tests.");
}

}  // namespace numoe::py
