// Every Python binding of numoe._cpu lives in this file.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <stdexcept>
#include <utility>

#include "attention.hpp"
#include "decode.hpp"
#include "isa.hpp"
#include "linear.hpp"
#include "moe.hpp"
#include "numa_mem.hpp"
#include "ops.hpp"
#include "quant/quant.hpp"
#include "quantize/quantize.hpp"
#include "threadpool.hpp"
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

// ---- quantized kernels: every size is checked before any memory is touched ----

// Raw bytes are taken as they are (noconvert): a wrong dtype or a strided array is a
// TypeError, never a silent value cast.
using Bytes = nb::ndarray<const uint8_t, nb::c_contig, nb::device::cpu>;
using Floats = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;

// Bytes of n elements of type t; n must be a non-negative multiple of the block size.
size_t quant_bytes(const numoe::quant::TypeInfo &t, int64_t n) {
  if (n < 0 || n % t.block_size != 0)
    throw std::invalid_argument("n=" + std::to_string(n) + " is not a non-negative multiple of " +
                                t.name + "'s block size " + std::to_string(t.block_size));
  return static_cast<size_t>(n / t.block_size) * static_cast<size_t>(t.type_size);
}

void need_bytes(size_t have, size_t want, const char *what, const numoe::quant::TypeInfo &t,
                int64_t n) {
  if (have < want)
    throw std::invalid_argument(std::string(what) + " has " + std::to_string(have) + " bytes; " +
                                std::to_string(n) + " elements of " + t.name + " need " +
                                std::to_string(want));
}

const numoe::quant::TypeInfo &act_info(const numoe::quant::TypeInfo &w) {
  if (w.act_type < 0)
    throw std::invalid_argument(std::string(w.name) + " is an activation type, not a weight type");
  return numoe::quant::type_info(w.act_type);
}

template <typename T>
nb::ndarray<nb::numpy, T, nb::ndim<1>> new_array(size_t n, T **data) {
  T *p = new T[n > 0 ? n : 1];
  nb::capsule owner(p, [](void *q) noexcept { delete[] static_cast<T *>(q); });
  *data = p;
  return nb::ndarray<nb::numpy, T, nb::ndim<1>>(p, {n}, owner);
}

}  // namespace

