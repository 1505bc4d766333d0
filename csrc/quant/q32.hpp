// The 32-element block formats beside Q4_0 / Q8_0: Q4_1, Q5_0, Q5_1, IQ4_NL. Layouts as in
// ggml-common.h, the IQ4_NL value table, and the scalar reference shared by the four.
//
// Every block holds 32 values, element j (< 16) in the low nibble of qs[j] and element
// j + 16 in its high nibble; Q5_0 / Q5_1 add bit 4 of element j as bit j of the 32-bit qh.
//   Q4_1    x = d * q + m        q in 0..15
//   Q5_0    x = d * (q - 16)     q in 0..31
//   Q5_1    x = d * q + m        q in 0..31
//   IQ4_NL  x = d * kvalues_iq4nl[q]
//
// Activation: Q8_0 for all four (ggml pairs Q5_0 / IQ4_NL with Q8_0 and Q4_1 / Q5_1 with
// Q8_1, whose s field is fp16(d * sum(qs))). numoe gives Q4_1 / Q5_1 the Q8_0 activation
// too and sums the activation block's qs in the kernel: the min term is then exact in
// integers (Q8_1's s is rounded to fp16), every 32-element weight type shares the one
// activation type (forward_many quantizes x once per type), and the sum costs one more
// integer dot per block in the single-activation bodies (the multi-activation bodies take it
// from a per-tile table).
//
// The float order, the same in every body (scalar, AVX2, AVX-512; vec_dot and vec_dot_n):
// per block i, the integer sums isum = sum_j v_j * y_j (v the block's integer values: q for
// Q4_1 / Q5_1, q - 16 for Q5_0, kvalues_iq4nl[q] for IQ4_NL) and, for Q4_1 / Q5_1,
// ysum = sum_j y_j are exact; the block's term is
//   t = float(isum) * (d * dy)                         (Q5_0, IQ4_NL)
//   t = float(isum) * (d * dy) + float(ysum) * (m * dy) (Q4_1, Q5_1)
// (no FMA), added to running sum i % 8 of eight (q32_sum), and the eight are added as
// ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7)): simd::hsum of a ymm of them. So the SIMD
// bodies keep one ymm of sums, eight blocks a step, and all the bodies agree bit for bit.
#pragma once

#include "iq4_values.hpp"
#include "quant.hpp"

namespace numoe::quant {

// GGML type ids of this group (numoe's Type enum lists the older formats).
enum Q32Type : int { Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, IQ4_NL = 20 };

constexpr int QK32 = 32;

struct block_q4_1 {
  half d, m;
  uint8_t qs[QK32 / 2];
};
struct block_q5_0 {
  half d;
  uint8_t qh[4];  // bit j: bit 4 of element j (little-endian uint32)
  uint8_t qs[QK32 / 2];
};
struct block_q5_1 {
  half d, m;
  uint8_t qh[4];
  uint8_t qs[QK32 / 2];
};
struct block_iq4_nl {
  half d;
  uint8_t qs[QK32 / 2];
};
static_assert(sizeof(block_q4_1) == 20, "block_q4_1 size");
static_assert(sizeof(block_q5_0) == 22, "block_q5_0 size");
static_assert(sizeof(block_q5_1) == 24, "block_q5_1 size");
static_assert(sizeof(block_iq4_nl) == 18, "block_iq4_nl size");

// Format traits (one struct per format file):
//   block            the block struct (d first, qs last)
//   kType, kName     GGML id and name
//   kMin             x = d * q + m (Q4_1, Q5_1); else x = d * v, v signed
//   kHigh            has qh (the fifth bit)
//   kTable           v = kvalues_iq4nl[q] (IQ4_NL); else v = q - kOff
//   kOff             16 for Q5_0, 0 otherwise
//   min(b)           m (kMin only)

// The 4- or 5-bit index q of element j of block b.
template <typename F>
inline int q32_index(const typename F::block &b, int j) {
  const int nib = j < 16 ? b.qs[j] & 0xF : b.qs[j - 16] >> 4;
  if constexpr (F::kHigh) {
    uint32_t qh;
    std::memcpy(&qh, b.qh, 4);
    return nib | static_cast<int>(((qh >> j) & 1u) << 4);
  } else {
    return nib;
  }
}

// The integer value the kernels multiply with the activation: q (kMin) or v.
template <typename F>
inline int q32_value(const typename F::block &b, int j) {
  const int q = q32_index<F>(b, j);
  if constexpr (F::kTable) return kvalues_iq4nl[q];
  return q - F::kOff;
}

// Scalar dequantize, rounding as gguf.quants: d * q + m, or d * v.
template <typename F>
void q32_dequantize(const void *src, float *dst, int64_t n) {
  const typename F::block *b = static_cast<const typename F::block *>(src);
  for (int64_t i = 0; i < n / QK32; ++i, dst += QK32) {
    const float d = fp16_to_fp32(b[i].d);
    if constexpr (F::kMin) {
      const float m = fp16_to_fp32(F::min(b[i]));
      for (int j = 0; j < QK32; ++j) dst[j] = static_cast<float>(q32_value<F>(b[i], j)) * d + m;
    } else {
      for (int j = 0; j < QK32; ++j) dst[j] = d * static_cast<float>(q32_value<F>(b[i], j));
    }
  }
}

// The term of one block (module comment). Every body calls these or does the same float
// operations on vectors.
inline float q32_term(int32_t isum, float d, float dy) {
  return static_cast<float>(isum) * (d * dy);
}
inline float q32_term(int32_t isum, int32_t ysum, float d, float m, float dy) {
  return static_cast<float>(isum) * (d * dy) + static_cast<float>(ysum) * (m * dy);
}

// The eight running sums of the float order and their final tree.
struct q32_sum {
  float s[8] = {};
  void add(int i, float t) { s[i & 7] += t; }
  float total() const { return ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7])); }
};

template <typename F>
float q32_vec_dot_scalar(int n, const void *w, const void *act) {
  const typename F::block *x = static_cast<const typename F::block *>(w);
  const block_q8_0 *y = static_cast<const block_q8_0 *>(act);
  q32_sum s;
  for (int i = 0; i < n / QK32; ++i) {
    int32_t isum = 0, ysum = 0;
    for (int j = 0; j < QK32; ++j) {
      isum += q32_value<F>(x[i], j) * y[i].qs[j];
      ysum += y[i].qs[j];
    }
    const float d = fp16_to_fp32(x[i].d), dy = fp16_to_fp32(y[i].d);
    if constexpr (F::kMin)
      s.add(i, q32_term(isum, ysum, d, fp16_to_fp32(F::min(x[i])), dy));
    else
      s.add(i, q32_term(isum, d, dy));
  }
  return s.total();
}

// The TypeInfo of format F with its kernels per level (nullptr: none at that level).
template <typename F>
TypeInfo q32_type_info(const vec_dot_fn (&dot)[kIsaCount], const vec_dot_n_fn (&dot_n)[kIsaCount]) {
  return {F::kType,
          F::kName,
          QK32,
          sizeof(typename F::block),
          Q8_0,
          q32_dequantize<F>,
          {dot[0], dot[1], dot[2]},
          true,
          {nullptr, nullptr, nullptr},
          {dot_n[0], dot_n[1], dot_n[2]}};
}

}  // namespace numoe::quant
