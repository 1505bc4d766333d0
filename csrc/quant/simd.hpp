// Small x86 SIMD helpers shared by the format files (function-level targets, no global
// flags). Included only where NUMOE_X86 is defined.
#pragma once

#include <algorithm>
#include <vector>

#include "quant.hpp"

#ifdef NUMOE_X86
namespace numoe::quant::simd {

NUMOE_TARGET_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

NUMOE_TARGET_AVX2 inline int32_t hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

NUMOE_TARGET_AVX2 inline int32_t hsum_i32(__m128i s) {
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

NUMOE_TARGET_AVX2 inline float fp16(half h) { return _cvtsh_ss(h); }

// Signed int8 x int8 dot of 32 bytes into 8 int32 lanes (|x|, |y| <= 127, or x = -128 with
// |y| <= 127): maddubs needs an unsigned operand, so move x's sign onto y.
NUMOE_TARGET_AVX2 inline __m256i dot_i8(__m256i x, __m256i y) {
  const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
  return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

NUMOE_TARGET_AVX512VNNI inline __m256i dot_i8_vnni(__m256i x, __m256i y) {
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(x, x),
                             _mm256_sign_epi8(y, x));
}

// The same on 64 bytes: zmm has no sign_epi8, so negate y under x's sign mask.
NUMOE_TARGET_AVX512VNNI inline __m512i dot_i8_vnni(__m512i x, __m512i y) {
  const __mmask64 neg = _mm512_movepi8_mask(x);
  const __m512i ys = _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y);
  return _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(x), ys);
}

NUMOE_TARGET_AVX512 inline __m512i concat(__m256i lo, __m256i hi) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

NUMOE_TARGET_AVX512 inline __m512 concat(__m256 lo, __m256 hi) {
  return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
}

// The 8 6-bit scales (bytes 0..7) and 8 6-bit mins (bytes 8..15) of a Q4_K / Q5_K block,
// as unpack_scales_mins_k4 but in registers. Reads 16 bytes from q (the 12 scale bytes and 4
// bytes of what follows them in the block). With x0, x1, x2 the three packed uint32 words:
//   sc0-3 = x0 & 0x3f..  sc4-7 = (x2 & 0x0f..) | (x0 >> 2 & 0x30..)
//   m0-3  = x1 & 0x3f..  m4-7  = (x2 >> 4 & 0x0f..) | (x1 >> 2 & 0x30..)
NUMOE_TARGET_AVX2 inline __m128i k4_scales_mins(const uint8_t *q) {
  const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i *>(q));
  const __m128i lo =
      _mm_and_si128(_mm_srlv_epi32(_mm_shuffle_epi32(x, 0x98), _mm_setr_epi32(0, 0, 0, 4)),
                    _mm_setr_epi32(0x3F3F3F3F, 0x0F0F0F0F, 0x3F3F3F3F, 0x0F0F0F0F));
  const __m128i hi = _mm_and_si128(_mm_srli_epi32(_mm_shuffle_epi32(x, 0x40), 2),
                                   _mm_setr_epi32(0, 0x30303030, 0, 0x30303030));
  return _mm_or_si128(lo, hi);
}

// sum_j m[j] * (bsums[2j] + bsums[2j+1]) as 4 int32 partial sums; sm from k4_scales_mins.
NUMOE_TARGET_AVX2 inline __m128i k4_min_terms(__m128i sm, const int16_t *bsums) {
  const __m128i b = _mm_hadd_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i *>(bsums)),
                                   _mm_loadu_si128(reinterpret_cast<const __m128i *>(bsums + 8)));
  return _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_unpackhi_epi64(sm, sm)), b);
}

// Horizontal sums of four int32 vectors: lane k = sum of v[k].
NUMOE_TARGET_AVX2 inline __m128i hsum4_i32(__m256i v0, __m256i v1, __m256i v2, __m256i v3) {
  const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}
NUMOE_TARGET_AVX2 inline __m128i hsum4_i32(__m128i v0, __m128i v1, __m128i v2, __m128i v3) {
  return _mm_hadd_epi32(_mm_hadd_epi32(v0, v1), _mm_hadd_epi32(v2, v3));
}

