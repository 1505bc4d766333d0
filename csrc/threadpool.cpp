#include "threadpool.hpp"

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define NUMOE_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define NUMOE_PAUSE() asm volatile("yield")
#else
#define NUMOE_PAUSE() ((void)0)
#endif

namespace numoe {

namespace {

// How long an idle worker spins before it sleeps on the futex (set_spin_us). Decode calls
// the pool a few times per layer with other work in between (norms, attention, routing, the
// Python between two blocks: 0.1-1 ms): spinning through those gaps keeps the wake-ups free
// (a futex wake and a core leaving its idle state cost more than the op on small matrices).
std::atomic<int64_t> g_spin_us{100};

static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "futex word");

void futex_wait(std::atomic<uint32_t> *addr, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t *>(addr), FUTEX_WAIT_PRIVATE, expected, nullptr,
          nullptr, 0);
}
void futex_wake_all(std::atomic<uint32_t> *addr) {
  syscall(SYS_futex, reinterpret_cast<uint32_t *>(addr), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
          nullptr, 0);
}

thread_local bool t_in_task = false;

// Runs a call's tasks on the calling thread, marked as inside a task (so calls they make
// stay serial too): loop(run) calls run(task) for each task; the first exception a task
// throws is rethrown after all of them ran.
template <class Loop>
void run_serial(Loop loop) {
  const bool was = t_in_task;
  t_in_task = true;
  struct Restore {
    bool v;
    ~Restore() { t_in_task = v; }
  } restore{was};
  std::exception_ptr err;
  loop([&](auto &&task) {
    try {
      task();
    } catch (...) {
      if (!err) err = std::current_exception();
    }
  });
  if (err) std::rethrow_exception(err);
}

}  // namespace

struct ThreadPool::Impl {
  struct Worker {
    pthread_t handle{};
    int id = 0;  // thread index, 1..n-1
    int cpu = -1;
    uint32_t start_gen = 0;  // the generation before the worker's first call
    Impl *pool = nullptr;
  };

  std::mutex call_mu;                  // one parallel_for (or set_threads) at a time
  std::vector<std::vector<int>> plan;  // CPUs per group
  std::vector<int> group_of;           // thread -> group
  std::vector<Worker> workers;
  std::vector<bool> worker_cpu;  // CPU id -> a worker is pinned there
  int caller_cpu = -1;           // the plan's first CPU: where the caller belongs
  pid_t pid = getpid();
  // Each worker's CPU affinity as the worker itself read it (sched_getaffinity) after
  // pinning; n_reported counts the workers that have written theirs.
  std::vector<std::vector<int>> affinity;
  std::atomic<int> n_reported{0};

  // One generation per parallel_for call; workers wait for it to change.
  alignas(64) std::atomic<uint32_t> gen{0};
  alignas(64) std::atomic<int> sleepers{0};
  alignas(64) std::atomic<int> pending{0};   // workers not yet done with this generation
  alignas(64) std::atomic<int64_t> next{0};  // next task to claim
  int64_t n_tasks = 0;
  const Task *fn = nullptr;
  // parallel_for_groups: per-slot task counts, groups and counters (fn is null then).
  const SlotTask *sfn = nullptr;
  std::vector<int64_t> slot_n;
  std::vector<int> slot_group;
  std::unique_ptr<std::atomic<int64_t>[]> slot_next;
  size_t slot_cap = 0;
  std::atomic<bool> stop{false};
  std::mutex err_mu;
  std::exception_ptr err;

  void run_slots(int thread) {
    const int g = thread < static_cast<int>(group_of.size()) ? group_of[thread] : 0;
    const int G = static_cast<int>(plan.size());
    for (size_t s = 0; s < slot_n.size(); ++s) {
      if (slot_group[s] % G != g) continue;
      for (;;) {
        const int64_t t = slot_next[s].fetch_add(1, std::memory_order_relaxed);
        if (t >= slot_n[s]) break;
        try {
          (*sfn)(static_cast<int64_t>(s), t, thread);
        } catch (...) {
          std::lock_guard<std::mutex> lk(err_mu);
          if (!err) err = std::current_exception();
        }
      }
    }
  }

  // A forked child: the parent's workers do not exist here; forget their state.
  void reset_after_fork() {
    workers.clear();  // no join: those threads live in the parent only
    gen.store(0);
    sleepers.store(0);
    pending.store(0);
  }

  void run_tasks(int thread) {
    const bool was = t_in_task;
    t_in_task = true;
    if (sfn != nullptr) {
      run_slots(thread);
      t_in_task = was;
      return;
    }
    for (;;) {
      const int64_t t = next.fetch_add(1, std::memory_order_relaxed);
      if (t >= n_tasks) break;
      try {
        (*fn)(t, thread);
      } catch (...) {
        std::lock_guard<std::mutex> lk(err_mu);
        if (!err) err = std::current_exception();
      }
    }
    t_in_task = was;
  }

