// One token's attention for decode (GQA and MLA): see attention.hpp.
#include "attention.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "isa.hpp"
#include "ops.hpp"
#include "quant/simd.hpp"  // NUMOE_X86, NUMOE_TARGET_AVX2 / AVX512, hsum
#include "threadpool.hpp"

namespace numoe::ops {

namespace {

// Vector kernels of the attention ops: dot, axpy (y += w * x), qk (scores), exp_sum and pv
// (the weighted sum of value rows). The scalar bodies are the references; the AVX2 ones
// (8-wide FMAs, a polynomial exp) sum in another order, so the two agree to float rounding.
// The cached rows are float or half (an F16 cache, KvType::f16): each body is a template over
// the element type whose only difference is the load (to_f32 / load8: exact conversions), so
// a body over F16 rows gives bit for bit what it gives over float32 rows holding the same
// (F16-rounded) values.

using quant::half;

inline float to_f32(float x) { return x; }
inline float to_f32(half h) { return quant::fp16_to_fp32(h); }

// Ask for the `bytes` bytes at x (a cache row) to be read into the caches.
inline void prefetch_row(const void *x, int64_t bytes) {
  const char *p = static_cast<const char *>(x);
  for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(p + i);
}

// The cache element `i` of a row array of type t (a byte offset of i elements).
inline const void *at(const void *base, KvType t, int64_t i) {
  return static_cast<const char *>(base) + i * kv_type_size(t);
}
inline void *at(void *base, KvType t, int64_t i) {
  return static_cast<char *>(base) + i * kv_type_size(t);
}

template <typename T>
float dot_scalar(const float *a, const T *b, int64_t n) {
  float d = 0.f;
  for (int64_t i = 0; i < n; ++i) d += a[i] * to_f32(b[i]);
  return d;
}

template <typename T>
void axpy_scalar(float w, const T *x, float *y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += w * to_f32(x[i]);
}

// n floats into a cache row of type t; F16: rounded to nearest even (quant::fp32_to_fp16,
// the reference the F16C store below equals bit for bit).
void store_row_scalar(const float *x, void *dst, KvType t, int64_t n) {
  if (t == KvType::f32) {
    std::copy(x, x + n, static_cast<float *>(dst));
    return;
  }
  half *h = static_cast<half *>(dst);
  for (int64_t i = 0; i < n; ++i) h[i] = quant::fp32_to_fp16(x[i]);
}

#ifdef NUMOE_X86
NUMOE_TARGET_AVX2 inline __m256 load8(const float *p) { return _mm256_loadu_ps(p); }
NUMOE_TARGET_AVX2 inline __m256 load8(const half *p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
}

NUMOE_TARGET_AVX2 void store_row_avx2(const float *x, void *dst, KvType t, int64_t n) {
  if (t == KvType::f32) {
    std::copy(x, x + n, static_cast<float *>(dst));
    return;
  }
  half *h = static_cast<half *>(dst);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)  // vcvtps2ph, round to nearest even (ggml's FP32 -> FP16)
    _mm_storeu_si128(
        reinterpret_cast<__m128i *>(h + i),
        _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; i < n; ++i) h[i] = quant::fp32_to_fp16(x[i]);
}

template <typename T>
NUMOE_TARGET_AVX2 float dot_avx2(const float *a, const T *b, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8(b + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), load8(b + i + 8), a1);
  }
  if (i + 8 <= n) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8(b + i), a0);
    i += 8;
  }
  float d = quant::simd::hsum(_mm256_add_ps(a0, a1));
  for (; i < n; ++i) d += a[i] * to_f32(b[i]);
  return d;
}

