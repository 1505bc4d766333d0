// What the binding files of numoe._cpu share: the array types they take, the arrays they
// return, the Python-side Linear and MoE objects (DecodeBlock takes them as arguments) and
// one bind_* function per file, called by module.cpp.
//
// Every size is checked before any memory is touched. Arrays are taken as they are
// (noconvert): a wrong dtype or a strided array is a TypeError, never a silent value cast.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "attention.hpp"
#include "linear.hpp"
#include "moe.hpp"

namespace numoe::py {

namespace nb = nanobind;

using Bytes = nb::ndarray<const uint8_t, nb::c_contig, nb::device::cpu>;
using Floats = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;
using MutFloats = nb::ndarray<float, nb::c_contig, nb::device::cpu>;
using AnyArray = nb::ndarray<nb::c_contig, nb::device::cpu>;
using MutArray = nb::ndarray<nb::c_contig, nb::device::cpu>;  // writable, dtype checked after
using Floats2 = nb::ndarray<nb::numpy, float, nb::ndim<2>>;

// A new numpy array of n elements (owned by the array); *data points at them.
template <typename T>
nb::ndarray<nb::numpy, T, nb::ndim<1>> new_array(size_t n, T **data) {
  T *p = new T[n > 0 ? n : 1];
  nb::capsule owner(p, [](void *q) noexcept { delete[] static_cast<T *>(q); });
  *data = p;
  return nb::ndarray<nb::numpy, T, nb::ndim<1>>(p, {n}, owner);
}

// A new float32 numpy array [rows, cols]; *data points at it.
inline Floats2 new_floats2(size_t rows, size_t cols, float **data) {
  const size_t n = rows * cols;
  float *p = new float[n > 0 ? n : 1];
  nb::capsule owner(p, [](void *q) noexcept { delete[] static_cast<float *>(q); });
  *data = p;
  return Floats2(p, {rows, cols}, owner);
}

// A KV cache array's element type: float32 or float16 (ops::KvType), else a TypeError naming
// `what` and the dtype it has.
inline ops::KvType kv_type(const MutArray &a, const std::string &what) {
  const nb::dlpack::dtype f16{static_cast<uint8_t>(nb::dlpack::dtype_code::Float), 16, 1};
  if (a.dtype() == nb::dtype<float>()) return ops::KvType::f32;
  if (a.dtype() == f16) return ops::KvType::f16;
  const auto d = a.dtype();
  throw nb::type_error((what + " must be a float32 or float16 array, got dtype code " +
                        std::to_string(d.code) + " of " + std::to_string(d.bits) + " bits")
                           .c_str());
}

// An expert gating function by name -> ops::route's gating (0 softmax, 1 sigmoid).
inline int gating_id(const std::string &gating) {
  if (gating != "softmax" && gating != "sigmoid")
    throw std::invalid_argument("unknown expert gating function '" + gating + "'");
  return gating == "sigmoid";
}

// numoe._cpu.Linear: the linear op over a GGUF tensor's bytes; holds the byte array so the
// memmap stays alive.
struct PyLinear {
  Bytes data;
  LinearOp op;
  PyLinear(Bytes d, int type, int64_t n_out, int64_t n_in, int64_t groups);
  PyLinear(const PyLinear &) = delete;
  PyLinear &operator=(const PyLinear &) = delete;
};

// numoe._cpu.MoE: the fused MoE op, from one slice (the tensors' bytes) or from slices of
// its own buffers; keeps what it reads alive.
struct PyMoE {
  std::vector<Bytes> keep;
  std::vector<nb::object> keep_obj;  // slice buffers (Python objects: freed in order at exit)
  MoEOp op;
  PyMoE(const std::vector<Bytes> &gate, const std::vector<Bytes> &up,
        const std::vector<Bytes> &down, int gt, int ut, int dt, int64_t E, int64_t F, int64_t D);
  // (buffer, gate/up/down byte offsets per expert, f0, n_ff, down_stride, group) per slice.
  using Slice = std::tuple<nb::object, std::vector<int64_t>, std::vector<int64_t>,
                           std::vector<int64_t>, int64_t, int64_t, int64_t, int>;
  PyMoE(const std::vector<Slice> &sl, int gt, int ut, int dt, int64_t E, int64_t F, int64_t D);
};

void bind_quant(nb::module_ &m);   // ISA dispatch, block formats, quantizers (quant.cpp)
void bind_pool(nb::module_ &m);    // the thread pool (pool.cpp)
void bind_linear(nb::module_ &m);  // Linear, MoE (linear.cpp)
void bind_ops(nb::module_ &m);     // norms, rope, routing, attention (ops.cpp)
void bind_decode(nb::module_ &m);  // DecodeBlock (decode.cpp)
void bind_memory(nb::module_ &m);  // topology, node memory, read bandwidth (memory.cpp)

}  // namespace numoe::py