// s += k4_block_sum(...) for four consecutive Q4_K / Q5_K super-blocks x[0..3] (d, dmin in
// their first 4 bytes, block stride `stride` bytes) against y[0..3], in the scalar order:
// lane k of isum / msum is block k's exact integer sum. Bit-identical to the scalar combine
// (products rounded as ((d * dy) * isum) - ((dmin * dy) * msum), no FMA).
NUMOE_TARGET_AVX2 inline float k4_combine4(float s, const uint8_t *x, size_t stride,
                                           const block_q8_K *y, __m128i isum, __m128i msum) {
  int32_t h[4];
  for (int k = 0; k < 4; ++k) std::memcpy(&h[k], x + k * stride, 4);
  // [d0 dmin0 d1 dmin1 ...] -> [d0 d1 d2 d3 dmin0 .. dmin3]
  const __m128i hv =
      _mm_shuffle_epi8(_mm_setr_epi32(h[0], h[1], h[2], h[3]),
                       _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15));
  const __m256 dd = _mm256_cvtph_ps(hv);
  const __m128 dy = _mm_setr_ps(y[0].d, y[1].d, y[2].d, y[3].d);
  const __m128 t =
      _mm_sub_ps(_mm_mul_ps(_mm_mul_ps(_mm256_castps256_ps128(dd), dy), _mm_cvtepi32_ps(isum)),
                 _mm_mul_ps(_mm_mul_ps(_mm256_extractf128_ps(dd, 1), dy), _mm_cvtepi32_ps(msum)));
  alignas(16) float tf[4];
  _mm_store_ps(tf, t);
  s += tf[0];
  s += tf[1];
  s += tf[2];
  s += tf[3];
  return s;
}

// ---- multi-activation bodies (vec_dot_n) ----
// A format's vec_dot_n runs the activations in chunks of at most m through bodies[k], the
// body for k activations; a body takes all the rows.
using body_n_fn = void (*)(int n, const void *w, size_t w_stride, int n_rows,
                           const void *const *act, float *out, size_t out_stride);

inline void run_n(const body_n_fn *bodies, int m, int n, const void *w, size_t w_stride, int n_rows,
                  const void *const *act, int n_act, float *out, size_t out_stride) {
  for (int j = 0; j < n_act; j += m)
    bodies[std::min(m, n_act - j)](n, w, w_stride, n_rows, act + j, out + j * out_stride,
                                   out_stride);
}

// The activation pointers of a body for N activations, padded to M with act[0] (the extra
// lanes compute garbage that is never stored).
template <typename B, int M>
inline void act_ptrs(const void *const *act, int N, const B *(&y)[M]) {
  for (int j = 0; j < M; ++j) y[j] = static_cast<const B *>(act[j < N ? j : 0]);
}

// A per-thread buffer of at least n floats, 64-byte aligned (grows, never shrinks): the
// per-tile tables of activation scales.
inline float *tile_buffer(size_t n) {
  static thread_local std::vector<float> buf;
  if (buf.size() < n + 16) buf.resize(n + 16);
  return buf.data() + ((0 - reinterpret_cast<uintptr_t>(buf.data())) & 63) / sizeof(float);
}

// The body for one activation: the level's vec_dot per row.
template <vec_dot_fn F>
void one(int n, const void *w, size_t w_stride, int n_rows, const void *const *act, float *out,
         size_t) {
  for (int r = 0; r < n_rows; ++r)
    out[r] = F(n, static_cast<const char *>(w) + r * w_stride, act[0]);
}

// The bodies table (index = activation count) of a format with a one-row body template F<N>
// for 2..8 activations and the level's vec_dot `single` for one.
#define NUMOE_ROW_BODIES(single, F) \
  {nullptr,                         \
   simd::one<single>,               \
   simd::rows<F<2>, 2>,             \
   simd::rows<F<3>, 3>,             \
   simd::rows<F<4>, 4>,             \
   simd::rows<F<5>, 5>,             \
   simd::rows<F<6>, 6>,             \
   simd::rows<F<7>, 7>,             \
   simd::rows<F<8>, 8>}

// An empty asm the compiler cannot see through: keeps a running sum a running sum (GCC
// otherwise re-associates the adds of a multi-activation body into trees of live products,
// which spill).
template <typename V>
inline void opaque(V &v) {
  asm("" : "+x"(v));
}

// Lane j = sum of the int32 lanes of v[j] (transpose-reduce).
NUMOE_TARGET_AVX2 inline __m128i hsum4_i32(const __m256i v[4]) {
  return hsum4_i32(v[0], v[1], v[2], v[3]);
}
NUMOE_TARGET_AVX2 inline __m256i hsum8_i32(const __m256i v[8]) {
  const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
  const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
  // a: 128-bit lane h holds half h of v[0..3]; b the same for v[4..7]
  return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20),
                          _mm256_permute2x128_si256(a, b, 0x31));
}
NUMOE_TARGET_AVX512 inline __m256i hsum8_i32(const __m512i v[8]) {
  __m512i t[4], u[2];
  for (int k = 0; k < 4; ++k)  // per 128-bit lane: [v2k.a v2k+1.a v2k.b v2k+1.b]
    t[k] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * k], v[2 * k + 1]),
                            _mm512_unpackhi_epi32(v[2 * k], v[2 * k + 1]));
  for (int k = 0; k < 2; ++k)  // per 128-bit lane: [v4k v4k+1 v4k+2 v4k+3]
    u[k] = _mm512_add_epi32(_mm512_unpacklo_epi64(t[2 * k], t[2 * k + 1]),
                            _mm512_unpackhi_epi64(t[2 * k], t[2 * k + 1]));
  // 128-bit lanes [u0.0+u0.1, u0.2+u0.3, u1.0+u1.1, u1.2+u1.3], then fold the pairs
  const __m512i w = _mm512_add_epi32(_mm512_shuffle_i64x2(u[0], u[1], 0x88),
                                     _mm512_shuffle_i64x2(u[0], u[1], 0xDD));
  const __m512i f = _mm512_add_epi32(w, _mm512_shuffle_i64x2(w, w, 0xB1));
  return _mm512_castsi512_si256(_mm512_shuffle_i64x2(f, f, 0x08));
}

