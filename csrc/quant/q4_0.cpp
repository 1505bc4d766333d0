// Q4_0: blocks of 32 4-bit values (offset 8) with one fp16 scale; dot against Q8_0.
#include "quant.hpp"
#include "simd.hpp"

namespace numoe::quant {
namespace {

void dequantize_q4_0(const void *src, float *dst, int64_t n) {
  const block_q4_0 *b = static_cast<const block_q4_0 *>(src);
  for (int64_t i = 0; i < n / QK4_0; ++i, dst += QK4_0) {
    const float d = fp16_to_fp32(b[i].d);
    for (int j = 0; j < QK4_0 / 2; ++j) {
      dst[j] = d * static_cast<float>((b[i].qs[j] & 0xF) - 8);
      dst[j + QK4_0 / 2] = d * static_cast<float>((b[i].qs[j] >> 4) - 8);
    }
  }
}

float vec_dot_q4_0_scalar(int n, const void *w, const void *act) {
  const block_q4_0 *x = static_cast<const block_q4_0 *>(w);
  const block_q8_0 *y = static_cast<const block_q8_0 *>(act);
  float s = 0.f;
  for (int i = 0; i < n / QK4_0; ++i) {
    int32_t sumi = 0;
    for (int j = 0; j < QK4_0 / 2; ++j)
      sumi += ((x[i].qs[j] & 0xF) - 8) * y[i].qs[j] + ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + 16];
    s += static_cast<float>(sumi) * (fp16_to_fp32(x[i].d) * fp16_to_fp32(y[i].d));
  }
  return s;
}

#ifdef NUMOE_X86
using simd::load32;

// The 32 values of a block as signed bytes in element order (low nibbles, then high).
NUMOE_TARGET_AVX2 inline __m256i q4_0_values(const block_q4_0 &x) {
  const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i *>(x.qs));
  const __m256i v =
      _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(0x0F));
  return _mm256_sub_epi8(v, _mm256_set1_epi8(8));
}

constexpr vec_dot_fn vec_dot_q4_0_avx2 = simd::q8_0_act_dot_avx2<block_q4_0, q4_0_values>;
template <int N>
constexpr simd::body_n_fn q4_0_n_avx2 = simd::q8_0_act_n_avx2<block_q4_0, q4_0_values, N>;

NUMOE_VEC_DOT_N(q4_0, avx2, NUMOE_TILE_BODIES)

// Four blocks per step:
//   q    = [qs0 qs1 qs2 qs3] (16 bytes each): low nibbles are elements 0..15 of block k in
//          128-bit lane k, high nibbles elements 16..31 (per-block loads, below);
//   alo  = [a0[0:16] a1[0:16] a2[0:16] a3[0:16]], ahi the same for [16:32]. Every field of
//          Q8_0 sits at an even byte offset (stride 34), so word permutes (vpermt2w,
//          AVX512-BW) gather the activation halves and fp16 scales straight from 64-byte
//          loads (the activation is in L1 for the whole row).
// The offset 8 is taken out as 8 * sum(a) with vpdpbusd on the unsigned nibbles.
// `bytes` limits the activation loads to the row (masked loads read nothing past it).
NUMOE_TARGET_AVX512VNNI inline __mmask64 load_mask(int64_t bytes) {
  return bytes >= 64 ? ~0ULL : bytes <= 0 ? 0 : (1ULL << bytes) - 1;
}

