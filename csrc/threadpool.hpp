// numoe's thread pool: pinned workers in one group per NUMA node, plus the calling thread.
//
// parallel_for(n, fn) runs fn(task, thread) for task in [0, n) on every pool thread; tasks
// are claimed dynamically from one atomic counter, so uneven tasks balance themselves. The
// caller is thread 0 and works too. Between calls workers spin briefly (_mm_pause) and then
// sleep on a futex, so an idle pool costs no CPU and back-to-back calls (decode: a few per
// layer) wake no one.
//
// Groups: set_threads takes one CPU list per NUMA node. The caller counts as the first
// thread of group 0 (it is not pinned: it is the Python thread); every other thread is a
// worker pinned to its CPU. parallel_for's tasks run on any thread; parallel_for_groups runs
// several task lists ("slots") in one call, slot s only on the threads of its group (node-local
// scheduling: each node's threads take their node's slice of the experts).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

namespace numoe {

class ThreadPool {
 public:
  using Task = std::function<void(int64_t task, int thread)>;

  // The process-wide pool. Until set_threads is called it has one thread (the caller).
  static ThreadPool &instance();

  // Replace the workers: groups[g] = CPUs of node g's threads. Total threads = sum of the
  // sizes (>= 1; the first CPU of groups[0] is the caller's slot and gets no worker).
  // Throws std::invalid_argument on an empty plan or a negative CPU id. Not to be called
  // while parallel_for runs (it waits for a running call to end).
  void set_threads(const std::vector<std::vector<int>> &groups);
  int num_threads() const;
  std::vector<std::vector<int>> groups() const;
  int group_of(int thread) const;
  // Per thread: the CPUs its affinity mask allows, as read by the worker itself right after
  // it was pinned (slot 0, the caller, is not pinned by the pool: empty).
  std::vector<std::vector<int>> worker_affinity() const;

  // fn(task, thread) for task in [0, n_tasks); thread in [0, num_threads()). Blocks until
  // all tasks ran. The first exception a task throws is rethrown here (the other tasks
  // still run). A call from inside a task, or while another thread's call runs, runs its
  // tasks serially on the calling thread (thread id 0 is then not unique: such callers
  // must not rely on per-thread scratch by id; numoe's kernels only call from outside).
  void parallel_for(int64_t n_tasks, const Task &fn);

  // fn(slot, task, thread) for task in [0, n_tasks[slot]) of every slot; slot s runs only on
  // the threads of group group[s] % (number of groups), claimed from that slot's own counter
  // (no stealing across groups). Same blocking, exception and nesting rules as parallel_for
  // (nested or concurrent calls run every slot serially on the caller).
  using SlotTask = std::function<void(int64_t slot, int64_t task, int thread)>;
  void parallel_for_groups(const std::vector<int64_t> &n_tasks, const std::vector<int> &group,
                           const SlotTask &fn);
  // Threads of group g (g taken modulo the number of groups).
  int group_threads(int g) const;

  ~ThreadPool();
  ThreadPool(const ThreadPool &) = delete;
  ThreadPool &operator=(const ThreadPool &) = delete;

 private:
  ThreadPool();
  struct Impl;
  Impl *impl_;
};

// How long idle workers spin before sleeping, in microseconds (0..1e6; default 100).
void set_spin_us(int64_t us);
int64_t spin_us();

// Convenience: the pool's thread count, and parallel_for on it.
inline int pool_threads() { return ThreadPool::instance().num_threads(); }
inline void parallel_for(int64_t n_tasks, const ThreadPool::Task &fn) {
  ThreadPool::instance().parallel_for(n_tasks, fn);
}

}  // namespace numoe
