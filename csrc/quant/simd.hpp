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

NUMOE_TARGET_AVX2 inline float fp16(half h) { return _cvtsh_ss(h); }

NUMOE_TARGET_AVX512 inline __m512i concat(__m256i lo, __m256i hi) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
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

// Horizontal sums of four int32 vectors: lane k = sum of v[k].
NUMOE_TARGET_AVX2 inline __m128i hsum4_i32(__m256i v0, __m256i v1, __m256i v2, __m256i v3) {
  const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
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

// void vec_dot_n_<fmt>_<isa>(...): the activations in chunks of at most 8 through the bodies
// table BODIES(vec_dot_<fmt>_<isa>, <fmt>_n_<isa>) (NUMOE_ROW_BODIES or NUMOE_TILE_BODIES).
#define NUMOE_VEC_DOT_N(fmt, isa, BODIES)                                                          \
  void vec_dot_n_##fmt##_##isa(int n, const void *w, size_t w_stride, int n_rows,                  \
                               const void *const *act, int n_act, float *out, size_t out_stride) { \
    static constexpr simd::body_n_fn bodies[] = BODIES(vec_dot_##fmt##_##isa, fmt##_n_##isa);      \
    simd::run_n(bodies, 8, n, w, w_stride, n_rows, act, n_act, out, out_stride);                   \
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

// The same for a format whose bodies F<N> (2..8 activations) take the whole tile.
#define NUMOE_TILE_BODIES(single, F) \
  {nullptr, simd::one<single>, F<2>, F<3>, F<4>, F<5>, F<6>, F<7>, F<8>}

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
// The same for four zmm vectors.
NUMOE_TARGET_AVX512 inline __m128i hsum4_i32(const __m512i v[4]) {
  // per 128-bit lane: [v0.a v1.a v0.b v1.b], [v2.a v3.a v2.b v3.b]
  const __m512i t0 =
      _mm512_add_epi32(_mm512_unpacklo_epi32(v[0], v[1]), _mm512_unpackhi_epi32(v[0], v[1]));
  const __m512i t1 =
      _mm512_add_epi32(_mm512_unpacklo_epi32(v[2], v[3]), _mm512_unpackhi_epi32(v[2], v[3]));
  // per 128-bit lane: [v0 v1 v2 v3], then fold the four lanes
  const __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
  const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
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

// ---- the K-quant vec_dot (Q4_K, Q5_K, Q6_K): super-blocks four at a time ----
// k_vec_dot_<SUF>, one per level (TARGET its function attribute), over a kernel K:
// K::block the weight block; K::four(s, x, y, i) adds super-blocks i..i+3 of x against
// those of y to s (their exact int32 sums reduced together, then combined one by one in the
// scalar order); K::one(x, y) the term of one super-block (the tail). So every level adds
// the scalar body's float terms in its order: the results are bit-identical.
#define NUMOE_K_VEC_DOT(SUF, TARGET)                                        \
  template <typename K>                                                     \
  TARGET float k_vec_dot_##SUF(int n, const void *w, const void *act) {     \
    const typename K::block *x = static_cast<const typename K::block *>(w); \
    const block_q8_K *y = static_cast<const block_q8_K *>(act);             \
    const int nb = n / QK_K;                                                \
    float s = 0.f;                                                          \
    int i = 0;                                                              \
    for (; i + 4 <= nb; i += 4) s = K::four(s, x, y, i);                    \
    for (; i < nb; ++i) s += K::one(x[i], y[i]);                            \
    return s;                                                               \
  }

NUMOE_K_VEC_DOT(avx2, NUMOE_TARGET_AVX2)
NUMOE_K_VEC_DOT(avx512, NUMOE_TARGET_AVX512VNNI)
#undef NUMOE_K_VEC_DOT

// How a kernel declares K::four and K::one: static, always inlined into k_vec_dot (they are
// its loop bodies).
#define NUMOE_K_STEP(TARGET) TARGET __attribute__((always_inline)) static inline

// ---- Q4_K / Q5_K bodies, from a format's unpacking, against Q8_K4 activations ----
// Per super-block, isum = sum_j sc[j] * (q . a over sub-block j) and the min term msum are
// formed as exact int32 lanes; four super-blocks are reduced together and combined in the
// scalar order (k4_combine4), so every ISA gives the scalar result bit for bit. The
// multi-activation bodies unpack each super-block once, form every activation's isum / msum
// as the single body does, reduce across activations (lane j = activation j) and combine per
// lane in the scalar order (k4_combine8): each lane equals the single body's result.
//
// AVX2 unpacker U: U::block the block type; U u(x) per super-block, then u.next(c, lo, hi)
// for c = 0..3 gives the unsigned values of sub-blocks 2c (lo) and 2c + 1 (hi).
// AVX-512 unpacker U: U::block the block type; U::unpack(x, w16, q, sc) gives q[k], the
// unsigned values that a 64-byte load of the Q8_K4 activation at 64k pairs with (sub-blocks
// 4c, 4c+2 for k = 2c; 4c+1, 4c+3 for k = 2c+1), and sc[k], their int16 scale words
// (k4_scale_words); w16 from k4_words. No cross-lane shuffle of the values: the activation
// is in their order.

// int16 word k of a 128-bit lane, repeated (pshufb index).
constexpr int16_t word_idx(int k) { return static_cast<int16_t>(((2 * k + 1) << 8) | (2 * k)); }

// The 16 int16 words [sc0..sc7, m0..m7] of a Q4_K / Q5_K block from its 12 scale bytes.
NUMOE_TARGET_AVX2 inline __m256i k4_words(const uint8_t *scales) {
  return _mm256_cvtepu8_epi16(k4_scales_mins(scales));
}

// sum_j m[j] * (sum of sub-block j of y) as 8 int32 partial sums (lanes 0..3 are 0: y's
// bsums[0..7] are 0 against the scale words).
NUMOE_TARGET_AVX2 inline __m256i k4_min_terms(__m256i w16, const block_q8_K &y) {
  return _mm256_madd_epi16(w16, _mm256_loadu_si256(reinterpret_cast<const __m256i *>(y.bsums)));
}

template <typename U>
NUMOE_TARGET_AVX2 inline void k4_block_avx2(const typename U::block &x, const block_q8_K &y,
                                            __m256i &isum, __m256i &msum) {
  const __m256i w16 = k4_words(x.scales);
  msum = k4_min_terms(w16, y);
  const __m256i sc = _mm256_permute2x128_si256(w16, w16, 0x00);  // the scales, both lanes
  U u(x);
  __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
  for (int j = 0; j < 4; ++j) {
    __m256i lo, hi;
    u.next(j, lo, hi);
    const __m256i p0 = _mm256_maddubs_epi16(
        lo, _mm256_loadu_si256(reinterpret_cast<const __m256i *>(y.qs + 32 * k4_pos(2 * j))));
    const __m256i p1 = _mm256_maddubs_epi16(
        hi, _mm256_loadu_si256(reinterpret_cast<const __m256i *>(y.qs + 32 * k4_pos(2 * j + 1))));
    acc0 = _mm256_add_epi32(
        acc0, _mm256_madd_epi16(p0, _mm256_shuffle_epi8(sc, _mm256_set1_epi16(word_idx(2 * j)))));
    acc1 = _mm256_add_epi32(
        acc1,
        _mm256_madd_epi16(p1, _mm256_shuffle_epi8(sc, _mm256_set1_epi16(word_idx(2 * j + 1)))));
  }
  isum = _mm256_add_epi32(acc0, acc1);
}

// The kernel (k_vec_dot_avx2) of unpacker U.
template <typename U>
struct k4_avx2 {
  using block = typename U::block;
  NUMOE_K_STEP(NUMOE_TARGET_AVX2)
  float four(float s, const block *x, const block_q8_K *y, int i) {
    __m256i is[4], ms[4];
    for (int k = 0; k < 4; ++k) k4_block_avx2<U>(x[i + k], y[i + k], is[k], ms[k]);
    return k4_combine4(s, reinterpret_cast<const uint8_t *>(x + i), sizeof(block), y + i,
                       hsum4_i32(is), hsum4_i32(ms));
  }
  NUMOE_K_STEP(NUMOE_TARGET_AVX2) float one(const block &x, const block_q8_K &y) {
    __m256i is, ms;
    k4_block_avx2<U>(x, y, is, ms);
    return k4_block_sum(x.d, x.dmin, y.d, hsum_i32(is), hsum_i32(ms));
  }
};

template <typename U, int N>
NUMOE_TARGET_AVX2 void k4_n_avx2(int n, const void *w, const block_q8_K *const *y, const float *dy,
                                 float *out) {
  const typename U::block *x = static_cast<const typename U::block *>(w);
  __m256 s = _mm256_setzero_ps();
  for (int i = 0; i < n / QK_K; ++i) {
    const __m256i w16 = k4_words(x[i].scales);
    const __m256i sc = _mm256_permute2x128_si256(w16, w16, 0x00);
    __m256i acc[8], ms[8];
    for (int j = 0; j < 8; ++j) acc[j] = ms[j] = _mm256_setzero_si256();
    U u(x[i]);
    for (int c = 0; c < 4; ++c) {
      __m256i lo, hi;
      u.next(c, lo, hi);
      const __m256i s0 = _mm256_shuffle_epi8(sc, _mm256_set1_epi16(word_idx(2 * c)));
      const __m256i s1 = _mm256_shuffle_epi8(sc, _mm256_set1_epi16(word_idx(2 * c + 1)));
      for (int j = 0; j < N; ++j) {
        const int8_t *a0 = y[j][i].qs + 32 * k4_pos(2 * c),
                     *a1 = y[j][i].qs + 32 * k4_pos(2 * c + 1);
        const __m256i p0 = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)a0));
        const __m256i p1 = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)a1));
        acc[j] = _mm256_add_epi32(
            acc[j], _mm256_add_epi32(_mm256_madd_epi16(p0, s0), _mm256_madd_epi16(p1, s1)));
        opaque(acc[j]);
      }
    }
    for (int j = 0; j < N; ++j) ms[j] = k4_min_terms(w16, y[j][i]);
    s = k4_combine8(s, x[i].d, x[i].dmin, _mm256_load_ps(dy + 8 * i), hsum8_i32(acc),
                    hsum8_i32(ms));
  }
  store_n(s, N, out);
}

