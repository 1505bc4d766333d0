// numoe._cpu bindings: ISA dispatch (csrc/isa.*), the GGUF block formats' kernels
// (csrc/quant/) and the weight quantizers (csrc/quantize/).
#include "quant/quant.hpp"

#include <climits>

#include "bindings.hpp"
#include "isa.hpp"
#include "quantize/quantize.hpp"

namespace numoe::py {

using namespace nb::literals;

namespace {

// Bytes of n elements of type t; n must be a non-negative multiple of the block size.
size_t quant_bytes(const quant::TypeInfo &t, int64_t n) {
  if (n < 0 || n % t.block_size != 0)
    throw std::invalid_argument("n=" + std::to_string(n) + " is not a non-negative multiple of " +
                                t.name + "'s block size " + std::to_string(t.block_size));
  return static_cast<size_t>(n / t.block_size) * static_cast<size_t>(t.type_size);
}

void need_bytes(size_t have, size_t want, const char *what, const quant::TypeInfo &t, int64_t n) {
  if (have < want)
    throw std::invalid_argument(std::string(what) + " has " + std::to_string(have) + " bytes; " +
                                std::to_string(n) + " elements of " + t.name + " need " +
                                std::to_string(want));
}

const quant::TypeInfo &act_info(const quant::TypeInfo &w) {
  if (w.act_type < 0)
    throw std::invalid_argument(std::string(w.name) + " is an activation type, not a weight type");
  return quant::type_info(w.act_type);
}

}  // namespace

void bind_quant(nb::module_ &m) {
  m.def(
      "isa", [] { return std::string(isa_name(current_isa())); },
      "The SIMD level the kernels use: 'scalar', 'avx2' or 'avx512' (NUMOE_ISA forces one; "
      "ValueError if NUMOE_ISA holds an unknown name).");
  m.def(
      "set_isa",
      [](const std::string &name) { return std::string(isa_name(set_isa(parse_isa(name)))); },
      "name"_a,
      "Use SIMD level `name` from now on; returns the previous level. ValueError for an unknown "
      "name or a level this CPU lacks. For tests and benchmarks.");
  m.def(
      "isa_available",
      [] {
        nb::list out;
        for (Isa l : isa_available()) out.append(isa_name(l));
        return out;
      },
      "SIMD levels this CPU supports, lowest first.");
  m.def(
      "isa_features",
      [] {
        const CpuFeatures &f = cpu_features();
        nb::dict d;
        d["avx2"] = f.avx2;
        d["avx512"] = f.avx512;
        d["avx512_vnni"] = f.avx512_vnni;
        d["avx512_bf16"] = f.avx512_bf16;
        return d;
      },
      "CPU features the dispatcher looked at (avx2 = AVX2+FMA+F16C; avx512 = F+DQ+BW+VL).");

  // ---- GGUF block formats ----
  m.def("weight_types", &quant::weight_types,
        "GGML type ids of the weight formats numoe's CPU kernels read (the registry's order).");
  m.def(
      "quant_type_info",
      [](int type) {
        const quant::TypeInfo &t = quant::type_info(type);
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
        const quant::TypeInfo &t = quant::type_info(type);
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
        const quant::TypeInfo &a = act_info(quant::type_info(weight_type));
        const int64_t n = static_cast<int64_t>(x.size());
        const size_t bytes = quant_bytes(a, n);
        const quant::quantize_fn q = quant::get_quantize(a.type);
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
        const quant::TypeInfo &t = quant::type_info(type);
        const quant::TypeInfo &a = act_info(t);
        if (n > INT_MAX) throw std::invalid_argument("n is too large");
        need_bytes(w.size(), quant_bytes(t, n), "weight row", t, n);
        need_bytes(act.size(), quant_bytes(a, n), "activation", a, n);
        const quant::vec_dot_fn f = quant::get_vec_dot(type);
        nb::gil_scoped_release release;
        return f(static_cast<int>(n), w.data(), act.data());
      },
      "type_id"_a, "w"_a.noconvert(), "act"_a.noconvert(), "n"_a,
      "Dot product of one weight row (n elements of `type_id`, raw bytes) with an activation "
      "from quantize_activation.");
  m.attr("VEC_DOT_N_MAX") = quant::kMaxActs;
  m.def(
      "vec_dot_n",
      [](int type, const Bytes &w, const Bytes &act, int64_t n, const std::vector<int64_t> &rows,
         int64_t n_rows) {
        const quant::TypeInfo &t = quant::type_info(type);
        const quant::TypeInfo &a = act_info(t);
        if (n > INT_MAX) throw std::invalid_argument("n is too large");
        if (n_rows < 1 || n_rows > INT_MAX) throw std::invalid_argument("n_rows must be >= 1");
        const int n_act = static_cast<int>(rows.size());
        if (rows.empty() || rows.size() > static_cast<size_t>(quant::kMaxActs))
          throw std::invalid_argument("rows: need 1.." + std::to_string(quant::kMaxActs) +
                                      " activation rows, got " + std::to_string(rows.size()));
        const size_t wrow = quant_bytes(t, n);
        need_bytes(w.size(), wrow * static_cast<size_t>(n_rows), "weights", t, n * n_rows);
        const size_t arow = quant_bytes(a, n);
        const void *ptrs[quant::kMaxActs];
        for (int j = 0; j < n_act; ++j) {
          if (rows[j] < 0 || static_cast<size_t>(rows[j] + 1) * arow > act.size())
            throw std::invalid_argument("activation row " + std::to_string(rows[j]) +
                                        " is not in the " + std::to_string(act.size()) +
                                        " bytes of act (" + std::to_string(arow) + " per row)");
          ptrs[j] = act.data() + static_cast<size_t>(rows[j]) * arow;
        }
        const quant::vec_dot_fn f = quant::get_vec_dot(type);
        const quant::vec_dot_n_fn fn = quant::get_vec_dot_n(type);
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
        const quant::TypeInfo &t = quant::type_info(type);
        const quant::TypeInfo &a = act_info(t);
        if (n > INT_MAX) throw std::invalid_argument("n is too large");
        if (n_rows < 0) throw std::invalid_argument("n_rows must be >= 0");
        const size_t row = quant_bytes(t, n);
        need_bytes(w.size(), row * static_cast<size_t>(n_rows), "weights", t, n * n_rows);
        need_bytes(act.size(), quant_bytes(a, n), "activation", a, n);
        const quant::vec_dot_fn f = quant::get_vec_dot(type);
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
        const int64_t rb = quantize::row_bytes(type, cols);  // checks type and cols
        const size_t n = static_cast<size_t>(rows) * static_cast<size_t>(rb);
        uint8_t *out = new uint8_t[n > 0 ? n : 1];
        nb::capsule owner(out, [](void *p) noexcept { delete[] static_cast<uint8_t *>(p); });
        {
          nb::gil_scoped_release release;
          quantize::quantize_rows(type, x.data(), out, rows, cols, n_threads);
        }
        return nb::ndarray<nb::numpy, uint8_t, nb::ndim<2>>(
            out, {static_cast<size_t>(rows), static_cast<size_t>(rb)}, owner);
      },
      "type_id"_a, "x"_a, "n_threads"_a = 0,
      "Quantize float32 rows x [rows, cols] to GGML type `type_id` (Q4_0, Q8_0, Q2_K, Q3_K, "
      "Q4_K, Q5_K, Q6_K) with ggml's reference algorithms: uint8 [rows, row bytes]. ValueError "
      "when cols "
      "is not a multiple of the block size or the type has no quantizer. Rows are split over "
      "n_threads threads (0: all cores).");
}

}  // namespace numoe::py