// Four rows at a time per head (four accumulators, one transpose-reduce): q[h] is loaded
// once per four rows, and the four rows stay in L1 for the g heads. d a multiple of 8.
template <typename T>
NUMOE_TARGET_AVX2 void qk_avx2(const float *q, int64_t q_stride, int64_t g, const void *kv,
                               int64_t k_stride, int64_t d, int64_t S, float *p) {
  const T *k = static_cast<const T *>(kv);
  int64_t s = 0;
  for (; s + 4 <= S; s += 4) {
    if (k_stride > d && s + 12 <= S)
      for (int j = 8; j < 12; ++j) prefetch_row(k + (s + j) * k_stride, d * sizeof(T));
    const T *k0 = k + s * k_stride;
    for (int64_t h = 0; h < g; ++h) {
      const float *qh = q + h * q_stride;
      __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                       _mm256_setzero_ps()};
      for (int64_t i = 0; i < d; i += 8) {
        const __m256 qv = _mm256_loadu_ps(qh + i);
        for (int j = 0; j < 4; ++j)
          acc[j] = _mm256_fmadd_ps(qv, load8(k0 + j * k_stride + i), acc[j]);
      }
      // lane j of the sum: row s + j
      const __m256 t =
          _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
      const __m128 r = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
      float *ph = p + h * S + s;
      _mm_storeu_ps(ph, _mm_add_ps(_mm_loadu_ps(ph), r));
    }
  }
  for (; s < S; ++s)
    for (int64_t h = 0; h < g; ++h) p[h * S + s] += dot_avx2(q + h * q_stride, k + s * k_stride, d);
}

template <typename T>
NUMOE_TARGET_AVX2 void axpy_avx2(float w, const T *x, float *y, int64_t n) {
  const __m256 vw = _mm256_set1_ps(w);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(vw, load8(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += w * to_f32(x[i]);
}
#endif

// p[h * S + s] += q[h] . k[s] for g heads (q[h] at q + h * q_stride) over S rows of d cache
// elements (k[s] at k + s * k_stride elements). Rows apart (GQA: the other KV heads between
// them) defeat the hardware prefetchers, so the row 8 ahead is asked for; contiguous rows
// (MLA's latent) stream without help.
using qk_fn = void (*)(const float *q, int64_t q_stride, int64_t g, const void *k, int64_t k_stride,
                       int64_t d, int64_t S, float *p);

template <typename T>
void qk_scalar(const float *q, int64_t q_stride, int64_t g, const void *kv, int64_t k_stride,
               int64_t d, int64_t S, float *p) {
  const T *k = static_cast<const T *>(kv);
  for (int64_t s = 0; s < S; ++s) {
    if (k_stride > d && s + 8 < S) prefetch_row(k + (s + 8) * k_stride, d * sizeof(T));
    for (int64_t h = 0; h < g; ++h)
      p[h * S + s] += dot_scalar(q + h * q_stride, k + s * k_stride, d);
  }
}

// out[h] [dv] = sum_s p[h * S + s] * v[s] for g heads (v[s] at v + s * v_stride elements).
using pv_fn = void (*)(const float *p, int64_t S, int64_t g, const void *v, int64_t v_stride,
                       int64_t dv, float *out);
// v[i] = e^(v[i] - m), returning their sum (softmax without the division).
using exp_sum_fn = float (*)(float *v, int64_t n, float m);

float exp_sum_scalar(float *v, int64_t n, float m) {
  float sum = 0.f;
  for (int64_t i = 0; i < n; ++i) sum += v[i] = std::exp(v[i] - m);
  return sum;
}

template <typename T>
void pv_scalar(const float *p, int64_t S, int64_t g, const void *vv, int64_t v_stride, int64_t dv,
               float *out) {
  const T *v = static_cast<const T *>(vv);
  std::fill(out, out + g * dv, 0.f);
  for (int64_t s = 0; s < S; ++s)
    for (int64_t h = 0; h < g; ++h) axpy_scalar(p[h * S + s], v + s * v_stride, out + h * dv, dv);
}

#ifdef NUMOE_X86
// e^x on 8 lanes for x <= 0 (softmax inputs): 2^n * e^r with n = round(x log2 e), r = x - n
// ln 2 in two steps, e^r by Cephes' degree-6 polynomial; relative error ~2e-7; x below -87
// counts as -87 (e^-87 ~ 1.6e-38, nothing beside the softmax's largest term, which is 1).
NUMOE_TARGET_AVX2 inline __m256 exp_avx2(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-87.0f), x);  // NaN stays NaN (maxps returns operand 2)
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  for (float c :
       {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(c));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.f)));
  const __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