// sum_j sc[j] * (q . a over sub-block j) as 16 int32 lanes, with q[k] the unsigned values
// that pair with the 64 activation bytes at a + 64k and sc[k] their int16 scale words
// (Q4_K, Q5_K, Q6_K).
NUMOE_TARGET_AVX512VNNI inline __m512i k_isum_avx512(const __m512i q[4], const __m512i sc[4],
                                                     const int8_t *a) {
  __m512i acc0 = _mm512_dpwssd_epi32(_mm512_setzero_si512(),
                                     _mm512_maddubs_epi16(q[0], _mm512_loadu_si512(a)), sc[0]);
  __m512i acc1 = _mm512_dpwssd_epi32(_mm512_setzero_si512(),
                                     _mm512_maddubs_epi16(q[1], _mm512_loadu_si512(a + 64)), sc[1]);
  acc0 = _mm512_dpwssd_epi32(acc0, _mm512_maddubs_epi16(q[2], _mm512_loadu_si512(a + 128)), sc[2]);
  acc1 = _mm512_dpwssd_epi32(acc1, _mm512_maddubs_epi16(q[3], _mm512_loadu_si512(a + 192)), sc[3]);
  return _mm512_add_epi32(acc0, acc1);
}

// The int16 scale words of a Q4_K / Q5_K unpacking's q[k] (w16 from k4_words): 16 lanes of
// sub-block 4c (k = 2c) or 4c + 1 (k = 2c + 1), then 16 of the sub-block two above it. One
// permute per register.
NUMOE_TARGET_AVX512 inline void k4_scale_words(__m256i w16, __m512i sc[4]) {
  const __m512i w = _mm512_castsi256_si512(w16);
  for (int k = 0; k < 4; ++k) {
    const int16_t j = static_cast<int16_t>(4 * (k / 2) + k % 2);
    sc[k] = _mm512_permutexvar_epi16(concat(_mm256_set1_epi16(j), _mm256_set1_epi16(j + 2)), w);
  }
}

