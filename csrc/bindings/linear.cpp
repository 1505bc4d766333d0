// numoe._cpu bindings: the linear op (csrc/linear.*) and the fused MoE op (csrc/moe.*).
#include <utility>

#include "bindings.hpp"

namespace numoe::py {

using namespace nb::literals;

namespace {

// x as float32 [T, n] (2-D, C-contiguous); ValueError naming `what` otherwise.
int64_t rows_of(const Floats &x, int64_t n, const char *what) {
  if (x.ndim() != 2 || static_cast<int64_t>(x.shape(1)) != n)
    throw std::invalid_argument(std::string(what) + " must be float32 [T, " + std::to_string(n) +
                                "], got ndim " + std::to_string(x.ndim()) +
                                (x.ndim() == 2 ? ", shape[1] " + std::to_string(x.shape(1)) : ""));
  return static_cast<int64_t>(x.shape(0));
}

// Expert pointers from either one merged [E, rows, cols] tensor or one tensor per expert.
std::vector<const uint8_t *> expert_ptrs(const std::vector<Bytes> &arrs, int type, int64_t E,
                                         int64_t rows, int64_t cols, const char *what) {
  const size_t one = row_bytes_of(type, cols) * static_cast<size_t>(rows);
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

std::vector<MoESlice> moe_slices(const std::vector<PyMoE::Slice> &sl, int gt, int ut, int dt,
                                 int64_t E, int64_t D) {
  std::vector<MoESlice> out;
  for (const auto &[obj, g, u, d, f0, n, stride, group] : sl) {
    Bytes buf;
    if (!nb::try_cast<Bytes>(obj, buf, false))  // no converting copy: obj is what is kept
      throw std::invalid_argument("MoE slice: the buffer must be a C-contiguous uint8 array");
    if (n <= 0 || stride < 0) throw std::invalid_argument("MoE slice: n_ff > 0, stride >= 0");
    const size_t sz = buf.size(), st = stride ? stride : row_bytes_of(dt, n);
    const size_t need[3] = {row_bytes_of(gt, D) * n, row_bytes_of(ut, D) * n,
                            st * (D - 1) + row_bytes_of(dt, n)};
    MoESlice m{{}, {}, {}, f0, n, static_cast<size_t>(stride), group};
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

void check_moe_dims(int64_t E, int64_t F, int64_t D) {
  if (E <= 0 || F <= 0 || D <= 0)
    throw std::invalid_argument("n_expert, n_ff and n_embd must be positive");
}

const uint8_t *linear_bytes(const Bytes &d, int type, int64_t n_out, int64_t n_in, int64_t groups) {
  if (n_out <= 0 || groups <= 0) throw std::invalid_argument("n_out and groups must be positive");
  const size_t want = row_bytes_of(type, n_in) * static_cast<size_t>(n_out * groups);
  if (d.size() != want)
    throw std::invalid_argument("weight bytes: have " + std::to_string(d.size()) + ", " +
                                std::to_string(groups) + " x " + std::to_string(n_out) + " x " +
                                std::to_string(n_in) + " " + quant::type_name(type) + " need " +
                                std::to_string(want));
  return d.data();
}

}  // namespace

PyLinear::PyLinear(Bytes d, int type, int64_t n_out, int64_t n_in, int64_t groups)
    : data(std::move(d)),
      op(linear_bytes(data, type, n_out, n_in, groups), type, n_out, n_in, groups) {}

PyMoE::PyMoE(const std::vector<Bytes> &gate, const std::vector<Bytes> &up,
             const std::vector<Bytes> &down, int gt, int ut, int dt, int64_t E, int64_t F,
             int64_t D)
    : op((check_moe_dims(E, F, D), expert_ptrs(gate, gt, E, F, D, "gate")),
         expert_ptrs(up, ut, E, F, D, "up"), expert_ptrs(down, dt, E, D, F, "down"), gt, ut, dt, E,
         F, D) {
  for (const auto *v : {&gate, &up, &down}) keep.insert(keep.end(), v->begin(), v->end());
}

PyMoE::PyMoE(const std::vector<Slice> &sl, int gt, int ut, int dt, int64_t E, int64_t F, int64_t D)
    : op((check_moe_dims(E, F, D), moe_slices(sl, gt, ut, dt, E, D)), gt, ut, dt, E, F, D) {
  for (const auto &s : sl) keep_obj.push_back(std::get<0>(s));
}

void bind_linear(nb::module_ &m) {
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
            std::vector<const LinearOp *> raw;
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
              LinearOp::forward_many(raw, x.data(), T, ys);
            }
            return out;
          },
          "ops"_a, "x"_a,
          "[op.forward(x) for op in ops] in one pool call, x quantized once per activation "
          "type (ops with one input width, no groups).")
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

}  // namespace numoe::py