NUMOE_TARGET_AVX2 float exp_sum_avx2(float *v, int64_t n, float m) {
  const __m256 vm = _mm256_set1_ps(m);
  __m256 sum = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(v + i), vm));
    _mm256_storeu_ps(v + i, e);
    sum = _mm256_add_ps(sum, e);
  }
  float s = quant::simd::hsum(sum);
  for (; i < n; ++i) s += v[i] = std::exp(v[i] - m);
  return s;
}

// pv with 64 output values of a head in 8 registers while a block of positions passes
// (the block's value rows stay in L2 for the g heads); other widths take the axpy loop.
template <typename T>
NUMOE_TARGET_AVX2 void pv_avx2(const float *p, int64_t S, int64_t g, const void *vv,
                               int64_t v_stride, int64_t dv, float *out) {
  const T *v = static_cast<const T *>(vv);
  std::fill(out, out + g * dv, 0.f);
  if (dv % 64 != 0) {
    for (int64_t s = 0; s < S; ++s)
      for (int64_t h = 0; h < g; ++h) axpy_avx2(p[h * S + s], v + s * v_stride, out + h * dv, dv);
    return;
  }
  constexpr int64_t kBlock = 128;
  for (int64_t s0 = 0; s0 < S; s0 += kBlock) {
    const int64_t s1 = std::min(S, s0 + kBlock);
    for (int64_t h = 0; h < g; ++h)
      for (int64_t c = 0; c < dv; c += 64) {
        float *o = out + h * dv + c;
        __m256 acc[8];
        for (int k = 0; k < 8; ++k) acc[k] = _mm256_loadu_ps(o + 8 * k);
        for (int64_t s = s0; s < s1; ++s) {
          if (v_stride > dv && h == 0 && c == 0 && s + 8 < S)  // as attend's key rows
            prefetch_row(v + (s + 8) * v_stride, dv * sizeof(T));
          const __m256 w = _mm256_broadcast_ss(p + h * S + s);
          const T *vs = v + s * v_stride + c;
          for (int k = 0; k < 8; ++k) acc[k] = _mm256_fmadd_ps(w, load8(vs + 8 * k), acc[k]);
        }
        for (int k = 0; k < 8; ++k) _mm256_storeu_ps(o + 8 * k, acc[k]);
      }
  }
}
#endif

// A job's kernels: qk over its key rows' type, qr over its rope keys' (MLA), pv over its
// value rows'.
struct VecKernels {
  qk_fn qk, qr;
  exp_sum_fn exp_sum;
  pv_fn pv;
};

constexpr bool f16(KvType t) { return t == KvType::f16; }

// The AVX2 qk takes key rows whose widths (dk, and MLA's dr) are multiples of 8. (AVX-512
// versions of qk and pv measured ~10% faster at position 4000: not worth a second copy; F16
// rows convert with F16C's vcvtph2ps, part of the AVX2 level as for the F16 weights.)

VecKernels vec_kernels(int64_t d, int64_t dr, KvType kt, KvType krt, KvType vt) {
#ifdef NUMOE_X86
  if (current_isa() >= Isa::avx2 && d % 8 == 0 && dr % 8 == 0)
    return {f16(kt) ? qk_fn{qk_avx2<half>} : qk_fn{qk_avx2<float>},
            f16(krt) ? qk_fn{qk_avx2<half>} : qk_fn{qk_avx2<float>}, exp_sum_avx2,
            f16(vt) ? pv_fn{pv_avx2<half>} : pv_fn{pv_avx2<float>}};
#endif
  return {f16(kt) ? qk_fn{qk_scalar<half>} : qk_fn{qk_scalar<float>},
          f16(krt) ? qk_fn{qk_scalar<half>} : qk_fn{qk_scalar<float>}, exp_sum_scalar,
          f16(vt) ? pv_fn{pv_scalar<half>} : pv_fn{pv_scalar<float>}};
}

// A cache row of n floats stored as type t (F16: rounded to nearest even; bit-equal bodies).
void store_row(const float *x, void *dst, KvType t, int64_t n) {
#ifdef NUMOE_X86
  if (current_isa() >= Isa::avx2) return store_row_avx2(x, dst, t, n);
#endif
  store_row_scalar(x, dst, t, n);
}