// The weight side of a step: q (128-bit lane k: the 16 qs bytes of block k) and dw (fp16
// scale of block k in float lanes 4k..4k+3; zeros for k >= kb), from the kb <= 4 blocks at
// xw. Each block's fields are loaded where they lie (a 16-byte broadcast of qs into lane k,
// a 2-byte one of d), as q32_simd.hpp's weights512 does: gathering them from overlapping
// 64-byte windows with word permutes took fewer instructions but ran at 6-8 GB/s from L3 or
// DRAM against 25 from L2 (one thread, Zen 5), with or without a software prefetch; the
// per-block loads with prefetch_q4_0 keep pace with Q4_1's.
NUMOE_TARGET_AVX512VNNI inline void q4_0_weights_avx512(const uint8_t *xw, int kb, __m512i &q,
                                                        __m512 &dw) {
  constexpr int xs = sizeof(block_q4_0);
  q = _mm512_setzero_si512();
  __m512i hd = _mm512_setzero_si512();
  for (int k = 0; k < 4 && k < kb; ++k) {
    const uint8_t *b = xw + k * xs;
    q = _mm512_mask_broadcast_i32x4(q, static_cast<__mmask16>(0xF << (4 * k)),
                                    _mm_loadu_si128(reinterpret_cast<const __m128i *>(b + 2)));
    hd = _mm512_mask_broadcastw_epi16(hd, 0xFu << (4 * k), _mm_loadu_si16(b));
  }
  dw = _mm512_cvtph_ps(_mm512_castsi512_si256(hd));
}

// The per-block loads leave the hardware prefetchers idle: each 8-block step asks for the
// 192 bytes (at least a step's 144) kPrefetch ahead, as q32_simd.hpp's prefetch_group512;
// past the row they are the next row's, past the matrix harmless.
constexpr int kPrefetch = 2048;
NUMOE_TARGET_AVX512 inline void prefetch_q4_0(const uint8_t *xw) {
  for (int c = 0; c < 3; ++c)
    _mm_prefetch(reinterpret_cast<const char *>(xw + kPrefetch + 64 * c), _MM_HINT_T0);
}

NUMOE_TARGET_AVX512VNNI inline __m512 q4_0_step_avx512(__m512 acc, const uint8_t *xw,
                                                       const int8_t *ya, int kb, int64_t abytes) {
  // word indices
  const __m512i aidx =
      _mm512_setr_epi32(0x00020001, 0x00040003, 0x00060005, 0x00080007, 0x00130012, 0x00150014,
                        0x00170016, 0x00190018, 0x00240023, 0x00260025, 0x00280027, 0x002A0029,
                        0x00350034, 0x00370036, 0x00390038, 0x003B003A);  // 17k + 1 + m
  const __m512i eidx = _mm512_setr_epi32(0, 0, 0x00110011, 0x00110011, 0x00220022, 0x00220022,
                                         0x00330033, 0x00330033, 0, 0, 0, 0, 0, 0, 0, 0);
  __m512i q;
  __m512 dw;
  q4_0_weights_avx512(xw, kb, q, dw);
  const __m512i l0 = _mm512_maskz_loadu_epi8(load_mask(abytes), ya);
  const __m512i l1 = _mm512_maskz_loadu_epi8(load_mask(abytes - 64), ya + 64);
  const __m512i l2 = _mm512_maskz_loadu_epi8(load_mask(abytes - 16), ya + 16);
  const __m512i l3 = _mm512_maskz_loadu_epi8(load_mask(abytes - 80), ya + 80);
  const __m512i alo = _mm512_permutex2var_epi16(l0, aidx, l1);
  const __m512i ahi = _mm512_permutex2var_epi16(l2, aidx, l3);
  const __m512i m4 = _mm512_set1_epi8(0x0F), eight = _mm512_set1_epi8(8);
  __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(q, m4), alo);
  dot = _mm512_dpbusd_epi32(dot, _mm512_and_si512(_mm512_srli_epi16(q, 4), m4), ahi);
  const __m512i off =
      _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), eight, alo), eight, ahi);
  // fp16 scales of block k in float lanes 4k..4k+3
  const __m512 da =
      _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutex2var_epi16(l0, eidx, l1)));
  return _mm512_fmadd_ps(_mm512_mul_ps(dw, da), _mm512_cvtepi32_ps(_mm512_sub_epi32(dot, off)),
                         acc);
}