template <typename U>
NUMOE_TARGET_AVX512VNNI inline void k4_block_avx512(const typename U::block &x, const block_q8_K &y,
                                                    __m512i &isum, __m256i &msum) {
  const __m256i w16 = k4_words(x.scales);
  msum = k4_min_terms(w16, y);
  __m512i q[4], sc[4];
  U::unpack(x, w16, q, sc);
  isum = k_isum_avx512(q, sc, y.qs);
}

// The kernel (k_vec_dot_avx512) of unpacker U.
template <typename U>
struct k4_avx512 {
  using B = typename U::block;
  using block = B;
  NUMOE_K_STEP(NUMOE_TARGET_AVX512VNNI)
  float four(float s, const B *x, const block_q8_K *y, int i) {
    __m512i v[8];  // the four isums, then the four msums
    for (int k = 0; k < 4; ++k) {
      __m256i ms;
      k4_block_avx512<U>(x[i + k], y[i + k], v[k], ms);
      v[4 + k] = _mm512_zextsi256_si512(ms);
    }
    const __m256i r = hsum8_i32(v);
    return k4_combine4(s, reinterpret_cast<const uint8_t *>(x + i), sizeof(B), y + i,
                       _mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  }
  NUMOE_K_STEP(NUMOE_TARGET_AVX512VNNI) float one(const B &x, const block_q8_K &y) {
    __m512i is;
    __m256i ms;
    k4_block_avx512<U>(x, y, is, ms);
    return k4_block_sum(x.d, x.dmin, y.d, _mm512_reduce_add_epi32(is), hsum_i32(ms));
  }
};

template <typename U, int N>
NUMOE_TARGET_AVX512VNNI void k4_n_avx512(int n, const void *w, const block_q8_K *const *y,
                                         const float *dy, float *out) {
  const typename U::block *x = static_cast<const typename U::block *>(w);
  __m256 s = _mm256_setzero_ps();
  for (int i = 0; i < n / QK_K; ++i) {
    const __m256i w16 = k4_words(x[i].scales);
    __m512i q[4], sc[4], is[8];
    __m256i ms[8];
    U::unpack(x[i], w16, q, sc);
    for (int j = 0; j < 8; ++j) {
      is[j] = j < N ? k_isum_avx512(q, sc, y[j][i].qs) : _mm512_setzero_si512();
      ms[j] = j < N ? k4_min_terms(w16, y[j][i]) : _mm256_setzero_si256();
    }
    s = k4_combine8(s, x[i].d, x[i].dmin, _mm256_load_ps(dy + 8 * i), hsum8_i32(is), hsum8_i32(ms));
  }
  store_n(s, N, out);
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

// ---- AVX2 bodies against Q8_0 activations (Q8_0, Q4_0 weights), from a format's values ----
// Values(x): the 32 values of weight block x as signed bytes in element order. Two
// accumulators, blocks alternating, FMA of dx * dy into each.

NUMOE_TARGET_AVX2 inline __m256i load32(const int8_t *p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p));
}