  void worker_loop(Worker *w) {
    if (w->cpu >= 0) {
      cpu_set_t set;
      CPU_ZERO(&set);
      if (w->cpu < CPU_SETSIZE) {
        CPU_SET(w->cpu, &set);
        pthread_setaffinity_np(pthread_self(), sizeof(set), &set);  // best effort
      }
    }
    {
      cpu_set_t got;
      CPU_ZERO(&got);
      std::vector<int> mine;
      if (sched_getaffinity(0, sizeof(got), &got) == 0)
        for (int c = 0; c < CPU_SETSIZE; ++c)
          if (CPU_ISSET(c, &got)) mine.push_back(c);
      affinity[static_cast<size_t>(w->id)] = std::move(mine);
      n_reported.fetch_add(1, std::memory_order_release);
    }
    uint32_t seen = w->start_gen;  // not gen.load(): a call may already have started
    for (;;) {
      // Spin, then sleep, until the generation changes.
      uint32_t g = gen.load(std::memory_order_acquire);
      if (g == seen) {
        const auto until = std::chrono::steady_clock::now() +
                           std::chrono::microseconds(g_spin_us.load(std::memory_order_relaxed));
        for (int i = 0;; ++i) {
          NUMOE_PAUSE();
          g = gen.load(std::memory_order_acquire);
          if (g != seen) break;
          if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) {
            sleepers.fetch_add(1, std::memory_order_seq_cst);
            g = gen.load(std::memory_order_seq_cst);
            if (g == seen) futex_wait(&gen, seen);
            sleepers.fetch_sub(1, std::memory_order_seq_cst);
            g = gen.load(std::memory_order_acquire);
            if (g != seen) break;
          }
        }
      }
      seen = g;
      if (stop.load(std::memory_order_acquire)) return;
      run_tasks(w->id);
      pending.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  static void *entry(void *arg) {
    Worker *w = static_cast<Worker *>(arg);
    w->pool->worker_loop(w);
    return nullptr;
  }

  // Publish a new generation and wake sleeping workers.
  void kick() {
    gen.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers.load(std::memory_order_seq_cst) > 0) futex_wake_all(&gen);
  }

  void wait_pending() {
    for (int i = 0; pending.load(std::memory_order_acquire) > 0; ++i) {
      NUMOE_PAUSE();
      if (i > (1 << 16)) std::this_thread::yield();
    }
  }

  void stop_workers() {
    if (!workers.empty()) {
      stop.store(true, std::memory_order_release);
      kick();
      for (auto &w : workers) pthread_join(w.handle, nullptr);
      stop.store(false, std::memory_order_release);
    }
    workers.clear();
  }

  void start_workers() {
    group_of.clear();
    std::vector<int> cpus;
    for (size_t g = 0; g < plan.size(); ++g)
      for (int c : plan[g]) {
        group_of.push_back(static_cast<int>(g));
        cpus.push_back(c);
      }
    workers.resize(cpus.size() > 0 ? cpus.size() - 1 : 0);
    affinity.assign(cpus.size(), {});
    n_reported.store(0);
    caller_cpu = cpus.empty() ? -1 : cpus[0];
    worker_cpu.assign(CPU_SETSIZE, false);
    for (size_t i = 1; i < cpus.size(); ++i)
      if (cpus[i] < CPU_SETSIZE) worker_cpu[cpus[i]] = true;
    for (size_t i = 0; i < workers.size(); ++i) {
      Worker &w = workers[i];
      w.id = static_cast<int>(i + 1);
      w.cpu = cpus[i + 1];
      w.pool = this;
      w.start_gen = gen.load();
    }
    for (size_t i = 0; i < workers.size(); ++i) {
      if (pthread_create(&workers[i].handle, nullptr, &Impl::entry, &workers[i]) != 0) {
        workers.resize(i);  // keep the ones that started
        group_of.resize(i + 1);
        break;
      }
    }
  }

  // Run the call set up in fn / sfn: wake the workers, take slot 0 here, wait for all, then
  // rethrow the first exception a task threw. The caller is not pinned (it is the Python
  // thread, and threads it starts later, e.g. torch's, inherit its mask): when it sits on a
  // worker's CPU the two would share that core for the whole call, so it moves to its own
  // CPU for the call and gets its mask back after.
  void dispatch() {
    err = nullptr;
    cpu_set_t saved;
    const bool moved = move_caller(&saved);
    pending.store(static_cast<int>(workers.size()), std::memory_order_relaxed);
    kick();
    run_tasks(0);
    wait_pending();
    fn = nullptr;
    sfn = nullptr;
    if (moved) sched_setaffinity(0, sizeof(saved), &saved);
    if (err) {
      std::exception_ptr e = err;
      err = nullptr;
      std::rethrow_exception(e);
    }
  }

  // Move the caller off a worker's CPU to its own slot's CPU; true when moved (restore `saved`).
  bool move_caller(cpu_set_t *saved) {
    const int here = sched_getcpu();
    if (here >= 0 && here < CPU_SETSIZE && worker_cpu[here] && caller_cpu >= 0 &&
        caller_cpu < CPU_SETSIZE && sched_getaffinity(0, sizeof(*saved), saved) == 0) {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(caller_cpu, &one);
      return sched_setaffinity(0, sizeof(one), &one) == 0;
    }
    return false;
  }