NUMOE_TARGET_AVX512VNNI float vec_dot_q4_0_avx512(int n, const void *w, const void *act) {
  const uint8_t *x = static_cast<const uint8_t *>(w);
  const int8_t *y = static_cast<const int8_t *>(act);
  const int nb = n / QK4_0;
  const int64_t xs = sizeof(block_q4_0), ys = sizeof(block_q8_0);
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int i = 0;
  for (; i + 12 <= nb; i += 8) {  // unmasked: the activation loads stay inside the row
    prefetch_q4_0(x + i * xs);
    acc0 = q4_0_step_avx512(acc0, x + i * xs, y + i * ys, 4, 144);
    acc1 = q4_0_step_avx512(acc1, x + (i + 4) * xs, y + (i + 4) * ys, 4, 144);
  }
  for (; i < nb; i += 4) {
    const int k = nb - i < 4 ? nb - i : 4;
    acc0 = q4_0_step_avx512(acc0, x + i * xs, y + i * ys, k, k * ys);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

// N activations at once. Per step the weights are unpacked once into the layout of two
// plain 32-byte activation loads per register (128-bit lanes: elements 0..15 and 16..31 of
// block k, then of block k + 1), as signed q - 8; each activation's int32 lanes are then
// folded to the single body's layout (lane (k, m) = the same 8 products, exact), and its
// scales come from a per-tile table, so every lane gets the single body's FMA: bit-identical.
struct q4_0_w512 {
  __m512i ax[2];     // |q - 8|, blocks (0, 1) and (2, 3)
  __mmask64 neg[2];  // q - 8 < 0
  __m512 dw;         // dx of block k in lanes 4k..4k+3
};

NUMOE_TARGET_AVX512VNNI inline q4_0_w512 q4_0_unpack_avx512(const uint8_t *xw, int kb) {
  __m512i q;
  q4_0_w512 u;
  q4_0_weights_avx512(xw, kb, q, u.dw);
  const __m512i m4 = _mm512_set1_epi8(0x0F), eight = _mm512_set1_epi8(8);
  const __m512i lo = _mm512_sub_epi8(_mm512_and_si512(q, m4), eight);
  const __m512i hi = _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(q, 4), m4), eight);
  for (int h = 0; h < 2; ++h) {  // [lo.2h, hi.2h, lo.2h+1, hi.2h+1]
    const __m512i x =
        _mm512_permutex2var_epi64(lo,
                                  _mm512_setr_epi64(4 * h, 4 * h + 1, 8 + 4 * h, 9 + 4 * h,
                                                    4 * h + 2, 4 * h + 3, 10 + 4 * h, 11 + 4 * h),
                                  hi);
    u.neg[h] = _mm512_movepi8_mask(x);
    u.ax[h] = _mm512_abs_epi8(x);
  }
  return u;
}

// The 32 qs bytes of blocks b and b + 1 of one activation row (zeros for blocks >= k).
NUMOE_TARGET_AVX512VNNI inline __m512i q4_0_act_pair(const block_q8_0 *y, int b, int k) {
  const __m256i lo = b < k ? load32(y[b].qs) : _mm256_setzero_si256();
  const __m256i hi = b + 1 < k ? load32(y[b + 1].qs) : _mm256_setzero_si256();
  return simd::concat(lo, hi);
}

// One step (blocks i..i+k-1, k <= 4) of activation y (scales dy[i..]) into acc.
NUMOE_TARGET_AVX512VNNI inline __m512 q4_0_step_n_avx512(__m512 acc, const q4_0_w512 &u,
                                                         const block_q8_0 *y, const float *dy,
                                                         int k) {
  __m512i e[2];
  for (int h = 0; h < 2; ++h) {
    const __m512i a = q4_0_act_pair(y, 2 * h, k);
    e[h] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u.ax[h],
                               _mm512_mask_sub_epi8(a, u.neg[h], _mm512_setzero_si512(), a));
  }
  // lanes (block, elements 0..15 | 16..31) -> block k: the sum of its two 128-bit lanes
  const __m512i dot = _mm512_add_epi32(_mm512_shuffle_i32x4(e[0], e[1], 0x88),
                                       _mm512_shuffle_i32x4(e[0], e[1], 0xDD));
  const __m512 da = _mm512_permutexvar_ps(
      _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3), _mm512_loadu_ps(dy));
  return _mm512_fmadd_ps(_mm512_mul_ps(u.dw, da), _mm512_cvtepi32_ps(dot), acc);
}