// One decode step's attention for g query heads over S cached positions that they all read
// (each cached row read once for the g heads): score(h, s) = scale * (q[h] . k[s] + qr[h] .
// kr[s]) (the second part only when kr is set: MLA's shared rope key), p = softmax over s,
// out[h] [dv] = sum_s p(h, s) v[s]. Rows: q[h] at q + h * q_stride, qr[h] at qr + h *
// qr_stride (floats); k[s] at k + s * k_stride, kr[s] at kr + s * kr_stride, v[s] at v + s *
// v_stride (cache elements of types kt, krt, vt); p [g, S] scratch; out [g, dv].
struct Attend {
  const float *q, *qr;
  int64_t q_stride, qr_stride;
  const void *k, *kr, *v;
  int64_t k_stride, kr_stride, v_stride, dk, dr, dv, S;
  float scale;
  KvType kt = KvType::f32, krt = KvType::f32, vt = KvType::f32;
};

// The g heads' share of positions [s0, s1): scores into p [g, s1 - s0], then m[h] = their
// max, l[h] = sum_s e^(score - m[h]) and o[h] [dv] = sum_s e^(score - m[h]) v[s]: softmax's
// pieces, merged over the position chunks by attend_merge.
void attend_part(const Attend &a, int64_t g, int64_t s0, int64_t s1, float *p, float *o, float *m,
                 float *l, VecKernels vk) {
  const int64_t n = s1 - s0;
  std::fill(p, p + g * n, 0.f);
  vk.qk(a.q, a.q_stride, g, at(a.k, a.kt, s0 * a.k_stride), a.k_stride, a.dk, n, p);
  if (a.kr != nullptr)
    vk.qr(a.qr, a.qr_stride, g, at(a.kr, a.krt, s0 * a.kr_stride), a.kr_stride, a.dr, n, p);
  for (int64_t i = 0; i < g * n; ++i) p[i] *= a.scale;
  for (int64_t h = 0; h < g; ++h) {
    m[h] = *std::max_element(p + h * n, p + (h + 1) * n);
    l[h] = vk.exp_sum(p + h * n, n, m[h]);
  }
  vk.pv(p, n, g, at(a.v, a.vt, s0 * a.v_stride), a.v_stride, a.dv, o);
}

// One token's attention over its cache: n_groups groups of `group` query heads (out
// [n_groups * group, dv]); group j reads its keys and values at a.k + j * k_off and a.v + j *
// v_off (GQA: its KV head; MLA: one group, offsets 0).
struct AttendJob {
  Attend a;
  int64_t n_groups, group, k_off, v_off;
  float *out;
  // Position chunks: about 64 rows or more, as many as give the pool two tasks per thread and
  // keep a chunk's key and value rows within 1 MiB. Depends on this token alone (its S, the
  // shapes and cache types, the pool's size), never on the other tokens of a batch.
  int64_t chunks() const {
    const int64_t row_bytes = a.dk * kv_type_size(a.kt) +
                              (a.v == a.k ? 0 : a.dv * kv_type_size(a.vt)) +  // MLA: keys = values
                              (a.kr != nullptr ? a.dr * kv_type_size(a.krt) : 0);
    const int64_t want = std::max<int64_t>((2 * pool_threads() + n_groups - 1) / n_groups,
                                           (a.S * row_bytes + (1 << 20) - 1) >> 20);
    return std::clamp<int64_t>(want, 1, std::max<int64_t>(1, a.S / 64));
  }
  int64_t part() const { return group * a.dv + 2 * group; }  // o [g, dv], m [g], l [g]
};