// ---- thread pool, linear op, MoE op (csrc/threadpool.*, linear.*, moe.*) ----
namespace {

using AnyArray = nb::ndarray<nb::c_contig, nb::device::cpu>;
using Floats2 = nb::ndarray<nb::numpy, float, nb::ndim<2>>;

Floats2 new_floats2(size_t rows, size_t cols, float **data) {
  const size_t n = rows * cols;
  float *p = new float[n > 0 ? n : 1];
  nb::capsule owner(p, [](void *q) noexcept { delete[] static_cast<float *>(q); });
  *data = p;
  return Floats2(p, {rows, cols}, owner);
}

// x as float32 [T, n] (2-D, C-contiguous); ValueError naming `what` otherwise.
int64_t rows_of(const Floats &x, int64_t n, const char *what) {
  if (x.ndim() != 2 || static_cast<int64_t>(x.shape(1)) != n)
    throw std::invalid_argument(std::string(what) + " must be float32 [T, " + std::to_string(n) +
                                "], got ndim " + std::to_string(x.ndim()) +
                                (x.ndim() == 2 ? ", shape[1] " + std::to_string(x.shape(1)) : ""));
  return static_cast<int64_t>(x.shape(0));
}

// An expert gating function by name -> ops::route's gating (0 softmax, 1 sigmoid).
int gating_id(const std::string &gating) {
  if (gating != "softmax" && gating != "sigmoid")
    throw std::invalid_argument("unknown expert gating function '" + gating + "'");
  return gating == "sigmoid";
}

// The linear op over a GGUF tensor's bytes; holds the byte array so the memmap stays alive.
struct PyLinear {
  Bytes data;
  numoe::LinearOp op;
  PyLinear(Bytes d, int type, int64_t n_out, int64_t n_in, int64_t groups)
      : data(std::move(d)), op(check(data, type, n_out, n_in, groups), type, n_out, n_in, groups) {}
  // A background warm-up may be reading these bytes (Linear.warm): stop it before they go.
  ~PyLinear() { numoe::ThreadPool::instance().cancel_warm(); }
  PyLinear(const PyLinear &) = delete;
  PyLinear &operator=(const PyLinear &) = delete;
  static const uint8_t *check(const Bytes &d, int type, int64_t n_out, int64_t n_in,
                              int64_t groups) {
    if (n_out <= 0 || groups <= 0) throw std::invalid_argument("n_out and groups must be positive");
    const size_t want = numoe::row_bytes_of(type, n_in) * static_cast<size_t>(n_out * groups);
    if (d.size() != want)
      throw std::invalid_argument("weight bytes: have " + std::to_string(d.size()) + ", " +
                                  std::to_string(groups) + " x " + std::to_string(n_out) + " x " +
                                  std::to_string(n_in) + " " + numoe::quant::type_name(type) +
                                  " need " + std::to_string(want));
    return d.data();
  }
};

// Expert pointers from either one merged [E, rows, cols] tensor or one tensor per expert.
std::vector<const uint8_t *> expert_ptrs(const std::vector<Bytes> &arrs, int type, int64_t E,
                                         int64_t rows, int64_t cols, const char *what) {
  const size_t one = numoe::row_bytes_of(type, cols) * static_cast<size_t>(rows);
  std::vector<const uint8_t *> out;
  if (arrs.size() == 1 && E > 1) {
    if (arrs[0].size() != one * static_cast<size_t>(E))
      throw std::invalid_argument(std::string(what) + ": merged tensor has " +
                                  std::to_string(arrs[0].size()) + " bytes, " + std::to_string(E) +
                                  " experts need " + std::to_string(one * static_cast<size_t>(E)));
    for (int64_t e = 0; e < E; ++e) out.push_back(arrs[0].data() + one * static_cast<size_t>(e));
  } else if (static_cast<int64_t>(arrs.size()) == E) {
    for (size_t e = 0; e < arrs.size(); ++e) {
      if (arrs[e].size() != one)
        throw std::invalid_argument(std::string(what) + ": expert " + std::to_string(e) + " has " +
                                    std::to_string(arrs[e].size()) + " bytes, need " +
                                    std::to_string(one));
      out.push_back(arrs[e].data());
    }
  } else {
    throw std::invalid_argument(std::string(what) + ": need one merged tensor or " +
                                std::to_string(E) + " per-expert tensors, got " +
                                std::to_string(arrs.size()));
  }
  return out;
}

struct PyMoE {
  std::vector<Bytes> keep;
  std::vector<nb::object> keep_obj;  // slice buffers (Python objects: freed in order at exit)
  numoe::MoEOp op;
  PyMoE(const std::vector<Bytes> &gate, const std::vector<Bytes> &up,
        const std::vector<Bytes> &down, int gt, int ut, int dt, int64_t E, int64_t F, int64_t D)
      : op((check_dims(E, F, D), expert_ptrs(gate, gt, E, F, D, "gate")),
           expert_ptrs(up, ut, E, F, D, "up"), expert_ptrs(down, dt, E, D, F, "down"), gt, ut, dt,
           E, F, D) {
    for (const auto *v : {&gate, &up, &down}) keep.insert(keep.end(), v->begin(), v->end());
  }
  // (buffer, gate/up/down byte offsets per expert, f0, n_ff, down_stride, group) per slice.
  using Slice = std::tuple<nb::object, std::vector<int64_t>, std::vector<int64_t>,
                           std::vector<int64_t>, int64_t, int64_t, int64_t, int>;
  PyMoE(const std::vector<Slice> &sl, int gt, int ut, int dt, int64_t E, int64_t F, int64_t D)
      : op((check_dims(E, F, D), slices(sl, gt, ut, dt, E, D)), gt, ut, dt, E, F, D) {
    for (const auto &s : sl) keep_obj.push_back(std::get<0>(s));
  }
  static std::vector<numoe::MoESlice> slices(const std::vector<Slice> &sl, int gt, int ut, int dt,
                                             int64_t E, int64_t D) {
    std::vector<numoe::MoESlice> out;
    for (const auto &[obj, g, u, d, f0, n, stride, group] : sl) {
      Bytes buf;
      if (!nb::try_cast<Bytes>(obj, buf, false))  // no converting copy: obj is what is kept
        throw std::invalid_argument("MoE slice: the buffer must be a C-contiguous uint8 array");
      if (n <= 0 || stride < 0) throw std::invalid_argument("MoE slice: n_ff > 0, stride >= 0");
      const size_t sz = buf.size(), st = stride ? stride : numoe::row_bytes_of(dt, n);
      const size_t need[3] = {numoe::row_bytes_of(gt, D) * n, numoe::row_bytes_of(ut, D) * n,
                              st * (D - 1) + numoe::row_bytes_of(dt, n)};
      numoe::MoESlice m{{}, {}, {}, f0, n, static_cast<size_t>(stride), group};
      const std::vector<int64_t> *offs[3] = {&g, &u, &d};
      std::vector<const uint8_t *> *ptrs[3] = {&m.gate, &m.up, &m.down};
      for (int i = 0; i < 3; ++i) {
        if (static_cast<int64_t>(offs[i]->size()) != E)
          throw std::invalid_argument("MoE slice: one offset per expert");
        for (int64_t o : *offs[i]) {
          if (o < 0 || static_cast<size_t>(o) + need[i] > sz)
            throw std::invalid_argument("MoE slice: expert bytes outside the buffer");
          ptrs[i]->push_back(buf.data() + o);
        }
      }
      out.push_back(std::move(m));
    }
    return out;
  }
  static void check_dims(int64_t E, int64_t F, int64_t D) {
    if (E <= 0 || F <= 0 || D <= 0)
      throw std::invalid_argument("n_expert, n_ff and n_embd must be positive");
  }
};

void bind_kernels(nb::module_ &m) {
  m.def(
      "set_threads",
      [](const std::vector<std::vector<int>> &groups) {
        nb::gil_scoped_release release;
        numoe::ThreadPool::instance().set_threads(groups);
      },
      "groups"_a,
      "Size numoe's thread pool: one CPU list per NUMA node (numoe.topology.thread_plan). The "
      "calling thread takes the first slot; every other CPU gets a worker pinned to it.");
  m.def(
      "set_threads",
      [](const std::vector<int> &cpus) {
        nb::gil_scoped_release release;
        numoe::ThreadPool::instance().set_threads({cpus});
      },
      "cpus"_a, "set_threads with one group (one NUMA node).");
  m.def(
      "num_threads", [] { return numoe::ThreadPool::instance().num_threads(); },
      "Threads of numoe's pool, the caller included.");
  m.def("set_spin_us", &numoe::set_spin_us, "us"_a,
        "How long idle pool workers spin before sleeping (microseconds, clamped to 0..1e6).");
  m.def("spin_us", &numoe::spin_us, "The pool's spin time in microseconds.");
  m.def(
      "thread_groups", [] { return numoe::ThreadPool::instance().groups(); },
      "The CPU lists the pool was set up with (one per node; [[-1]] before set_threads).");
  m.def(
      "worker_affinity", [] { return numoe::ThreadPool::instance().worker_affinity(); },
      "Per pool thread, the CPUs of its affinity mask as the worker read it after pinning "
      "(slot 0, the caller: []).");
  m.def(
      "pool_trace",
      [](int64_t n_tasks, int64_t spin_ns) {
        if (n_tasks < 0) throw std::invalid_argument("n_tasks must be >= 0");
        std::vector<int> thread(n_tasks), cpu(n_tasks);
        {
          nb::gil_scoped_release release;
          numoe::parallel_for(n_tasks, [&](int64_t t, int th) {
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
        numoe::ThreadPool::instance().parallel_for_groups(
            n, group, [&](int64_t s, int64_t t, int) { out[s][t] = {t, sched_getcpu()}; });
        return out;
      },
      "n_tasks"_a, "groups"_a,
      "parallel_for_groups: slot s's tasks on group groups[s]; (task, CPU) per task. For tests.");
  m.def(
      "read_bandwidth_bytes",
      [](const Bytes &a) {
        nb::gil_scoped_release release;
        return numoe::read_bytes(a.data(), a.size());
      },
      "a"_a.noconvert(),
      "Read every byte of `a` on all pool threads (STREAM-style read); returns a checksum.");

  nb::class_<PyLinear>(m, "Linear",
                       "y = x . W^T over a GGUF tensor's raw bytes (read in place), on the pool.")
      .def(nb::init<Bytes, int, int64_t, int64_t, int64_t>(), "data"_a.noconvert(), "type_id"_a,
           "n_out"_a, "n_in"_a, "groups"_a = 1,
           "data: uint8 bytes of W [groups, n_out, n_in] in GGML type `type_id` (kept "
           "referenced). ValueError when the byte count does not match.")
      .def(
          "forward",
          [](PyLinear &s, const Floats &x) {
            const int64_t G = s.op.groups();
            const int64_t T = rows_of(x, G * s.op.n_in(), "x");
            float *y;
            auto arr =
                new_floats2(static_cast<size_t>(T), static_cast<size_t>(G * s.op.n_out()), &y);
            {
              nb::gil_scoped_release release;
              s.op.forward(x.data(), T, y);
            }
            return arr;
          },
          "x"_a, "x float32 [T, groups*n_in] -> float32 [T, groups*n_out].")
      .def(
          "rows",
          [](PyLinear &s, const nb::ndarray<const int64_t, nb::c_contig, nb::device::cpu> &ids) {
            const int64_t n = static_cast<int64_t>(ids.size());
            float *y;
            auto arr = new_floats2(static_cast<size_t>(n), static_cast<size_t>(s.op.n_in()), &y);
            {
              nb::gil_scoped_release release;
              s.op.rows(ids.data(), n, y);
            }
            return arr;
          },
          "ids"_a,
          "Rows `ids` (int64) of W as float32 [n, n_in] (an embedding lookup); ValueError for an "
          "id out of range.")
      .def_static(
          "forward_many",
          [](const std::vector<PyLinear *> &ops, const Floats &x) {
            if (ops.empty()) throw std::invalid_argument("forward_many: no ops");
            for (const PyLinear *p : ops)
              if (p == nullptr) throw std::invalid_argument("forward_many: None in ops");
            const int64_t T = rows_of(x, ops[0]->op.n_in() * ops[0]->op.groups(), "x");
            std::vector<const numoe::LinearOp *> raw;
            std::vector<float *> ys;
            nb::list out;
            for (PyLinear *p : ops) {
              float *y;
              out.append(new_floats2(static_cast<size_t>(T),
                                     static_cast<size_t>(p->op.groups() * p->op.n_out()), &y));
              raw.push_back(&p->op);
              ys.push_back(y);
            }
            {
              nb::gil_scoped_release release;
              numoe::LinearOp::forward_many(raw, x.data(), T, ys);
            }
            return out;
          },
          "ops"_a, "x"_a,
          "[op.forward(x) for op in ops] in one pool call, x quantized once per activation "
          "type (ops with one input width, no groups).")
      .def(
          "warm",
          [](PyLinear &s, size_t max_bytes) {
            numoe::ThreadPool::instance().warm_async(s.data.data(),
                                                     std::min(max_bytes, s.op.bytes()));
          },
          "max_bytes"_a = SIZE_MAX,
          "Have the idle pool workers read the first max_bytes of W into the caches in the "
          "background (ThreadPool::warm_async): other pool calls pause it, this op's next call "
          "and the next warm-up end it.")
      .def_prop_ro("type_id", [](PyLinear &s) { return s.op.type(); })
      .def_prop_ro("n_out", [](PyLinear &s) { return s.op.n_out(); })
      .def_prop_ro("n_in", [](PyLinear &s) { return s.op.n_in(); })
      .def_prop_ro("groups", [](PyLinear &s) { return s.op.groups(); })
      .def_prop_ro("nbytes", [](PyLinear &s) { return s.op.bytes(); });

  nb::class_<PyMoE>(m, "MoE", "Fused routed SwiGLU experts over raw GGUF tensors, on the pool.")
      .def(nb::init<const std::vector<Bytes> &, const std::vector<Bytes> &,
                    const std::vector<Bytes> &, int, int, int, int64_t, int64_t, int64_t>(),
           "gate"_a, "up"_a, "down"_a, "gate_type"_a, "up_type"_a, "down_type"_a, "n_expert"_a,
           "n_ff"_a, "n_embd"_a,
           "gate/up/down: [one merged uint8 array of E experts] or E per-expert arrays (gate/up "
           "[F, D], down [D, F]); kept referenced. ValueError on a size mismatch.")
      .def(nb::init<const std::vector<PyMoE::Slice> &, int, int, int, int64_t, int64_t, int64_t>(),
           "slices"_a, "gate_type"_a, "up_type"_a, "down_type"_a, "n_expert"_a, "n_ff"_a,
           "n_embd"_a,
           "Sliced op (NUMA shard/replicate, csrc/moe.hpp): slices = [(uint8 buffer, gate, up, "
           "down byte offsets per expert, f0, n_ff, down_stride (0: packed), pool group)].")
      .def_prop_ro("n_slices", [](PyMoE &s) { return s.op.n_slices(); })
      .def(
          "forward",
          [](PyMoE &s, const Floats &x, const AnyArray &ids, const Floats &w) {
            const int64_t D = s.op.n_embd();
            const int64_t T = rows_of(x, D, "x");
            const bool i64 = ids.dtype() == nb::dtype<int64_t>();
            if (!i64 && ids.dtype() != nb::dtype<int32_t>())
              throw std::invalid_argument("ids must be int64 or int32");
            if (ids.ndim() != 2 || static_cast<int64_t>(ids.shape(0)) != T)
              throw std::invalid_argument("ids must be [T, k] with T = x.shape[0]");
            const int64_t k = static_cast<int64_t>(ids.shape(1));
            if (w.ndim() != 2 || static_cast<int64_t>(w.shape(0)) != T ||
                static_cast<int64_t>(w.shape(1)) != k)
              throw std::invalid_argument("weights must be float32 [T, k] like ids");
            float *y;
            auto arr = new_floats2(static_cast<size_t>(T), static_cast<size_t>(D), &y);
            {
              nb::gil_scoped_release release;
              s.op.forward(x.data(), T, ids.data(), i64, k, w.data(), y);
            }
            return arr;
          },
          "x"_a, "ids"_a, "weights"_a,
          "x float32 [T, D], ids int64/int32 [T, k], weights float32 [T, k] -> float32 [T, D]. "
          "ValueError for an expert id outside [0, n_expert).")
      .def_prop_ro("n_expert", [](PyMoE &s) { return s.op.n_expert(); })
      .def_prop_ro("n_ff", [](PyMoE &s) { return s.op.n_ff(); })
      .def_prop_ro("n_embd", [](PyMoE &s) { return s.op.n_embd(); })
      .def_prop_ro("expert_nbytes", [](PyMoE &s) {
        return s.op.gate_bytes() + s.op.up_bytes() + s.op.down_bytes();
      });
}

// ---- small decode-step ops (csrc/ops.*) ----
void bind_ops(nb::module_ &m) {
  // Row-strided float32 views (the last dimension contiguous): a slice of a wider tensor
  // (MLA's latent, its rope part) is read in place.
  using Strided = nb::ndarray<const float, nb::device::cpu>;
  auto inner_contiguous = [](const Strided &x, const char *what) {
    if (x.ndim() < 1 || (x.size() > 0 && x.stride(x.ndim() - 1) != 1))
      throw std::invalid_argument(std::string(what) + ": the last dimension must be contiguous");
  };
  m.def(
      "rms_norm",
      [inner_contiguous](const Strided &x, const Floats &w, float eps) {
        inner_contiguous(x, "rms_norm");
        if (w.ndim() != 1 || x.shape(x.ndim() - 1) != w.shape(0))
          throw std::invalid_argument("rms_norm: x [..., n] and weight [n] must agree");
        const int64_t n = static_cast<int64_t>(w.shape(0));
        const int64_t rows = n ? static_cast<int64_t>(x.size()) / n : 0;
        int64_t stride = n;  // rows of a 2-D view may be apart; more dimensions: contiguous
        if (x.ndim() == 2)
          stride = x.stride(0);
        else
          for (size_t d = 0, want = 1; d < x.ndim(); ++d) {
            const size_t i = x.ndim() - 1 - d;
            if (x.shape(i) > 1 && static_cast<size_t>(x.stride(i)) != want)
              throw std::invalid_argument("rms_norm: x must be contiguous or 2-D");
            want *= x.shape(i);
          }
        float *y;
        auto arr = new_floats2(static_cast<size_t>(rows), static_cast<size_t>(n), &y);
        numoe::ops::rms_norm(x.data(), stride, w.data(), eps, rows, n, y);
        return arr;
      },
      "x"_a.noconvert(), "weight"_a.noconvert(), "eps"_a,
      "x float32 [..., n] (contiguous, or 2-D with rows apart) -> [rows, n]: "
      "x / sqrt(mean(x^2) + eps) * weight, per row.");
  m.def(
      "silu_mul",
      [](const Floats &g, const Floats &u) {
        bool same = g.ndim() == u.ndim();
        for (size_t d = 0; same && d < g.ndim(); ++d) same = g.shape(d) == u.shape(d);
        if (!same) throw std::invalid_argument("silu_mul: g and u must have one shape");
        float *y;
        auto arr = new_floats2(1, g.size(), &y);
        numoe::ops::silu_mul(g.data(), u.data(), static_cast<int64_t>(g.size()), y);
        return arr;
      },
      "g"_a.noconvert(), "u"_a.noconvert(),
      "silu(g) * u = g / (1 + exp(-g)) * u for float32 arrays of one shape -> [1, size].");
  m.def(
      "add_rms_norm",
      [](const Floats &x, const Floats &y, const Floats &w, float eps) {
        if (w.ndim() != 1 || x.ndim() != 2 || x.shape(1) != w.shape(0) || y.ndim() != 2 ||
            y.shape(0) != x.shape(0) || y.shape(1) != x.shape(1))
          throw std::invalid_argument("add_rms_norm: x, y [rows, n] and weight [n] must agree");
        const size_t rows = x.shape(0), n = x.shape(1);
        float *s, *out;
        auto sum = new_floats2(rows, n, &s);
        auto arr = new_floats2(rows, n, &out);
        numoe::ops::add_rms_norm(x.data(), y.data(), w.data(), eps, static_cast<int64_t>(rows),
                                 static_cast<int64_t>(n), s, out);
        return nb::make_tuple(sum, arr);
      },
      "x"_a.noconvert(), "y"_a.noconvert(), "weight"_a.noconvert(), "eps"_a,
      "x, y float32 [rows, n] (contiguous) -> (x + y, rms_norm(x + y)): a residual add and the "
      "next norm in one call.");
  m.def(
      "rope",
      [inner_contiguous](const Strided &x, const Floats &cos, const Floats &sin, int64_t dim,
                         bool neox) {
        if (x.ndim() != 3) throw std::invalid_argument("rope: x must be [T, H, head_dim]");
        inner_contiguous(x, "rope");
        const int64_t T = x.shape(0), H = x.shape(1), hd = x.shape(2);
        if (dim <= 0 || dim % 2 != 0 || dim > hd)
          throw std::invalid_argument("rope: dim must be even and in 1..head_dim");
        for (const Floats *a : {&cos, &sin})
          if (a->ndim() != 2 || static_cast<int64_t>(a->shape(0)) != T ||
              static_cast<int64_t>(a->shape(1)) != dim / 2)
            throw std::invalid_argument("rope: cos and sin must be [T, dim/2]");
        float *y;
        auto arr = new_floats2(static_cast<size_t>(T), static_cast<size_t>(H * hd), &y);
        for (int64_t t = 0; t < T; ++t)
          for (int64_t h = 0; h < H; ++h) {
            const float *src = x.data() + t * x.stride(0) + h * x.stride(1);
            std::copy(src, src + hd, y + (t * H + h) * hd);
          }
        numoe::ops::rope(y, T, H, hd, dim, cos.data(), sin.data(), neox);
        return arr;
      },
      "x"_a.noconvert(), "cos"_a.noconvert(), "sin"_a.noconvert(), "dim"_a, "neox"_a,
      "x float32 [T, H, head_dim] (any strides, the last dimension contiguous) -> "
      "[T, H*head_dim]: the first `dim` elements of each head rotated by cos, sin [T, dim/2] "
      "(pairs (i, i+dim/2) when neox, else (2i, 2i+1)).");
  m.def(
      "route",
      [](const Floats &logits, int64_t k, const std::string &gating,
         const std::optional<Floats> &bias, int64_t n_group, int64_t topk_group, bool norm,
         float scale) {
        if (logits.ndim() != 2) throw std::invalid_argument("route: logits must be [T, E]");
        const int64_t T = logits.shape(0), E = logits.shape(1);
        const int gate_fn = gating_id(gating);
        if (bias && (bias->ndim() != 1 || static_cast<int64_t>(bias->shape(0)) != E))
          throw std::invalid_argument("route: bias must be [E]");
        numoe::ops::check_route(E, k, gate_fn, bias.has_value(), n_group, topk_group);
        int64_t *ids;
        auto ids_arr = new_array<int64_t>(static_cast<size_t>(T * k), &ids);
        float *w;
        auto w_arr = new_array<float>(static_cast<size_t>(T * k), &w);
        numoe::ops::route(logits.data(), T, E, k, gate_fn, bias ? bias->data() : nullptr, n_group,
                          topk_group, norm, scale, ids, w);
        return std::make_pair(ids_arr, w_arr);
      },
      "logits"_a.noconvert(), "k"_a, "gating"_a, "bias"_a.noconvert() = nb::none(), "n_group"_a = 1,
      "topk_group"_a = 1, "norm"_a = false, "scale"_a = 1.0f,
      "Router logits float32 [T, E] -> (ids int64 [T*k], weights float32 [T*k]), best first "
      "(see numoe.layers.moe.route).");
  using MutFloats = nb::ndarray<float, nb::c_contig, nb::device::cpu>;
  m.def(
      "gqa_decode",
      [](MutFloats &q, MutFloats &k, const Floats &v, MutFloats &k_cache, MutFloats &v_cache,
         int64_t pos, float scale, const std::optional<Floats> &q_norm,
         const std::optional<Floats> &k_norm, float eps, const std::optional<Floats> &cos,
         const std::optional<Floats> &sin, int64_t rope_dim, bool neox) {
        auto bad = [](const std::string &what) {
          return std::invalid_argument("gqa_decode: " + what);
        };
        if (k_cache.ndim() != 3 || v_cache.ndim() != 3 || k_cache.shape(0) != v_cache.shape(0) ||
            k_cache.shape(1) != v_cache.shape(1))
          throw bad("caches must be [n_ctx, Hkv, dk] and [n_ctx, Hkv, dv]");
        const int64_t n_ctx = k_cache.shape(0), Hkv = k_cache.shape(1);
        const int64_t dk = k_cache.shape(2), dv = v_cache.shape(2);
        if (Hkv <= 0 || dk <= 0 || dv <= 0) throw bad("empty cache dimensions");
        if (static_cast<int64_t>(k.size()) != Hkv * dk ||
            static_cast<int64_t>(v.size()) != Hkv * dv)
          throw bad("k and v must hold one token of Hkv heads");
        const int64_t H = static_cast<int64_t>(q.size()) / dk;
        if (H * dk != static_cast<int64_t>(q.size()) || H % Hkv != 0)
          throw bad("q must hold H * dk values, H a multiple of Hkv");
        if (pos < 0 || pos >= n_ctx) throw bad("position outside the cache");
        for (const auto *nrm : {&q_norm, &k_norm})
          if (*nrm && static_cast<int64_t>((*nrm)->size()) != dk) throw bad("norms must be [dk]");
        if (rope_dim < 0 || rope_dim % 2 != 0 || rope_dim > dk) throw bad("bad rope_dim");
        if (rope_dim > 0 && (!cos || !sin || static_cast<int64_t>(cos->size()) != rope_dim / 2 ||
                             static_cast<int64_t>(sin->size()) != rope_dim / 2))
          throw bad("cos and sin must hold rope_dim / 2 values");
        numoe::ops::GqaDecode a{
            q.data(), k.data(), v.data(), k_cache.data(), v_cache.data(), H, Hkv,
            dk,       dv,       pos,      scale};
        a.q_norm = q_norm ? q_norm->data() : nullptr;
        a.k_norm = k_norm ? k_norm->data() : nullptr;
        a.eps = eps;
        if (rope_dim > 0) {
          a.cos = cos->data();
          a.sin = sin->data();
        }
        a.rope_dim = rope_dim;
        a.neox = neox;
        float *y;
        auto arr = new_floats2(1, static_cast<size_t>(H * dv), &y);
        {
          nb::gil_scoped_release release;
          numoe::ops::gqa_decode(a, y);
        }
        return arr;
      },
      "q"_a.noconvert(), "k"_a.noconvert(), "v"_a.noconvert(), "k_cache"_a.noconvert(),
      "v_cache"_a.noconvert(), "pos"_a, "scale"_a, "q_norm"_a.noconvert() = nb::none(),
      "k_norm"_a.noconvert() = nb::none(), "eps"_a = 0.0f, "cos"_a.noconvert() = nb::none(),
      "sin"_a.noconvert() = nb::none(), "rope_dim"_a = 0, "neox"_a = true,
      "One token's grouped-query attention (ops::gqa_decode): q [H*dk], k [Hkv*dk] normed and "
      "rotated in place, k and v stored at row pos of the caches [n_ctx, Hkv, d], -> out "
      "[1, H*dv].");
  m.def(
      "mla_decode",
      [](const Floats &q_lat, MutFloats &q, int64_t d_nope, MutFloats &kv, const Floats &kv_norm,
         float eps, MutFloats &latent_cache, MutFloats &k_rope_cache, int64_t pos, float scale,
         const Floats &cos, const Floats &sin, bool neox) {
        auto bad = [](const std::string &what) {
          return std::invalid_argument("mla_decode: " + what);
        };
        if (latent_cache.ndim() != 2 || k_rope_cache.ndim() != 2 ||
            latent_cache.shape(0) != k_rope_cache.shape(0))
          throw bad("caches must be [n_ctx, R] and [n_ctx, dr]");
        const int64_t n_ctx = latent_cache.shape(0), R = latent_cache.shape(1);
        const int64_t dr = k_rope_cache.shape(1);
        if (R <= 0 || dr <= 0 || dr % 2 != 0) throw bad("R must be positive and dr even");
        const int64_t H = static_cast<int64_t>(q_lat.size()) / R;
        if (H <= 0 || H * R != static_cast<int64_t>(q_lat.size()))
          throw bad("q_lat must hold H * R values");
        if (d_nope < 0 || static_cast<int64_t>(q.size()) != H * (d_nope + dr))
          throw bad("q must hold H * (d_nope + dr) values");
        if (static_cast<int64_t>(kv.size()) != R + dr) throw bad("kv must hold R + dr values");
        if (static_cast<int64_t>(kv_norm.size()) != R) throw bad("kv_norm must be [R]");
        if (static_cast<int64_t>(cos.size()) != dr / 2 ||
            static_cast<int64_t>(sin.size()) != dr / 2)
          throw bad("cos and sin must hold dr / 2 values");
        if (pos < 0 || pos >= n_ctx) throw bad("position outside the cache");
        numoe::ops::MlaDecode a{q_lat.data(),
                                q.data() + d_nope,
                                d_nope + dr,
                                kv.data(),
                                kv_norm.data(),
                                eps,
                                latent_cache.data(),
                                k_rope_cache.data(),
                                H,
                                R,
                                dr,
                                pos,
                                scale,
                                cos.data(),
                                sin.data(),
                                neox};
        float *y;
        auto arr = new_floats2(1, static_cast<size_t>(H * R), &y);
        {
          nb::gil_scoped_release release;
          numoe::ops::mla_decode(a, y);
        }
        return arr;
      },
      "q_lat"_a.noconvert(), "q"_a.noconvert(), "d_nope"_a, "kv"_a.noconvert(),
      "kv_norm"_a.noconvert(), "eps"_a, "latent_cache"_a.noconvert(), "k_rope_cache"_a.noconvert(),
      "pos"_a, "scale"_a, "cos"_a.noconvert(), "sin"_a.noconvert(), "neox"_a,
      "One token's multi-head latent attention (ops::mla_decode): q_lat [H*R] (absorbed "
      "query), q [H*(d_nope+dr)] whose rope parts are rotated in place, kv [R+dr] normed and "
      "rotated in place and stored at row pos of the caches [n_ctx, R], [n_ctx, dr] -> out "
      "[1, H*R].");
}

// ---- one decode step of a block (csrc/decode.*) ----
struct PyDecodeBlock {
  std::vector<nb::object> keep;  // the ops and arrays the block points into
  numoe::DecodeBlock blk;
  PyDecodeBlock(const Floats &attn_norm, const Floats &ffn_norm, float eps)
      : keep{nb::cast(attn_norm), nb::cast(ffn_norm)},
        blk(attn_norm.data(), ffn_norm.data(), eps, check(attn_norm, ffn_norm)) {}
  static int64_t check(const Floats &a, const Floats &f) {
    if (a.ndim() != 1 || f.ndim() != 1 || a.shape(0) != f.shape(0) || a.shape(0) == 0)
      throw std::invalid_argument("DecodeBlock: attn_norm and ffn_norm must be [D], D > 0");
    return static_cast<int64_t>(a.shape(0));
  }
  // A Linear op (None: nullptr), kept alive by the block.
  const numoe::LinearOp *op(const nb::object &o, const char *what) {
    if (o.is_none()) return nullptr;
    PyLinear *p = nullptr;
    if (!nb::try_cast<PyLinear *>(o, p) || p == nullptr)
      throw std::invalid_argument(std::string("DecodeBlock: ") + what +
                                  " must be a numoe._cpu.Linear or None");
    keep.push_back(o);
    return &p->op;
  }
  // A float32 vector of n values (None: nullptr), kept alive by the block.
  const float *vec(const nb::object &o, int64_t n, const char *what) {
    if (o.is_none()) return nullptr;
    Floats a;
    if (!nb::try_cast<Floats>(o, a, false) || a.ndim() != 1 || static_cast<int64_t>(a.size()) != n)
      throw std::invalid_argument(std::string("DecodeBlock: ") + what +
                                  " must be a contiguous float32 array [" + std::to_string(n) +
                                  "]");
    keep.push_back(o);
    return a.data();
  }
};

void bind_decode(nb::module_ &m) {
  using MutFloats = nb::ndarray<float, nb::c_contig, nb::device::cpu>;
  nb::class_<PyDecodeBlock>(m, "DecodeBlock",
                            "One token through a whole pre-norm block in one call (csrc/decode."
                            "hpp): set one attention and one FFN, then step().")
      .def(nb::init<const Floats &, const Floats &, float>(), "attn_norm"_a.noconvert(),
           "ffn_norm"_a.noconvert(), "eps"_a)
      .def(
          "set_gqa",
          [](PyDecodeBlock &s, nb::object q, nb::object k, nb::object v, nb::object o,
             nb::object bq, nb::object bk, nb::object bv, nb::object q_norm, nb::object k_norm,
             int64_t H, int64_t Hkv, int64_t Dh, int64_t rope_dim, bool neox, float scale) {
            numoe::GqaStep a{s.op(q, "q"), s.op(k, "k"), s.op(v, "v"), s.op(o, "o")};
            a.bq = s.vec(bq, H * Dh, "q bias");
            a.bk = s.vec(bk, Hkv * Dh, "k bias");
            a.bv = s.vec(bv, Hkv * Dh, "v bias");
            a.q_norm = s.vec(q_norm, Dh, "q_norm");
            a.k_norm = s.vec(k_norm, Dh, "k_norm");
            a.H = H, a.Hkv = Hkv, a.Dh = Dh, a.rope_dim = rope_dim, a.neox = neox;
            a.scale = scale;
            s.blk.set_gqa(a);
          },
          "q"_a, "k"_a, "v"_a, "o"_a, "bq"_a.none(), "bk"_a.none(), "bv"_a.none(),
          "q_norm"_a.none(), "k_norm"_a.none(), "H"_a, "Hkv"_a, "Dh"_a, "rope_dim"_a, "neox"_a,
          "scale"_a, "Grouped-query attention (Linear ops; optional biases and q/k norms).")
      .def(
          "set_mla",
          [](PyDecodeBlock &s, nb::object q, nb::object q_a, nb::object q_a_norm, nb::object q_b,
             nb::object kv_a, nb::object kv_norm, nb::object k_b, nb::object v_b, nb::object o,
             int64_t H, int64_t R, int64_t dn, int64_t dr, int64_t dv, bool neox, float scale) {
            numoe::MlaStep a;
            a.q = s.op(q, "q"), a.q_a = s.op(q_a, "q_a"), a.q_b = s.op(q_b, "q_b");
            a.q_a_norm = a.q_a ? s.vec(q_a_norm, a.q_a->n_out(), "q_a_norm") : nullptr;
            a.kv_a = s.op(kv_a, "kv_a"), a.k_b = s.op(k_b, "k_b"), a.v_b = s.op(v_b, "v_b"),
            a.o = s.op(o, "o");
            a.kv_norm = s.vec(kv_norm, R, "kv_norm");
            if (a.kv_norm == nullptr) throw std::invalid_argument("DecodeBlock: kv_norm is None");
            a.H = H, a.R = R, a.dn = dn, a.dr = dr, a.dv = dv, a.neox = neox, a.scale = scale;
            s.blk.set_mla(a);
          },
          "q"_a.none(), "q_a"_a.none(), "q_a_norm"_a.none(), "q_b"_a.none(), "kv_a"_a, "kv_norm"_a,
          "k_b"_a, "v_b"_a, "o"_a, "H"_a, "R"_a, "d_nope"_a, "d_rope"_a, "d_v"_a, "neox"_a,
          "scale"_a, "Multi-head latent attention, absorbed form (q, or q_a + q_b).")
      .def(
          "set_dense",
          [](PyDecodeBlock &s, nb::object gate, nb::object up, nb::object down) {
            s.blk.set_dense({s.op(gate, "gate"), s.op(up, "up"), s.op(down, "down")});
          },
          "gate"_a, "up"_a, "down"_a, "Dense SwiGLU FFN.")
      .def(
          "set_moe",
          [](PyDecodeBlock &s, nb::object router, nb::object experts, int64_t k,
             const std::string &gating, nb::object bias, int64_t n_group, int64_t topk_group,
             bool norm, float scale, nb::object sh_gate, nb::object sh_up, nb::object sh_down,
             nb::object sh_gate_vec) {
            numoe::MoeStep f{s.op(router, "router"), nullptr, k, gating_id(gating)};
            PyMoE *moe = nullptr;
            if (!nb::try_cast<PyMoE *>(experts, moe) || moe == nullptr)
              throw std::invalid_argument("DecodeBlock: experts must be a numoe._cpu.MoE");
            s.keep.push_back(experts);
            f.experts = &moe->op;
            f.bias = s.vec(bias, f.experts->n_expert(), "bias");
            f.n_group = n_group, f.topk_group = topk_group, f.norm = norm, f.scale = scale;
            f.sh_gate = s.op(sh_gate, "sh_gate"), f.sh_up = s.op(sh_up, "sh_up"),
            f.sh_down = s.op(sh_down, "sh_down");
            f.sh_gate_vec = s.vec(sh_gate_vec, s.blk.n_embd(), "shared expert gate");
            s.blk.set_moe(f);
          },
          "router"_a, "experts"_a, "k"_a, "gating"_a, "bias"_a.none(), "n_group"_a, "topk_group"_a,
          "norm"_a, "scale"_a, "sh_gate"_a.none(), "sh_up"_a.none(), "sh_down"_a.none(),
          "sh_gate_vec"_a.none(),
          "Router + top-k + MoE op (see numoe.layers.moe.route), optional shared expert.")
      .def(
          "step",
          [](PyDecodeBlock &s, MutFloats &x, MutFloats &f, bool add, MutFloats &c0, MutFloats &c1,
             int64_t pos, const Floats &cos, const Floats &sin) {
            auto bad = [](const std::string &what) {
              return std::invalid_argument("DecodeBlock.step: " + what);
            };
            if (!s.blk.ready()) throw bad("set an attention and an FFN first");
            const int64_t D = s.blk.n_embd();
            if (static_cast<int64_t>(x.size()) != D || static_cast<int64_t>(f.size()) != D)
              throw bad("x and f must hold D = " + std::to_string(D) + " values");
            MutFloats *cs[2] = {&c0, &c1};
            for (int i = 0; i < 2; ++i) {
              const int64_t w = s.blk.cache_width(i);
              if (cs[i]->ndim() < 2 ||
                  static_cast<int64_t>(cs[i]->size()) != static_cast<int64_t>(cs[i]->shape(0)) * w)
                throw bad("cache " + std::to_string(i) + " must be [n_ctx, " + std::to_string(w) +
                          " values]");
            }
            if (c0.shape(0) != c1.shape(0)) throw bad("the two caches differ in n_ctx");
            if (pos < 0 || pos >= static_cast<int64_t>(c0.shape(0)))
              throw bad("position outside the cache");
            const size_t pairs = static_cast<size_t>(s.blk.rope_pairs());
            if (pairs > 0 && (cos.size() != pairs || sin.size() != pairs))
              throw bad("cos and sin must hold " + std::to_string(pairs) + " values (one row)");
            nb::gil_scoped_release release;
            s.blk.step(x.data(), f.data(), add, c0.data(), c1.data(), pos, cos.data(), sin.data());
          },
          "x"_a.noconvert(), "f"_a.noconvert(), "add"_a, "cache0"_a.noconvert(),
          "cache1"_a.noconvert(), "pos"_a, "cos"_a.noconvert(), "sin"_a.noconvert(),
          "x [D] (in place: the residual stream), f [D] (in: the previous block's FFN branch, "
          "added to x when add; out: this block's), the layer's two caches [n_ctx, ...], the "
          "token's position and rotary row cos, sin.");
  m.def(
      "decode_profiling", [](bool on) { numoe::set_decode_profiling(on); }, "on"_a,
      "Time every stage of every DecodeBlock.step from now on (sums reset), or stop.");
  m.def(
      "decode_profile",
      [] {
        std::vector<std::tuple<std::string, double, int64_t, size_t>> out;
        const auto p = numoe::decode_profile();
        for (int s = 0; s < numoe::kStages; ++s)
          out.emplace_back(numoe::decode_stage_name(s), p[s].ns * 1e-9, p[s].calls, p[s].bytes);
        return out;
      },
      "Per stage of DecodeBlock.step since decode_profiling(True): (name, seconds, calls, "
      "weight bytes read), summed over the blocks.");
}

// ---- node memory (csrc/numa_mem.*) ----
void bind_numa_mem(nb::module_ &m) {
  m.attr("NOT_RESIDENT") = numoe::kNotResident;
  m.attr("UNKNOWN_NODE") = numoe::kUnknownNode;
  nb::class_<numoe::NodeBuffer>(m, "NodeBuffer",
                                "Anonymous memory placed on one NUMA node (mbind and/or first "
                                "touch from the node's CPUs), 2 MiB aligned; freed when the "
                                "object and every array view of it are gone.")
      .def(
          "__init__",
          [](numoe::NodeBuffer *self, int64_t bytes, int node, bool strict) {
            if (bytes <= 0)
              throw std::invalid_argument("NodeBuffer: bytes must be > 0, got " +
                                          std::to_string(bytes));
            nb::gil_scoped_release release;
            new (self) numoe::NodeBuffer(static_cast<size_t>(bytes), node, strict);
          },
          "bytes"_a, "node"_a, "strict"_a = false,
          "bytes > 0 on NUMA node `node` (ValueError for a node this machine lacks or more than "
          "its memory). strict: MPOL_BIND instead of MPOL_PREFERRED.")
      .def_prop_ro(
          "array",
          [](nb::object self) {
            auto &b = nb::cast<numoe::NodeBuffer &>(self);
            return nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>>(b.data(), {b.size()}, self);
          },
          "uint8 [nbytes] view of the buffer (keeps it alive).")
      .def_prop_ro("address",
                   [](const numoe::NodeBuffer &b) { return reinterpret_cast<uintptr_t>(b.data()); })
      .def_prop_ro("nbytes", &numoe::NodeBuffer::size, "Bytes asked for.")
      .def_prop_ro("mapped", &numoe::NodeBuffer::mapped,
                   "Bytes mapped (nbytes rounded up to 2 MiB).")
      .def_prop_ro("node", &numoe::NodeBuffer::node)
      .def_prop_ro("bound", &numoe::NodeBuffer::bound, "mbind succeeded.")
      .def_prop_ro("how", &numoe::NodeBuffer::how,
                   "'mbind+touch', 'first-touch' (mbind refused), 'mbind' or 'unplaced' (a node "
                   "without CPUs this process may use).")
      .def_prop_ro("mbind_error", &numoe::NodeBuffer::mbind_error, "'' when bound.");
  m.def("node_allocated", &numoe::allocated_per_node,
        "The allocator's accounting: node -> bytes mapped by live NodeBuffers.");
  m.def("node_memory", &numoe::node_memory, "This machine's nodes: node -> MemTotal bytes.");
  m.def(
      "pages_per_node",
      [](const Bytes &a, bool map_cached) {
        nb::gil_scoped_release release;
        return numoe::pages_per_node(a.data(), a.size(), map_cached);
      },
      "a"_a.noconvert(), "map_cached"_a = false,
      "Where the pages of uint8 array `a` are: node -> bytes, NOT_RESIDENT (and UNKNOWN_NODE "
      "when move_pages is refused on a machine with several nodes) -> bytes; the values add up "
      "to a.size. map_cached: count page-cache pages of a file mapping not yet mapped here too.");
  m.def(
      "release_file_pages",
      [](const Bytes &a) {
        nb::gil_scoped_release release;
        return numoe::release_file_pages(a.data(), a.size());
      },
      "a"_a.noconvert(),
      "madvise(MADV_DONTNEED) the whole pages inside uint8 array `a`, which must lie in a "
      "read-only file mapping (ValueError otherwise): they leave RSS. Returns bytes released.");
  m.def(
      "prefault_pages",
      [](const Bytes &a) {
        nb::gil_scoped_release release;
        return numoe::prefault_pages(a.data(), a.size());
      },
      "a"_a.noconvert(),
      "Map every page of uint8 array `a` now (MADV_POPULATE_READ, else one read per page on the "
      "pool); True when madvise did it.");
}

}  // namespace

NB_MODULE(_cpu, m) {
  m.doc() = "numoe's CPU extension: topology now; quantized kernels and the MoE op later.";
  bind_kernels(m);
  bind_numa_mem(m);
  bind_ops(m);
  bind_decode(m);

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

  // ---- ISA dispatch ----
  m.def(
      "isa", [] { return std::string(numoe::isa_name(numoe::current_isa())); },
      "The SIMD level the kernels use: 'scalar', 'avx2' or 'avx512' (NUMOE_ISA forces one; "
      "ValueError if NUMOE_ISA holds an unknown name).");
  m.def(
      "set_isa",
      [](const std::string &name) {
        return std::string(numoe::isa_name(numoe::set_isa(numoe::parse_isa(name))));
      },
      "name"_a,
      "Use SIMD level `name` from now on; returns the previous level. ValueError for an unknown "
      "name or a level this CPU lacks. For tests and benchmarks.");
  m.def(
      "isa_available",
      [] {
        nb::list out;
        for (numoe::Isa l : numoe::isa_available()) out.append(numoe::isa_name(l));
        return out;
      },
      "SIMD levels this CPU supports, lowest first.");
  m.def(
      "isa_features",
      [] {
        const numoe::CpuFeatures &f = numoe::cpu_features();
        nb::dict d;
        d["avx2"] = f.avx2;
        d["avx512"] = f.avx512;
        d["avx512_vnni"] = f.avx512_vnni;
        d["avx512_bf16"] = f.avx512_bf16;
        return d;
      },
      "CPU features the dispatcher looked at (avx2 = AVX2+FMA+F16C; avx512 = F+DQ+BW+VL).");

  // ---- GGUF block formats ----
  m.def(
      "quant_type_info",
      [](int type) {
        const numoe::quant::TypeInfo &t = numoe::quant::type_info(type);
        nb::dict d;
        d["name"] = t.name;
        d["block_size"] = t.block_size;
        d["type_size"] = t.type_size;
        d["act_type"] = t.act_type;
        return d;
      },
      "type_id"_a,
      "Block size, bytes per block and activation type of a GGML type id; ValueError naming the "
      "type when numoe has no kernels for it.");
  m.def(
      "dequantize",
      [](int type, const Bytes &raw, int64_t n) {
        const numoe::quant::TypeInfo &t = numoe::quant::type_info(type);
        need_bytes(raw.size(), quant_bytes(t, n), "raw", t, n);
        float *out;
        auto arr = new_array<float>(static_cast<size_t>(n), &out);
        {
          nb::gil_scoped_release release;
          t.dequantize(raw.data(), out, n);
        }
        return arr;
      },
      "type_id"_a, "raw"_a.noconvert(), "n"_a,
      "The first n elements of raw blocks of GGML type `type_id` as float32.");
  m.def(
      "quantize_activation",
      [](int weight_type, const Floats &x) {
        const numoe::quant::TypeInfo &a = act_info(numoe::quant::type_info(weight_type));
        const int64_t n = static_cast<int64_t>(x.size());
        const size_t bytes = quant_bytes(a, n);
        const numoe::quant::quantize_fn q = numoe::quant::get_quantize(a.type);
        uint8_t *out;
        auto arr = new_array<uint8_t>(bytes, &out);
        {
          nb::gil_scoped_release release;
          q(x.data(), out, n);
        }
        return arr;
      },
      "weight_type"_a, "x"_a,
      "Quantize a float32 activation to the format vec_dot pairs with `weight_type` (Q8_0 for "
      "Q8_0/Q4_0, Q8_K4 (Q8_K in their nibble order) for Q4_K/Q5_K, Q8_K for Q6_K, raw float32 "
      "bytes for F32/F16/BF16).");
  m.def(
      "vec_dot",
      [](int type, const Bytes &w, const Bytes &act, int64_t n) {
        const numoe::quant::TypeInfo &t = numoe::quant::type_info(type);
        const numoe::quant::TypeInfo &a = act_info(t);
        if (n > INT_MAX) throw std::invalid_argument("n is too large");
        need_bytes(w.size(), quant_bytes(t, n), "weight row", t, n);
        need_bytes(act.size(), quant_bytes(a, n), "activation", a, n);
        const numoe::quant::vec_dot_fn f = numoe::quant::get_vec_dot(type);
        nb::gil_scoped_release release;
        return f(static_cast<int>(n), w.data(), act.data());
      },
      "type_id"_a, "w"_a.noconvert(), "act"_a.noconvert(), "n"_a,
      "Dot product of one weight row (n elements of `type_id`, raw bytes) with an activation "
      "from quantize_activation.");
  m.attr("VEC_DOT_N_MAX") = numoe::quant::kMaxActs;
  m.def(
      "vec_dot_n",
      [](int type, const Bytes &w, const Bytes &act, int64_t n, const std::vector<int64_t> &rows,
         int64_t n_rows) {
        const numoe::quant::TypeInfo &t = numoe::quant::type_info(type);
        const numoe::quant::TypeInfo &a = act_info(t);
        if (n > INT_MAX) throw std::invalid_argument("n is too large");
        if (n_rows < 1 || n_rows > INT_MAX) throw std::invalid_argument("n_rows must be >= 1");
        const int n_act = static_cast<int>(rows.size());
        if (rows.empty() || rows.size() > static_cast<size_t>(numoe::quant::kMaxActs))
          throw std::invalid_argument("rows: need 1.." + std::to_string(numoe::quant::kMaxActs) +
                                      " activation rows, got " + std::to_string(rows.size()));
        const size_t wrow = quant_bytes(t, n);
        need_bytes(w.size(), wrow * static_cast<size_t>(n_rows), "weights", t, n * n_rows);
        const size_t arow = quant_bytes(a, n);
        const void *ptrs[numoe::quant::kMaxActs];
        for (int j = 0; j < n_act; ++j) {
          if (rows[j] < 0 || static_cast<size_t>(rows[j] + 1) * arow > act.size())
            throw std::invalid_argument("activation row " + std::to_string(rows[j]) +
                                        " is not in the " + std::to_string(act.size()) +
                                        " bytes of act (" + std::to_string(arow) + " per row)");
          ptrs[j] = act.data() + static_cast<size_t>(rows[j]) * arow;
        }
        const numoe::quant::vec_dot_fn f = numoe::quant::get_vec_dot(type);
        const numoe::quant::vec_dot_n_fn fn = numoe::quant::get_vec_dot_n(type);
        float *out;
        auto arr = new_floats2(static_cast<size_t>(n_act), static_cast<size_t>(n_rows), &out);
        {
          nb::gil_scoped_release release;
          if (fn != nullptr)
            fn(static_cast<int>(n), w.data(), wrow, static_cast<int>(n_rows), ptrs, n_act, out,
               static_cast<size_t>(n_rows));
          else
            for (int j = 0; j < n_act; ++j)
              for (int64_t r = 0; r < n_rows; ++r)
                out[j * n_rows + r] = f(static_cast<int>(n), w.data() + r * wrow, ptrs[j]);
        }
        return arr;
      },
      "type_id"_a, "w"_a.noconvert(), "act"_a.noconvert(), "n"_a, "rows"_a, "n_rows"_a = 1,
      "The prefill tile (vec_dot_n): n_rows consecutive weight rows of n elements in `w` "
      "against activation rows `rows` (1..VEC_DOT_N_MAX indices, repeats allowed) of `act` "
      "(activations from quantize_activation back to back): float32 [len(rows), n_rows], each "
      "equal to vec_dot's.");
  m.def(
      "vec_dot_rows",
      [](int type, const Bytes &w, const Bytes &act, int64_t n, int64_t n_rows) {
        const numoe::quant::TypeInfo &t = numoe::quant::type_info(type);
        const numoe::quant::TypeInfo &a = act_info(t);
        if (n > INT_MAX) throw std::invalid_argument("n is too large");
        if (n_rows < 0) throw std::invalid_argument("n_rows must be >= 0");
        const size_t row = quant_bytes(t, n);
        need_bytes(w.size(), row * static_cast<size_t>(n_rows), "weights", t, n * n_rows);
        need_bytes(act.size(), quant_bytes(a, n), "activation", a, n);
        const numoe::quant::vec_dot_fn f = numoe::quant::get_vec_dot(type);
        float *out;
        auto arr = new_array<float>(static_cast<size_t>(n_rows), &out);
        {
          nb::gil_scoped_release release;
          for (int64_t r = 0; r < n_rows; ++r)
            out[r] = f(static_cast<int>(n), w.data() + r * row, act.data());
        }
        return arr;
      },
      "type_id"_a, "w"_a.noconvert(), "act"_a.noconvert(), "n"_a, "n_rows"_a,
      "vec_dot for n_rows consecutive rows (single thread): a reference GEMV for tests and "
      "benchmarks.");

  // ---- weight quantizers (numoe quantize, synth) ----
  m.def(
      "quantize",
      [](int type, const nb::ndarray<const float, nb::c_contig, nb::device::cpu> &x,
         int n_threads) {
        if (x.ndim() != 2)
          throw std::invalid_argument("quantize: x must be 2-D [rows, cols], got " +
                                      std::to_string(x.ndim()) + " dimensions");
        const int64_t rows = static_cast<int64_t>(x.shape(0));
        const int64_t cols = static_cast<int64_t>(x.shape(1));
        const int64_t rb = numoe::quantize::row_bytes(type, cols);  // checks type and cols
        const size_t n = static_cast<size_t>(rows) * static_cast<size_t>(rb);
        uint8_t *out = new uint8_t[n > 0 ? n : 1];
        nb::capsule owner(out, [](void *p) noexcept { delete[] static_cast<uint8_t *>(p); });
        {
          nb::gil_scoped_release release;
          numoe::quantize::quantize_rows(type, x.data(), out, rows, cols, n_threads);
        }
        return nb::ndarray<nb::numpy, uint8_t, nb::ndim<2>>(
            out, {static_cast<size_t>(rows), static_cast<size_t>(rb)}, owner);
      },
      "type_id"_a, "x"_a, "n_threads"_a = 0,
      "Quantize float32 rows x [rows, cols] to GGML type `type_id` (Q4_0, Q8_0, Q4_K, Q5_K, "
      "Q6_K) with ggml's reference algorithms: uint8 [rows, row bytes]. ValueError when cols "
      "is not a multiple of the block size or the type has no quantizer. Rows are split over "
      "n_threads threads (0: all cores).");
}