// Lane j: the scale of block i of Q8_K activation y[j] (plain loads: gathers are slow on
// CPUs with the GDS microcode mitigation).
NUMOE_TARGET_AVX2 inline __m256 q8_K_d8(const block_q8_K *const *y, int i) {
  return _mm256_setr_ps(y[0][i].d, y[1][i].d, y[2][i].d, y[3][i].d, y[4][i].d, y[5][i].d, y[6][i].d,
                        y[7][i].d);
}

// The 8 mins of k4_scales_mins as 16 int16, each twice (m[g / 2]): sum_g m16[g] * bsums[g]
// is the min term of a Q4_K / Q5_K super-block (one madd against the bsums).
NUMOE_TARGET_AVX2 inline __m256i k4_min_pairs(__m128i sm) {
  return _mm256_cvtepu8_epi16(_mm_shuffle_epi8(
      sm, _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15)));
}

// s += k4_block_sum(d, dmin, dy[j], isum[j], msum[j]) in lane j: the scalar combine of one
// Q4_K / Q5_K super-block for 8 activations, bit-identical per lane (no FMA).
NUMOE_TARGET_AVX2 inline __m256 k4_combine8(__m256 s, half d, half dmin, __m256 dy, __m256i isum,
                                            __m256i msum) {
  const __m256 vd = _mm256_set1_ps(fp16(d)), vm = _mm256_set1_ps(fp16(dmin));
  return _mm256_add_ps(
      s, _mm256_sub_ps(_mm256_mul_ps(_mm256_mul_ps(vd, dy), _mm256_cvtepi32_ps(isum)),
                       _mm256_mul_ps(_mm256_mul_ps(vm, dy), _mm256_cvtepi32_ps(msum))));
}

// out[j] = lane j of s, j < N.
NUMOE_TARGET_AVX2 inline void store_n(__m256 s, int N, float *out) {
  alignas(32) float r[8];
  _mm256_store_ps(r, s);
  for (int j = 0; j < N; ++j) out[j] = r[j];
}

// dy[8 * i + j] = the scale of block i of Q8_K activation y[j], i < nb: gathered once per
// tile for all its rows (per thread, reused).
NUMOE_TARGET_AVX2 inline const float *q8_K_scales(const block_q8_K *const *y, int nb) {
  float *d = tile_buffer(static_cast<size_t>(nb) * 8);
  for (int i = 0; i < nb; ++i) _mm256_store_ps(d + 8 * i, q8_K_d8(y, i));
  return d;
}

// A tile body for N Q8_K activations from a one-row body Row (out[j] = activation j's
// result), the activations' block scales gathered once for all the rows.
using q8_K_row_fn = void (*)(int n, const void *w, const block_q8_K *const *y, const float *dy,
                             float *out);
template <q8_K_row_fn Row, int N>
void rows(int n, const void *w, size_t w_stride, int n_rows, const void *const *act, float *out,
          size_t out_stride) {
  const block_q8_K *y[8];
  act_ptrs(act, N, y);
  const float *dy = q8_K_scales(y, n / QK_K);
  float o[8];
  for (int r = 0; r < n_rows; ++r) {
    Row(n, static_cast<const char *>(w) + r * w_stride, y, dy, o);
    for (int j = 0; j < N; ++j) out[j * out_stride + r] = o[j];
  }
}

// Lane j: the scale of block i of Q8_0 activation y[j].
NUMOE_TARGET_AVX2 inline __m256 q8_0_d8(const block_q8_0 *const *y, int i) {
  return _mm256_cvtph_ps(
      _mm_setr_epi16(static_cast<int16_t>(y[0][i].d), static_cast<int16_t>(y[1][i].d),
                     static_cast<int16_t>(y[2][i].d), static_cast<int16_t>(y[3][i].d),
                     static_cast<int16_t>(y[4][i].d), static_cast<int16_t>(y[5][i].d),
                     static_cast<int16_t>(y[6][i].d), static_cast<int16_t>(y[7][i].d)));
}

// dy[8 * i + j] = the scale of block i of Q8_0 activation y[j] as float, i < nb: converted
// once per tile for all its rows (per thread, reused).
NUMOE_TARGET_AVX2 inline const float *q8_0_scales(const block_q8_0 *const *y, int nb) {
  float *d = tile_buffer(static_cast<size_t>(nb) * 8);
  for (int i = 0; i < nb; ++i) _mm256_store_ps(d + 8 * i, q8_0_d8(y, i));
  return d;
}

}  // namespace numoe::quant::simd
#endif