template <typename B>
using values_fn = __m256i (*)(const B &x);

// The int8 dot of 32 weight values x (signed) and 32 activation bytes y into 8 int32 lanes,
// after |x| (the unsigned operand) and y signed by x are formed: AVX2's maddubs + madd, or
// one 256-bit VNNI vpdpbusd. Exact either way, so both give the same sums.
NUMOE_TARGET_AVX2 inline __m256i dot_abs_avx2(__m256i ax, __m256i sy) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1));
}
NUMOE_TARGET_AVX512VNNI inline __m256i dot_abs_vnni(__m256i ax, __m256i sy) {
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy);
}

// q8_0_act_dot_<SUF>(n, w, act): the single-activation body of one level, TARGET its
// function attribute, DOT its dot_abs. Both levels run the same float arithmetic on 256-bit
// registers (AVX2: maddubs; AVX-512: VNNI, where 256-bit code also keeps the vector port
// that 512-bit code switches off), so their results are equal bit for bit. Two
// accumulators, blocks alternating, FMA of dx * dy into each.
#define NUMOE_Q8_0_ACT_DOT(SUF, TARGET, DOT)                                                    \
  template <typename B, values_fn<B> Values>                                                    \
  TARGET float q8_0_act_dot_##SUF(int n, const void *w, const void *act) {                      \
    const B *x = static_cast<const B *>(w);                                                     \
    const block_q8_0 *y = static_cast<const block_q8_0 *>(act);                                 \
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();                              \
    const int nb = n / QK8_0;                                                                   \
    auto step = [&](int i, __m256 &acc) TARGET {                                                \
      const __m256i xv = Values(x[i]);                                                          \
      const __m256i p = DOT(_mm256_sign_epi8(xv, xv), _mm256_sign_epi8(load32(y[i].qs), xv));   \
      acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(x[i].d) * fp16(y[i].d)), _mm256_cvtepi32_ps(p), \
                            acc);                                                               \
    };                                                                                          \
    int i = 0;                                                                                  \
    for (; i + 2 <= nb; i += 2) {                                                               \
      step(i, acc0);                                                                            \
      step(i + 1, acc1);                                                                        \
    }                                                                                           \
    if (i < nb) step(i, acc0);                                                                  \
    return hsum(_mm256_add_ps(acc0, acc1));                                                     \
  }