  // In a forked child the workers do not exist: forget them and start new ones.
  void check_fork() {
    if (getpid() == pid) return;
    pid = getpid();
    reset_after_fork();
    start_workers();
  }
};

ThreadPool::ThreadPool() : impl_(new Impl) {
  impl_->plan = {{-1}};
  impl_->group_of = {0};
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(impl_->call_mu);
    if (getpid() == impl_->pid) impl_->stop_workers();
  }
  delete impl_;
}

ThreadPool &ThreadPool::instance() {
  static ThreadPool pool;
  return pool;
}

void ThreadPool::set_threads(const std::vector<std::vector<int>> &groups) {
  size_t total = 0;
  for (const auto &g : groups) {
    for (int c : g)
      if (c < 0) throw std::invalid_argument("CPU ids must be >= 0, got " + std::to_string(c));
    total += g.size();
  }
  if (total == 0) throw std::invalid_argument("set_threads needs at least one CPU");
  std::vector<std::vector<int>> plan;
  for (const auto &g : groups)
    if (!g.empty()) plan.push_back(g);
  std::lock_guard<std::mutex> lk(impl_->call_mu);
  if (getpid() == impl_->pid)
    impl_->stop_workers();
  else
    impl_->reset_after_fork();
  impl_->pid = getpid();
  impl_->plan = plan;
  impl_->start_workers();
}

int ThreadPool::num_threads() const { return static_cast<int>(impl_->workers.size()) + 1; }

std::vector<std::vector<int>> ThreadPool::groups() const { return impl_->plan; }

std::vector<std::vector<int>> ThreadPool::worker_affinity() const {
  Impl &p = *impl_;
  std::lock_guard<std::mutex> lk(p.call_mu);
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (p.n_reported.load(std::memory_order_acquire) < static_cast<int>(p.workers.size())) {
    if (std::chrono::steady_clock::now() > until)
      throw std::runtime_error("pool workers did not report their affinity within 10 s");
    std::this_thread::yield();
  }
  std::vector<std::vector<int>> out(p.affinity.begin(), p.affinity.end());
  if (out.empty()) out.resize(1);
  out[0].clear();  // slot 0 is the calling thread: not pinned by the pool
  return out;
}

int ThreadPool::group_of(int thread) const {
  if (thread < 0 || thread >= static_cast<int>(impl_->group_of.size())) return 0;
  return impl_->group_of[thread];
}

void ThreadPool::parallel_for(int64_t n_tasks, const Task &fn) {
  if (n_tasks <= 0) return;
  Impl &p = *impl_;
  std::unique_lock<std::mutex> lk(p.call_mu, std::defer_lock);
  const bool serial =
      t_in_task || n_tasks == 1 || !lk.try_lock() || (p.check_fork(), p.workers.empty());
  if (serial) {
    run_serial([&](auto &&run) {
      for (int64_t t = 0; t < n_tasks; ++t) run([&] { fn(t, 0); });
    });
    return;
  }
  p.fn = &fn;
  p.n_tasks = n_tasks;
  p.next.store(0, std::memory_order_relaxed);
  p.dispatch();
}

int ThreadPool::group_threads(int g) const {
  const auto &plan = impl_->plan;
  return static_cast<int>(plan[static_cast<size_t>(std::max(g, 0)) % plan.size()].size());
}

void ThreadPool::parallel_for_groups(const std::vector<int64_t> &n_tasks,
                                     const std::vector<int> &group, const SlotTask &fn) {
  if (n_tasks.size() != group.size())
    throw std::invalid_argument("parallel_for_groups: one group per slot");
  for (int g : group)
    if (g < 0) throw std::invalid_argument("parallel_for_groups: groups must be >= 0");
  Impl &p = *impl_;
  std::unique_lock<std::mutex> lk(p.call_mu, std::defer_lock);
  const bool serial = t_in_task || !lk.try_lock() || (p.check_fork(), p.workers.empty());
  if (serial) {
    run_serial([&](auto &&run) {
      for (size_t s = 0; s < n_tasks.size(); ++s)
        for (int64_t t = 0; t < n_tasks[s]; ++t) run([&] { fn(static_cast<int64_t>(s), t, 0); });
    });
    return;
  }
  if (p.slot_cap < n_tasks.size()) {
    p.slot_next.reset(new std::atomic<int64_t>[n_tasks.size()]);
    p.slot_cap = n_tasks.size();
  }
  for (size_t s = 0; s < n_tasks.size(); ++s) p.slot_next[s].store(0, std::memory_order_relaxed);
  p.slot_n = n_tasks;
  p.slot_group = group;
  p.sfn = &fn;
  p.n_tasks = 0;
  p.dispatch();
}

void set_spin_us(int64_t us) { g_spin_us.store(std::clamp<int64_t>(us, 0, 1000000)); }
int64_t spin_us() { return g_spin_us.load(); }

}  // namespace numoe
