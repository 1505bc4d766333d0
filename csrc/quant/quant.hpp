// GGUF block formats: layouts (as in ggml-common.h), fp16 helpers and the registry of
// kernels keyed by GGML type id. One source file per format holds its dequantizer and its
// dot product against the quantized activation: a scalar reference body beside the AVX2 and
// AVX-512 bodies, chosen at run time (see isa.hpp).
//
// Activation pairing (ggml's vec_dot_type):
//   Q4_0, Q8_0, Q4_1, Q5_0, Q5_1, IQ4_NL  x  Q8_0 activation (blocks of 32; Q4_1 / Q5_1 sum
//                       the activation block in the kernel instead of ggml's Q8_1)
//   Q4_K, Q5_K          x  Q8_K4 activation (Q8_K in the order of their nibbles, below)
//   Q2_K, Q3_K, Q6_K, IQ4_XS, IQ2_*, IQ3_*, IQ1_*  x  Q8_K activation (blocks of 256: float d,
//                       int8 qs, int16 bsums)
//   F32, F16, BF16      x  F32 activation. BF16 keeps an f32 activation on purpose: decode is
//   bound by weight bandwidth, the bf16->f32 widening is a shift, and rounding the activation
//   to bf16 for vdpbf16ps would cost accuracy for no bandwidth gain.
//
// Prefill: vec_dot_n is a tile of weight rows against up to kMaxActs activation rows, each
// weight block loaded and unpacked once for all the activations (nibble masks, shifts and
// scale decoding are most of a vec_dot's work) and per-activation set-up done once for all
// the rows. Its results equal the same level's vec_dot bit for bit (same integer sums, same
// float operations in the same order per activation), so an op's output does not depend on
// how its tokens are grouped.
//
// Floating-point order: the integer formats sum each block's products exactly in integers
// and then combine per-block floats; the K-quant bodies combine super-blocks in the same
// scalar order on every ISA, so all ISAs give bit-identical results. Q8_0/Q4_0 and the float
// formats accumulate in SIMD lanes, so their ISA paths agree to float rounding only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "isa.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define NUMOE_X86 1
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
// GCC 12's AVX-512 headers trip -Wuninitialized on their own _mm512_undefined_* (GCC bug
// 105593, fixed in 13); silenced for the kernel sources only.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#define NUMOE_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define NUMOE_TARGET_AVX512 \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")))
#define NUMOE_TARGET_AVX512VNNI \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#endif