NUMOE_Q8_0_ACT_DOT(avx2, NUMOE_TARGET_AVX2, dot_abs_avx2)
NUMOE_Q8_0_ACT_DOT(vnni, NUMOE_TARGET_AVX512VNNI, dot_abs_vnni)
#undef NUMOE_Q8_0_ACT_DOT

// N activations at once (AVX2): each lane of each activation's accumulators fed exactly as
// in q8_0_act_dot_avx2 (same int32 products, the same dx * dy products, the same FMAs in the
// same order, the same final reduction), so every result equals the single body's bit for
// bit. Per weight block, its values and dx * dy for all the activations are formed once;
// dx * dy of activation j is broadcast from memory (a load, no shuffle).
template <typename B, values_fn<B> Values, int N>
NUMOE_TARGET_AVX2 inline void q8_0_act_step_avx2(const B &x, const block_q8_0 *const *y, int i,
                                                 const float *dy, __m256 *acc) {
  const __m256i xv = Values(x);
  const __m256i ax = _mm256_sign_epi8(xv, xv);
  alignas(32) float dd[8];
  _mm256_store_ps(dd, _mm256_mul_ps(_mm256_set1_ps(fp16(x.d)), _mm256_load_ps(dy + 8 * i)));
  for (int j = 0; j < N; ++j) {
    const __m256i p = dot_abs_avx2(ax, _mm256_sign_epi8(load32(y[j][i].qs), xv));
    acc[j] = _mm256_fmadd_ps(_mm256_broadcast_ss(dd + j), _mm256_cvtepi32_ps(p), acc[j]);
  }
}

template <typename B, values_fn<B> Values, int N>
NUMOE_TARGET_AVX2 void q8_0_act_n_avx2(int n, const void *w, size_t w_stride, int n_rows,
                                       const void *const *act, float *out, size_t out_stride) {
  const block_q8_0 *y[8];
  act_ptrs(act, N, y);
  const int nb = n / QK8_0;
  const float *dy = q8_0_scales(y, nb);
  for (int r = 0; r < n_rows; ++r) {
    const B *x = reinterpret_cast<const B *>(static_cast<const char *>(w) + r * w_stride);
    __m256 acc0[N], acc1[N];
    for (int j = 0; j < N; ++j) acc0[j] = acc1[j] = _mm256_setzero_ps();
    int i = 0;
    for (; i + 2 <= nb; i += 2) {
      q8_0_act_step_avx2<B, Values, N>(x[i], y, i, dy, acc0);
      q8_0_act_step_avx2<B, Values, N>(x[i + 1], y, i + 1, dy, acc1);
    }
    if (i < nb) q8_0_act_step_avx2<B, Values, N>(x[i], y, i, dy, acc0);
    for (int j = 0; j < N; ++j) out[j * out_stride + r] = hsum(_mm256_add_ps(acc0[j], acc1[j]));
  }
}

}  // namespace numoe::quant::simd
#endif