template <int N>
NUMOE_TARGET_AVX512VNNI void q4_0_n_avx512(int n, const void *w, size_t w_stride, int n_rows,
                                           const void *const *act, float *out, size_t out_stride) {
  const block_q8_0 *y[8];
  simd::act_ptrs(act, N, y);
  const int nb = n / QK4_0;
  // dy[j * ds + i]: scale of block i of activation j, zeros up to 16 past nb
  const size_t ds = static_cast<size_t>(nb) + 16;
  float *dy = simd::tile_buffer(ds * N);
  for (int j = 0; j < N; ++j) {
    for (int i = 0; i < nb; ++i) dy[j * ds + i] = simd::fp16(y[j][i].d);
    for (size_t i = nb; i < ds; ++i) dy[j * ds + i] = 0.f;
  }
  const int64_t xs = sizeof(block_q4_0);
  for (int r = 0; r < n_rows; ++r) {
    const uint8_t *x = static_cast<const uint8_t *>(w) + r * w_stride;
    __m512 acc0[N], acc1[N];
    for (int j = 0; j < N; ++j) acc0[j] = acc1[j] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 12 <= nb; i += 8) {  // as vec_dot_q4_0_avx512: unmasked steps, two accumulators
      prefetch_q4_0(x + i * xs);
      const q4_0_w512 u0 = q4_0_unpack_avx512(x + i * xs, 4);
      const q4_0_w512 u1 = q4_0_unpack_avx512(x + (i + 4) * xs, 4);
      for (int j = 0; j < N; ++j) {
        acc0[j] = q4_0_step_n_avx512(acc0[j], u0, y[j] + i, dy + j * ds + i, 4);
        acc1[j] = q4_0_step_n_avx512(acc1[j], u1, y[j] + i + 4, dy + j * ds + i + 4, 4);
      }
    }
    for (; i < nb; i += 4) {
      const int k = nb - i < 4 ? nb - i : 4;
      const q4_0_w512 u = q4_0_unpack_avx512(x + i * xs, k);
      for (int j = 0; j < N; ++j)
        acc0[j] = q4_0_step_n_avx512(acc0[j], u, y[j] + i, dy + j * ds + i, k);
    }
    for (int j = 0; j < N; ++j)
      out[j * out_stride + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[j], acc1[j]));
  }
}

NUMOE_VEC_DOT_N(q4_0, avx512, NUMOE_TILE_BODIES)
#endif

}  // namespace

const TypeInfo &info_q4_0() {
  static const TypeInfo t = {
      Q4_0,
      "Q4_0",
      QK4_0,
      sizeof(block_q4_0),
      Q8_0,
      dequantize_q4_0,
#ifdef NUMOE_X86
      {vec_dot_q4_0_scalar, vec_dot_q4_0_avx2, vec_dot_q4_0_avx512},
#else
      {vec_dot_q4_0_scalar, nullptr, nullptr},
#endif
      true,
      {nullptr, nullptr, nullptr},
#ifdef NUMOE_X86
      {vec_dot_n_loop<vec_dot_q4_0_scalar>, vec_dot_n_q4_0_avx2, vec_dot_n_q4_0_avx512},
#else
      {vec_dot_n_loop<vec_dot_q4_0_scalar>, nullptr, nullptr},
#endif
  };
  return t;
}

}  // namespace numoe::quant