namespace numoe::quant {

using half = uint16_t;  // IEEE binary16 bits
constexpr int QK4_0 = 32;
constexpr int QK8_0 = 32;
constexpr int QK_K = 256;
constexpr int K_SCALE_SIZE = 12;

struct block_q4_0 {
  half d;
  uint8_t qs[QK4_0 / 2];  // element j in the low nibble of qs[j], j+16 in the high nibble
};
struct block_q8_0 {
  half d;
  int8_t qs[QK8_0];
};
struct block_q4_K {
  half d, dmin;
  uint8_t scales[K_SCALE_SIZE];  // 8 6-bit scales and 8 6-bit mins
  uint8_t qs[QK_K / 2];
};
struct block_q5_K {
  half d, dmin;
  uint8_t scales[K_SCALE_SIZE];
  uint8_t qh[QK_K / 8];
  uint8_t qs[QK_K / 2];
};
struct block_q6_K {
  uint8_t ql[QK_K / 2];
  uint8_t qh[QK_K / 4];
  int8_t scales[QK_K / 16];
  half d;
};
struct block_q8_K {
  float d;
  int8_t qs[QK_K];
  int16_t bsums[QK_K / 16];  // sums of qs in groups of 16
};
static_assert(sizeof(block_q4_0) == 18, "block_q4_0 size");
static_assert(sizeof(block_q8_0) == 34, "block_q8_0 size");
static_assert(sizeof(block_q4_K) == 144, "block_q4_K size");
static_assert(sizeof(block_q5_K) == 176, "block_q5_K size");
static_assert(sizeof(block_q6_K) == 210, "block_q6_K size");
static_assert(sizeof(block_q8_K) == 292, "block_q8_K size");

// GGML type ids.
enum Type : int {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q8_0 = 8,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  BF16 = 30,
  Q8_K4 = 256,  // numoe's own activation type (not a GGML id): Q8_K in Q4_K / Q5_K order
};

// Q8_K4: a block_q8_K laid out for Q4_K / Q5_K weights. A 64-byte load of their qs holds
// sub-blocks 4c and 4c + 2 in its low nibbles and 4c + 1, 4c + 3 in its high nibbles, so
// qs stores the 32-value sub-blocks in the order 0 2 1 3 4 6 5 7 (sub-block j at
// 32 * k4_pos(j)) and a plain 64-byte load of the activation matches each nibble register:
// no cross-lane regrouping per weight block. bsums[8 + j] is the sum of sub-block j and
// bsums[0..7] are 0, so the min term is one madd of the block's 16 scale and min words
// against bsums. d is Q8_K's; only the order differs (quantized once per op call).
constexpr int k4_pos(int j) { return (j & 4) | ((j & 1) << 1) | ((j >> 1) & 1); }

using dequantize_fn = void (*)(const void *src, float *dst, int64_t n);
using vec_dot_fn = float (*)(int n, const void *w_row, const void *act_row);
using quantize_fn = void (*)(const float *src, void *dst, int64_t n);
// out[j * out_stride + r] = vec_dot(n, w + r * w_stride, act[j]) for r < n_rows and
// j < n_act, 1 <= n_act <= kMaxActs.
using vec_dot_n_fn = void (*)(int n, const void *w, size_t w_stride, int n_rows,
                              const void *const *act, int n_act, float *out, size_t out_stride);
constexpr int kMaxActs = 8;

// Kernels per ISA level (index = Isa); nullptr = use the next lower level.
struct TypeInfo {
  int type;
  const char *name;
  int block_size;  // elements per block
  int type_size;   // bytes per block
  int act_type;    // type of the activation vec_dot takes (weights); -1 for activation types
  dequantize_fn dequantize;  // scalar, exact (matches gguf.quants.dequantize)
  vec_dot_fn vec_dot[kIsaCount];
  bool avx512_vec_dot_needs_vnni;
  quantize_fn quantize[kIsaCount];  // activation types: float -> this type
  // Multi-activation vec_dot per level, paired with vec_dot of the same level (not a lower
  // level's: those may round differently); nullptr = loop over vec_dot.
  vec_dot_n_fn vec_dot_n[kIsaCount];
};

// Registry: throws std::invalid_argument naming the type for ids without kernels.
const TypeInfo &type_info(int type);
const char *type_name(int type);  // also for unknown ids ("type 7")
// GGML ids of the weight formats numoe has kernels for, in the registry's order.
std::vector<int> weight_types();
// Kernels for the current ISA (current_isa()).
vec_dot_fn get_vec_dot(int type);
quantize_fn get_quantize(int act_type);
// The vec_dot_n that pairs with get_vec_dot(type) (same level); nullptr when that level has
// none (call get_vec_dot per activation).
vec_dot_n_fn get_vec_dot_n(int type);
// For a given level, ignoring current_isa() (tests/benchmarks).
vec_dot_fn get_vec_dot(int type, Isa level);
vec_dot_n_fn get_vec_dot_n(int type, Isa level);
quantize_fn get_quantize(int act_type, Isa level);

// vec_dot_n as a loop over a vec_dot: the scalar reference bodies.
template <vec_dot_fn F>
void vec_dot_n_loop(int n, const void *w, size_t w_stride, int n_rows, const void *const *act,
                    int n_act, float *out, size_t out_stride) {
  for (int r = 0; r < n_rows; ++r)
    for (int j = 0; j < n_act; ++j)
      out[j * out_stride + r] = F(n, static_cast<const char *>(w) + r * w_stride, act[j]);
}

// Per-format tables, one in each format's source file.
const TypeInfo &info_f32();
const TypeInfo &info_f16();
const TypeInfo &info_bf16();
const TypeInfo &info_q4_0();
const TypeInfo &info_q8_0();
const TypeInfo &info_q4_K();
const TypeInfo &info_q5_K();
const TypeInfo &info_q6_K();
const TypeInfo &info_q8_K();
const TypeInfo &info_q8_K4();
const TypeInfo &info_iq2_xxs();
const TypeInfo &info_iq2_xs();
const TypeInfo &info_iq2_s();
const TypeInfo &info_q2_K();
const TypeInfo &info_q3_K();
const TypeInfo &info_iq4_xs();
const TypeInfo &info_q4_1();
const TypeInfo &info_q5_0();
const TypeInfo &info_q5_1();
const TypeInfo &info_iq4_nl();
const TypeInfo &info_iq3_xxs();
const TypeInfo &info_iq3_s();
const TypeInfo &info_iq1_s();
const TypeInfo &info_iq1_m();

// ---- scalar helpers shared by the formats ----

inline float bits_to_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t f32_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// binary16 -> binary32, exact for every input (subnormals, inf, NaN).
inline float fp16_to_fp32(half h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
  if (exp == 0x1F) return bits_to_f32(sign | 0x7F800000u | (man << 13));  // inf / NaN
  if (exp == 0) {
    if (man == 0) return bits_to_f32(sign);
    // subnormal: man * 2^-24, exact in float
    const float v = static_cast<float>(man) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  return bits_to_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

// binary32 -> binary16, round to nearest even (as numpy's astype(float16) and F16C).
inline half fp32_to_fp16(float f) {
  const uint32_t x = f32_to_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7FFFFFFFu;
  if (ax > 0x7F800000u) return static_cast<half>(sign | 0x7E00u | ((ax >> 13) & 0x3FFu));
  if (ax >= 0x477FF000u) return static_cast<half>(sign | 0x7C00u);  // rounds to inf
  if (ax < 0x38800000u) {  // result subnormal or zero: round ax * 2^24 to an integer
    const uint32_t shift = 126u - (ax >> 23);  // >= 14 for normal inputs below 2^-14
    if (shift > 24) return static_cast<half>(sign);
    const uint32_t man = (ax & 0x7FFFFFu) | 0x800000u;
    uint32_t q = man >> shift;
    const uint32_t rem = man & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (q & 1))) ++q;
    return static_cast<half>(sign | q);
  }
  uint32_t r = ax - 0x38000000u;   // rebias exponent 127 -> 15
  r += 0xFFFu + ((r >> 13) & 1u);  // round to nearest even on the 13 dropped bits
  return static_cast<half>(sign | (r >> 13));
}

inline float bf16_to_fp32(uint16_t h) { return bits_to_f32(static_cast<uint32_t>(h) << 16); }

// Round to nearest, ties to even (ggml's nearest_int, valid for |x| < 2^22).
inline int nearest_int(float x) {
  const float v = x + 12582912.f;
  return static_cast<int>(f32_to_bits(v) & 0x007FFFFFu) - 0x00400000;
}

// The 8 6-bit scales and 8 6-bit mins of a Q4_K / Q5_K block (ggml's get_scale_min_k4).
inline void unpack_scales_mins_k4(const uint8_t *q, uint8_t sc[8], uint8_t m[8]) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = q[j] & 63;
    m[j] = q[j + 4] & 63;
    sc[j + 4] = (q[j + 8] & 0xF) | ((q[j] >> 6) << 4);
    m[j + 4] = (q[j + 8] >> 4) | ((q[j + 4] >> 6) << 4);
  }
}

// Final per-super-block combine for Q4_K / Q5_K, shared by every ISA body so that their
// results are bit-identical: d*dy*sum(sc*q*q8) - dmin*dy*sum(m*bsums).
inline float k4_block_sum(half d, half dmin, float dy, int32_t isum, int32_t msum) {
  return fp16_to_fp32(d) * dy * static_cast<float>(isum) -
         fp16_to_fp32(dmin) * dy * static_cast<float>(msum);
}

// sum_j m[j] * (sum of sub-block j of a Q8_K4 activation y): the min correction of Q4_K /
// Q5_K.
inline int32_t k4_min_sum(const uint8_t m[8], const block_q8_K &y) {
  int32_t s = 0;
  for (int j = 0; j < 8; ++j) s += m[j] * y.bsums[8 + j];
  return s;
}

}  // namespace numoe::quant