// Task `c` of job j's n_groups * chunks tasks: group c / chunks over its chunk of positions
// into pp (its parts, each part() floats).
void attend_task(const AttendJob &j, int64_t chunks, int64_t c, float *pp, const VecKernels &vk) {
  const Attend &a = j.a;
  const int64_t g = j.group, len = (a.S + chunks - 1) / chunks;
  const int64_t grp = c / chunks, s0 = (c % chunks) * len, s1 = std::min(a.S, s0 + len);
  float *o = pp + c * j.part(), *m = o + g * a.dv, *l = m + g;
  if (s0 >= s1) {  // an empty last chunk adds nothing
    std::fill(o, o + j.part(), 0.f);
    std::fill(m, m + g, -std::numeric_limits<float>::infinity());
    return;
  }
  static thread_local std::vector<float> p;  // the task's scores, reused
  if (p.size() < static_cast<size_t>(g * (s1 - s0))) p.resize(static_cast<size_t>(g * (s1 - s0)));
  Attend t = a;
  t.q += grp * g * a.q_stride;
  if (t.qr != nullptr) t.qr += grp * g * a.qr_stride;
  t.k = at(t.k, t.kt, grp * j.k_off);
  t.v = at(t.v, t.vt, grp * j.v_off);
  attend_part(t, g, s0, s1, p.data(), o, m, l, vk);
}

// out[h] = sum_c e^(m_c - M) o_c / sum_c e^(m_c - M) l_c, M = max_c m_c: job j's chunks merged.
void attend_merge(const AttendJob &j, int64_t chunks, const float *pp) {
  const int64_t g = j.group, dv = j.a.dv, part = j.part();
  for (int64_t grp = 0; grp < j.n_groups; ++grp)
    for (int64_t h = 0; h < g; ++h) {
      float M = -std::numeric_limits<float>::infinity(), L = 0.f;
      for (int64_t c = 0; c < chunks; ++c)
        M = std::max(M, pp[(grp * chunks + c) * part + g * dv + h]);
      float *y = j.out + (grp * g + h) * dv;
      std::fill(y, y + dv, 0.f);
      for (int64_t c = 0; c < chunks; ++c) {
        const float *o = pp + (grp * chunks + c) * part;
        const float mc = o[g * dv + h];
        if (mc == -std::numeric_limits<float>::infinity()) continue;
        const float w = std::exp(mc - M);  // 1 for the chunk holding the max
        L += w * o[g * dv + g + h];
        for (int64_t i = 0; i < dv; ++i) y[i] += w * o[h * dv + i];
      }
      const float inv = 1.f / L;
      for (int64_t i = 0; i < dv; ++i) y[i] *= inv;
    }
}

// n tokens' attention in one pool call. Tasks: a token's group of heads over a chunk of its
// positions (flash-decoding: each cached row read once for the whole group, the chunk's rows
// in L2 from the scores to the value sum), all tokens' tasks in one list; then each token's
// chunks merge. A token's chunks, tasks and merge are those it has alone, so its output does
// not depend on the others (batch invariance).
void attend_jobs(const AttendJob *jobs, int64_t n) {
  static thread_local std::vector<int64_t> chunks, task0, part0;
  static thread_local std::vector<float> parts;
  static thread_local std::vector<VecKernels> kernels;  // a token's own: its caches' types
  chunks.resize(n);
  kernels.clear();
  task0.assign(n + 1, 0);
  part0.assign(n + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    chunks[i] = jobs[i].chunks();
    task0[i + 1] = task0[i] + jobs[i].n_groups * chunks[i];
    part0[i + 1] = part0[i] + jobs[i].n_groups * chunks[i] * jobs[i].part();
    const Attend &a = jobs[i].a;
    kernels.push_back(vec_kernels(a.dk, a.kr != nullptr ? a.dr : 0, a.kt, a.krt, a.vt));
  }
  if (parts.size() < static_cast<size_t>(part0[n])) parts.resize(static_cast<size_t>(part0[n]));
  float *pp = parts.data();
  const int64_t *t0 = task0.data(), *p0 = part0.data(), *ch = chunks.data();
  const VecKernels *vk = kernels.data();
  parallel_for(t0[n], [&](int64_t task, int) {
    const int64_t i = std::upper_bound(t0, t0 + n + 1, task) - t0 - 1;
    attend_task(jobs[i], ch[i], task - t0[i], pp + p0[i], vk[i]);
  });
  if (n < 8)  // a decode step's few tokens: not worth a second pool wake-up
    for (int64_t i = 0; i < n; ++i) attend_merge(jobs[i], ch[i], pp + p0[i]);
  else
    parallel_for(n, [&](int64_t i, int) { attend_merge(jobs[i], ch[i], pp + p0[i]); });
}

// GQA: norms, rope and the cache store of one token (gqa_decode's first half); its job.
AttendJob gqa_prepare(const GqaDecode &a, float *out) {
  if (a.q_norm) rms_norm(a.q, a.dk, a.q_norm, a.eps, a.H, a.dk, a.q);
  if (a.k_norm) rms_norm(a.k, a.dk, a.k_norm, a.eps, a.Hkv, a.dk, a.k);
  if (a.rope_dim > 0) {
    rope(a.q, 1, a.H, a.dk, a.rope_dim, a.cos, a.sin, a.neox);
    rope(a.k, 1, a.Hkv, a.dk, a.rope_dim, a.cos, a.sin, a.neox);
  }
  store_row(a.k, at(a.k_cache, a.k_type, a.pos * a.Hkv * a.dk), a.k_type, a.Hkv * a.dk);
  store_row(a.v, at(a.v_cache, a.v_type, a.pos * a.Hkv * a.dv), a.v_type, a.Hkv * a.dv);
  // KV head j serves query heads j*g .. j*g+g-1; its cached rows at k_cache + j * dk.
  Attend t{};
  t.q = a.q;
  t.q_stride = a.dk;
  t.k = a.k_cache;
  t.v = a.v_cache;
  t.k_stride = a.Hkv * a.dk;
  t.v_stride = a.Hkv * a.dv;
  t.dk = a.dk;
  t.dv = a.dv;
  t.S = a.pos + 1;
  t.scale = a.scale;
  t.kt = a.k_type;
  t.vt = a.v_type;
  return {t, a.Hkv, a.H / a.Hkv, a.dk, a.dv, out};
}

// MLA: the latent's norm, both ropes and the cache store of one token; its job.
AttendJob mla_prepare(const MlaDecode &a, float *out) {
  float *lat = a.kv, *kr = a.kv + a.R;
  rms_norm(lat, a.R, a.kv_norm, a.eps, 1, a.R, lat);
  rope(kr, 1, 1, a.dr, a.dr, a.cos, a.sin, a.neox);
  rope(a.q_rope, 1, a.H, a.q_rope_stride, a.dr, a.cos, a.sin, a.neox);
  store_row(lat, at(a.latent_cache, a.latent_type, a.pos * a.R), a.latent_type, a.R);
  store_row(kr, at(a.k_rope_cache, a.k_rope_type, a.pos * a.dr), a.k_rope_type, a.dr);
  // Multi-query: every head reads the same latent rows (keys and values) and rope keys.
  Attend t{};
  t.q = a.q_lat;
  t.qr = a.q_rope;
  t.q_stride = a.R;
  t.qr_stride = a.q_rope_stride;
  t.k = t.v = a.latent_cache;
  t.kr = a.k_rope_cache;
  t.k_stride = t.v_stride = a.R;
  t.kr_stride = a.dr;
  t.dk = t.dv = a.R;
  t.dr = a.dr;
  t.S = a.pos + 1;
  t.scale = a.scale;
  t.kt = t.vt = a.latent_type;
  t.krt = a.k_rope_type;
  return {t, 1, a.H, 0, 0, out};
}

}  // namespace

void gqa_decode_batch(const GqaDecode *a, int64_t n, float *out, int64_t out_stride) {
  if (n <= 0) return;
  static thread_local std::vector<AttendJob> jobs;
  jobs.clear();
  for (int64_t i = 0; i < n; ++i) jobs.push_back(gqa_prepare(a[i], out + i * out_stride));
  attend_jobs(jobs.data(), n);
}

void mla_decode_batch(const MlaDecode *a, int64_t n, float *out, int64_t out_stride) {
  if (n <= 0) return;
  static thread_local std::vector<AttendJob> jobs;
  jobs.clear();
  for (int64_t i = 0; i < n; ++i) jobs.push_back(mla_prepare(a[i], out + i * out_stride));
  attend_jobs(jobs.data(), n);
}

void gqa_decode(const GqaDecode &a, float *out) { gqa_decode_batch(&a, 1, out, 0); }

void mla_decode(const MlaDecode &a, float *out) { mla_decode_batch(&a, 1, out, 0); }

}  // namespace numoe::ops
