// AVX2 and AVX-512 (VNNI) bodies of the 32-element formats of q32.hpp against Q8_0, single-
// and multi-activation, over a format's traits F. Each body forms every block's exact
// integer sums and adds the block terms in q32.hpp's float order (eight blocks a step into
// one ymm of running sums, simd::hsum at the end), so every body gives the scalar result bit
// for bit. Included by the format files where NUMOE_X86 is defined.
//
// Extra traits used here: kQs, kQh, kM (byte offsets of qs, qh, m in the block).
#pragma once

#include <algorithm>

#include "q32.hpp"
#include "simd.hpp"

#ifdef NUMOE_X86
namespace numoe::quant::q32 {

using simd::fp16;
using simd::hsum;
using simd::load32;

constexpr int kAct = sizeof(block_q8_0);  // 34

// ---- AVX2 ----

// The weight operand of a block: u, the unsigned bytes for maddubs (q for kMin formats, |v|
// otherwise), and s, whose sign the activation takes (v; unused for kMin).
struct wv2 {
  __m256i u, s;
};

template <typename F>
NUMOE_TARGET_AVX2 inline wv2 values_avx2(const typename F::block &b) {
  // qs in both 128-bit lanes (a broadcast load: no shuffle), the high lane shifted by 4
  const __m256i t =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i *>(b.qs)));
  __m256i q = _mm256_and_si256(_mm256_srlv_epi64(t, _mm256_setr_epi64x(0, 0, 4, 4)),
                               _mm256_set1_epi8(0x0F));
  if constexpr (F::kHigh) {
    // 0xFF in byte j where bit j of qh is set: byte j/8 of qh to byte j, test bit j % 8
    uint32_t qh;
    std::memcpy(&qh, b.qh, 4);
    const __m256i sel =
        _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303);
    const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ULL));
    const __m256i h = _mm256_cmpeq_epi8(
        _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(qh)), sel), bit),
        bit);
    if constexpr (F::kMin)
      q = _mm256_or_si256(q, _mm256_and_si256(h, _mm256_set1_epi8(0x10)));
    else  // q - 16 as int8: the nibble, with 0xF0 over it where bit 4 is clear
      q = _mm256_or_si256(q, _mm256_andnot_si256(h, _mm256_set1_epi8(static_cast<char>(0xF0))));
  }
  if constexpr (F::kTable)
    q = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(
                                _mm_loadu_si128(reinterpret_cast<const __m128i *>(kvalues_iq4nl))),
                            q);
  if constexpr (F::kMin) return {q, q};
  return {_mm256_sign_epi8(q, q), q};
}

// The block's products with 32 activation bytes y as 8 int32 partial sums (exact: the int16
// pair sums of maddubs stay below 2 * 127 * 127).
template <typename F>
NUMOE_TARGET_AVX2 inline __m256i dot_avx2(const wv2 &w, __m256i y) {
  const __m256i p = _mm256_maddubs_epi16(w.u, F::kMin ? y : _mm256_sign_epi8(y, w.s));
  return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}
NUMOE_TARGET_AVX2 inline __m256i ysum_avx2(__m256i y) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), y), _mm256_set1_epi16(1));
}

// The fp16 at byte `off` of k consecutive blocks of `stride` bytes from p as 8 floats, 0
// past k.
template <bool Full>
NUMOE_TARGET_AVX2 inline __m256 halves8(const void *p, int off, size_t stride, int k) {
  const uint8_t *b = static_cast<const uint8_t *>(p) + off;
  auto get = [&](int j) {
    half v;
    std::memcpy(&v, b + j * stride, 2);
    return static_cast<int>(v);
  };
  __m128i h = _mm_cvtsi32_si128(get(0));
  if (Full || k > 1) h = _mm_insert_epi16(h, get(1), 1);
  if (Full || k > 2) h = _mm_insert_epi16(h, get(2), 2);
  if (Full || k > 3) h = _mm_insert_epi16(h, get(3), 3);
  if (Full || k > 4) h = _mm_insert_epi16(h, get(4), 4);
  if (Full || k > 5) h = _mm_insert_epi16(h, get(5), 5);
  if (Full || k > 6) h = _mm_insert_epi16(h, get(6), 6);
  if (Full || k > 7) h = _mm_insert_epi16(h, get(7), 7);
  return _mm256_cvtph_ps(h);
}

// acc + the terms of blocks x[0..k) against y[0..k) (k = 8 when Full), lane b = block b.
template <typename F, bool Full>
NUMOE_TARGET_AVX2 __attribute__((always_inline)) inline __m256 group_avx2(
    __m256 acc, const typename F::block *x, const block_q8_0 *y, int k) {
  using B = typename F::block;
  __m256i is[8], ys[8];
  for (int b = 0; b < 8; ++b) {
    is[b] = ys[b] = _mm256_setzero_si256();
    if (!Full && b >= k) continue;
    const __m256i yv = load32(y[b].qs);
    is[b] = dot_avx2<F>(values_avx2<F>(x[b]), yv);
    if constexpr (F::kMin) ys[b] = ysum_avx2(yv);
  }
  const __m256 dy = halves8<Full>(y, 0, kAct, k);
  __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(simd::hsum8_i32(is)),
                           _mm256_mul_ps(halves8<Full>(x, 0, sizeof(B), k), dy));
  if constexpr (F::kMin)
    t = _mm256_add_ps(t, _mm256_mul_ps(_mm256_cvtepi32_ps(simd::hsum8_i32(ys)),
                                       _mm256_mul_ps(halves8<Full>(x, F::kM, sizeof(B), k), dy)));
  return _mm256_add_ps(acc, t);
}

template <typename F>
NUMOE_TARGET_AVX2 float vec_dot_avx2(int n, const void *w, const void *act) {
  const typename F::block *x = static_cast<const typename F::block *>(w);
  const block_q8_0 *y = static_cast<const block_q8_0 *>(act);
  const int nb = n / QK32;
  __m256 acc = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= nb; i += 8) acc = group_avx2<F, true>(acc, x + i, y + i, 8);
  if (i < nb) acc = group_avx2<F, false>(acc, x + i, y + i, nb - i);
  return hsum(acc);
}

// Per-tile tables of N activations for the multi-activation bodies: block i of activation j
// has its scale at dy[j * ds + i] and, for kMin formats, float(ysum) at ys[j * ds + i]
// (ds = nb rounded up to 8, zeros past nb).
struct act_tables {
  const float *dy, *ys;
  size_t ds;
};

template <typename F>
NUMOE_TARGET_AVX2 inline act_tables tables_avx2(const block_q8_0 *const *y, int N, int nb) {
  const size_t ds = (static_cast<size_t>(nb) + 7) / 8 * 8;
  float *t = simd::tile_buffer(2 * ds * N);
  for (int j = 0; j < N; ++j)
    for (size_t i = 0; i < ds; ++i) {
      const bool in = i < static_cast<size_t>(nb);
      t[j * ds + i] = in ? fp16(y[j][i].d) : 0.f;
      if constexpr (F::kMin)
        t[(N + j) * ds + i] =
            in ? static_cast<float>(simd::hsum_i32(ysum_avx2(load32(y[j][i].qs)))) : 0.f;
    }
  return {t, t + N * ds, ds};
}

// N activations: per group of eight weight blocks, the values and scales are formed once;
// each activation then gets group_avx2's integer sums and float operations (its scale and
// ysum from the tables hold the same values), so every lane equals the single body's.
template <typename F, int N>
NUMOE_TARGET_AVX2 void n_avx2(int n, const void *w, size_t w_stride, int n_rows,
                              const void *const *act, float *out, size_t out_stride) {
  using B = typename F::block;
  const block_q8_0 *y[8];
  simd::act_ptrs(act, N, y);
  const int nb = n / QK32;
  const act_tables tb = tables_avx2<F>(y, N, nb);
  for (int r = 0; r < n_rows; ++r) {
    const B *x = reinterpret_cast<const B *>(static_cast<const char *>(w) + r * w_stride);
    __m256 acc[N];
    for (int j = 0; j < N; ++j) acc[j] = _mm256_setzero_ps();
    for (int i = 0; i < nb; i += 8) {
      const int k = std::min(8, nb - i);
      wv2 v[8];
      for (int b = 0; b < 8; ++b)
        v[b] =
            b < k ? values_avx2<F>(x[i + b]) : wv2{_mm256_setzero_si256(), _mm256_setzero_si256()};
      const __m256 d =
          k == 8 ? halves8<true>(x + i, 0, sizeof(B), 8) : halves8<false>(x + i, 0, sizeof(B), k);
      __m256 m = _mm256_setzero_ps();
      if constexpr (F::kMin)
        m = k == 8 ? halves8<true>(x + i, F::kM, sizeof(B), 8)
                   : halves8<false>(x + i, F::kM, sizeof(B), k);
      for (int j = 0; j < N; ++j) {
        __m256i is[8];
        for (int b = 0; b < 8; ++b)
          is[b] = b < k ? dot_avx2<F>(v[b], load32(y[j][i + b].qs)) : _mm256_setzero_si256();
        const __m256 dy = _mm256_loadu_ps(tb.dy + j * tb.ds + i);
        __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(simd::hsum8_i32(is)), _mm256_mul_ps(d, dy));
        if constexpr (F::kMin)
          t = _mm256_add_ps(
              t, _mm256_mul_ps(_mm256_loadu_ps(tb.ys + j * tb.ds + i), _mm256_mul_ps(m, dy)));
        acc[j] = _mm256_add_ps(acc[j], t);
      }
    }
    for (int j = 0; j < N; ++j) out[j * out_stride + r] = hsum(acc[j]);
  }
}

// ---- AVX-512 (VNNI) ----
// Four blocks a step, 128-bit lane k = block k:
//   lo, hi    the unsigned values u of elements 0..15 / 16..31 of block k, v = u - kOff512
//             (IQ4_NL: kvalues + 128 by table, offset 128);
//   alo, ahi  the activation bytes that pair with them.
// vpdpbusd gives 4 int32 lanes per block; q32_sums8 / q32_sums16 add them to one per block.
//
// Weights: each block's fields are loaded where they lie (a 16-byte broadcast of qs into
// lane k, an 8-byte broadcast of the header d, m, qh or a 2-byte one of d), with a software
// prefetch (prefetch_group512). Q4_0's body gathers the same bytes in fewer instructions from
// overlapping 64-byte windows and word permutes; for these formats that ran at 25 GB/s from
// L2 but 11-13 from L3 or DRAM, with or without a prefetch (one thread, 4096-wide rows,
// Zen 5), where the per-block loads keep 23-27. Activation (in L1 for the whole row): Q8_0's
// fields sit at even offsets, so word permutes of 64-byte loads gather its halves and
// scales.

template <typename F>
constexpr int kOff512 = F::kTable ? 128 : F::kOff;
template <typename F>
constexpr bool kHeaderQ = F::kMin || F::kHigh;  // an 8-byte header (d, m, qh) per block

NUMOE_TARGET_AVX512VNNI inline __mmask64 load_mask(int64_t bytes) {
  return bytes >= 64 ? ~0ULL : bytes <= 0 ? 0 : (1ULL << bytes) - 1;
}

// Word indices for the activation's permutes (vpermt2w over two 64-byte loads, 64 words).
// A step's 136 bytes are read as l0 = [0, 64), l1 = [64, 128), l2 = [16, 80), l3 = [72, 136):
// all inside the step, so full steps need no masks.
struct idx32 {
  alignas(64) uint16_t v[32];
};
// alo from [l0 l1]: position 8k + m <- word 17k + 1 + m (byte 34k + 2 + 2m: the low half of
// block k's qs)
constexpr idx32 act_lo_idx() {
  idx32 r{};
  for (int p = 0; p < 32; ++p) r.v[p] = static_cast<uint16_t>(17 * (p / 8) + 1 + p % 8);
  return r;
}
// ahi from [l2 l3]: byte 34k + 18 + 2m of the step, in l2 (offset 16) for k < 2, else in l3
// (offset 72)
constexpr idx32 act_hi_idx() {
  idx32 r{};
  for (int p = 0; p < 32; ++p) {
    const int k = p / 8, byte = 34 * k + 18 + 2 * (p % 8);
    r.v[p] = static_cast<uint16_t>(k < 2 ? (byte - 16) / 2 : 32 + (byte - 72) / 2);
  }
  return r;
}
// from [l0 l1]: positions 4s + k, and 8 + 4s + k when twice: word 17k (d of block k)
constexpr idx32 act_d_idx(int s, bool twice) {
  idx32 r{};
  for (int k = 0; k < 4; ++k) {
    r.v[4 * s + k] = static_cast<uint16_t>(17 * k);
    if (twice) r.v[8 + 4 * s + k] = static_cast<uint16_t>(17 * k);
  }
  return r;
}
template <bool Twice>
struct act_idx {
  static constexpr idx32 lo = act_lo_idx(), hi = act_hi_idx();
  static constexpr idx32 d[2] = {act_d_idx(0, Twice), act_d_idx(1, Twice)};
  static constexpr __mmask32 mask[2] = {Twice ? 0x0F0Fu : 0x000Fu, Twice ? 0xF0F0u : 0x00F0u};
};

// IQ4_NL's values + 128, as unsigned bytes.
struct tbl16 {
  alignas(16) uint8_t v[16];
};
constexpr tbl16 table512() {
  tbl16 r{};
  for (int k = 0; k < 16; ++k) r.v[k] = static_cast<uint8_t>(kvalues_iq4nl[k] + 128);
  return r;
}
inline constexpr tbl16 kTable512 = table512();

// The weights of step s (kb <= 4 blocks at xw): lo, hi, and hd, the blocks' headers: the
// first 8 bytes of block k (d, m, qh as they lie) in the low qword of lane k (kHeaderQ), or
// d at word 4s + k (IQ4_NL).
template <typename F>
NUMOE_TARGET_AVX512VNNI inline void weights512(const uint8_t *xw, int kb, int s, __m512i &lo,
                                               __m512i &hi, __m512i &hd) {
  constexpr int xs = sizeof(typename F::block);
  __m512i q = _mm512_setzero_si512();
  hd = _mm512_setzero_si512();
  for (int k = 0; k < 4 && k < kb; ++k) {
    const uint8_t *b = xw + k * xs;
    q = _mm512_mask_broadcast_i32x4(q, static_cast<__mmask16>(0xF << (4 * k)),
                                    _mm_loadu_si128(reinterpret_cast<const __m128i *>(b + F::kQs)));
    if constexpr (kHeaderQ<F>)
      hd = _mm512_mask_broadcastq_epi64(hd, static_cast<__mmask8>(1u << (2 * k)),
                                        _mm_loadl_epi64(reinterpret_cast<const __m128i *>(b)));
    else
      hd = _mm512_mask_broadcastw_epi16(hd, 1u << (4 * s + k), _mm_loadu_si16(b));
  }
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  lo = _mm512_and_si512(q, m4);
  hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
  if constexpr (F::kHigh) {
    // bit 4 of element j of block k is bit j of its qh (header bytes kQh..kQh+3 of lane
    // k): byte j / 8 of qh to byte j, test bit j % 8
    constexpr int o = F::kQh * 0x01010101;
    const __m512i bit = _mm512_set1_epi64(static_cast<int64_t>(0x8040201008040201ULL));
    const __m512i sel_lo = _mm512_set4_epi32(o + 0x01010101, o + 0x01010101, o, o);
    const __m512i sel_hi =
        _mm512_set4_epi32(o + 0x03030303, o + 0x03030303, o + 0x02020202, o + 0x02020202);
    const __m512i b16 = _mm512_set1_epi8(0x10);
    lo = _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(_mm512_shuffle_epi8(hd, sel_lo), bit), lo,
                              b16);
    hi = _mm512_mask_add_epi8(hi, _mm512_test_epi8_mask(_mm512_shuffle_epi8(hd, sel_hi), bit), hi,
                              b16);
  }
  if constexpr (F::kTable) {
    const __m512i t =
        _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i *>(kTable512.v)));
    lo = _mm512_shuffle_epi8(t, lo);
    hi = _mm512_shuffle_epi8(t, hi);
  }
}

// The scale words of a group from its two steps' headers: d of blocks 0..7 in words 0..7,
// and for kMin formats m of blocks 0..7 in words 8..15.
template <typename F>
NUMOE_TARGET_AVX512 inline __m256i scale_words512(__m512i hd0, __m512i hd1) {
  if constexpr (!kHeaderQ<F>) {
    return _mm512_castsi512_si256(_mm512_or_si512(hd0, hd1));
  } else {
    // block p: word 8 (p % 4) of step p / 4's header register ([hd0 hd1]: 64 words); m
    // kM / 2 words after d
    constexpr int m = F::kMin ? F::kM / 2 : 0;
    const __m512i idx =
        _mm512_setr_epi32(0x00080000, 0x00180010, 0x00280020, 0x00380030, (8 + m) << 16 | m,
                          (24 + m) << 16 | (16 + m), (40 + m) << 16 | (32 + m),
                          (56 + m) << 16 | (48 + m), 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_castsi512_si256(_mm512_permutex2var_epi16(hd0, idx, hd1));
  }
}

// The activation of step s (kb <= 4 blocks at ya): alo, ahi and the scale words (dy of block k
// at word 4s + k, and at 8 + 4s + k for kMin formats; zeros elsewhere). Masked loads only for
// a partial step (the row's tail).
template <typename F>
NUMOE_TARGET_AVX512VNNI inline void act512(const int8_t *ya, int kb, int s, __m512i &alo,
                                           __m512i &ahi, __m512i &hy) {
  using T = act_idx<F::kMin>;
  __m512i l0, l1, l2, l3;
  if (kb == 4) {
    l0 = _mm512_loadu_si512(ya);
    l1 = _mm512_loadu_si512(ya + 64);
    l2 = _mm512_loadu_si512(ya + 16);
    l3 = _mm512_loadu_si512(ya + 72);
  } else {
    const int64_t bytes = static_cast<int64_t>(kb) * kAct;
    l0 = _mm512_maskz_loadu_epi8(load_mask(bytes), ya);
    l1 = _mm512_maskz_loadu_epi8(load_mask(bytes - 64), ya + 64);
    l2 = _mm512_maskz_loadu_epi8(load_mask(bytes - 16), ya + 16);
    l3 = _mm512_maskz_loadu_epi8(load_mask(bytes - 72), ya + 72);
  }
  alo = _mm512_permutex2var_epi16(l0, _mm512_load_si512(T::lo.v), l1);
  ahi = _mm512_permutex2var_epi16(l2, _mm512_load_si512(T::hi.v), l3);
  hy = _mm512_maskz_permutex2var_epi16(T::mask[s], l0, _mm512_load_si512(T::d[s].v), l1);
}

// sum u * a over lo/hi, as 4 int32 lanes per block
NUMOE_TARGET_AVX512VNNI inline __m512i dot512(__m512i lo, __m512i hi, __m512i alo, __m512i ahi) {
  return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, alo), hi, ahi);
}

// 4x4 transpose of int32 lanes: position 4m + k <- 4k + m.
NUMOE_TARGET_AVX512 inline __m512i transpose4(__m512i u) {
  return _mm512_permutexvar_epi32(
      _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), u);
}
// v0 (blocks 0..3), v1 (blocks 4..7), 4 lanes per block -> the 8 block sums in order.
NUMOE_TARGET_AVX512 inline __m256i q32_sums8(__m512i v0, __m512i v1) {
  // per lane k: [v0 (0+2), v1 (0+2), v0 (1+3), v1 (1+3)], then [v0k, v1k, v0k, v1k]
  const __m512i t = _mm512_add_epi32(_mm512_unpacklo_epi32(v0, v1), _mm512_unpackhi_epi32(v0, v1));
  return _mm512_castsi512_si256(
      transpose4(_mm512_add_epi32(t, _mm512_shuffle_epi32(t, _MM_PERM_BADC))));
}
// The same for two pairs: [sums of v0, v1 | sums of y0, y1].
NUMOE_TARGET_AVX512 inline __m512i q32_sums16(__m512i v0, __m512i v1, __m512i y0, __m512i y1) {
  const __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(v0, v1), _mm512_unpackhi_epi32(v0, v1));
  const __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(y0, y1), _mm512_unpackhi_epi32(y0, y1));
  // per lane k: [v0k, v1k, y0k, y1k]
  return transpose4(_mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1)));
}

// The weights' masked broadcast loads leave the hardware prefetchers idle: without this, 5 GB/s
// from L3 or DRAM against 25 from L2 (Zen 5). Each group asks for the 192 bytes (at least a
// group) kPrefetch ahead, gemm_rows' row-prefetch distance (512 and 1024 were a little
// slower); past the row they are the next row's (a matrix's rows are consecutive), past the
// matrix harmless.
constexpr int kPrefetch = 2048;
NUMOE_TARGET_AVX512 inline void prefetch_group512(const uint8_t *xw) {
  for (int c = 0; c < 3; ++c)
    _mm_prefetch(reinterpret_cast<const char *>(xw + kPrefetch + 64 * c), _MM_HINT_T0);
}

// acc + the terms of the k (8 when Full) blocks at xw against the activation blocks at ya.
template <typename F, bool Full>
NUMOE_TARGET_AVX512VNNI __attribute__((always_inline)) inline __m256 group512(__m256 acc,
                                                                              const uint8_t *xw,
                                                                              const int8_t *ya,
                                                                              int k) {
  constexpr int xs = sizeof(typename F::block);
  const int k0 = Full ? 4 : std::min(k, 4), k1 = Full ? 4 : std::max(k - 4, 0);
  __m512i lo[2], hi[2], hd[2], alo[2], ahi[2], hy[2], v[2], ys[2];
  weights512<F>(xw, k0, 0, lo[0], hi[0], hd[0]);
  weights512<F>(xw + 4 * xs, k1, 1, lo[1], hi[1], hd[1]);
  act512<F>(ya, k0, 0, alo[0], ahi[0], hy[0]);
  act512<F>(ya + 4 * kAct, k1, 1, alo[1], ahi[1], hy[1]);
  for (int s = 0; s < 2; ++s) {
    v[s] = dot512(lo[s], hi[s], alo[s], ahi[s]);
    if constexpr (F::kMin || kOff512<F> != 0) {
      const __m512i c = _mm512_set1_epi8(static_cast<char>(F::kMin ? 1 : kOff512<F>));
      ys[s] = dot512(c, c, alo[s], ahi[s]);  // sum a, or kOff512 * sum a
    }
    if constexpr (!F::kMin && kOff512<F> != 0) v[s] = _mm512_sub_epi32(v[s], ys[s]);
  }
  // [d of blocks 0..7 | m of blocks 0..7] and [dy | dy] (kMin); the low halves otherwise
  const __m512 d = _mm512_cvtph_ps(scale_words512<F>(hd[0], hd[1]));
  const __m512 dy = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_or_si512(hy[0], hy[1])));
  if constexpr (F::kMin) {
    const __m512 p = _mm512_mul_ps(_mm512_cvtepi32_ps(q32_sums16(v[0], v[1], ys[0], ys[1])),
                                   _mm512_mul_ps(d, dy));
    return _mm256_add_ps(acc,
                         _mm256_add_ps(_mm512_castps512_ps256(p), _mm512_extractf32x8_ps(p, 1)));
  } else {
    const __m256 dd = _mm256_mul_ps(_mm512_castps512_ps256(d), _mm512_castps512_ps256(dy));
    return _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(q32_sums8(v[0], v[1])), dd));
  }
}

template <typename F>
NUMOE_TARGET_AVX512VNNI float vec_dot_avx512(int n, const void *w, const void *act) {
  const uint8_t *x = static_cast<const uint8_t *>(w);
  const int8_t *y = static_cast<const int8_t *>(act);
  constexpr int xs = sizeof(typename F::block);
  const int nb = n / QK32;
  __m256 acc = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= nb; i += 8) {
    prefetch_group512(x + i * xs);
    acc = group512<F, true>(acc, x + i * xs, y + i * kAct, 8);
  }
  if (i < nb) acc = group512<F, false>(acc, x + i * xs, y + i * kAct, nb - i);
  return hsum(acc);
}

// N activations. Per tile, each activation is laid out once as the single body's permutes
// leave it: per group of eight blocks and activation j, 320 bytes at (g * N + j) * 320:
// alo, ahi of step 0, alo, ahi of step 1, dy of the 8 blocks (float), and float(ysum)
// (kMin) or kOff512 * ysum (int32). Per row and group, the weights are unpacked once and
// each activation gets group512's integer sums and float operations: bit for bit its result.
constexpr int kGroupBytes = 320;

template <typename F>
NUMOE_TARGET_AVX512VNNI inline const uint8_t *tables512(const block_q8_0 *const *y, int N, int nb) {
  const int ng = (nb + 7) / 8;
  uint8_t *buf = reinterpret_cast<uint8_t *>(
      simd::tile_buffer(static_cast<size_t>(ng) * N * kGroupBytes / sizeof(float)));
  for (int g = 0; g < ng; ++g) {
    const int k = std::min(8, nb - 8 * g), k0 = std::min(k, 4), k1 = std::max(k - 4, 0);
    for (int j = 0; j < N; ++j) {
      uint8_t *t = buf + (static_cast<size_t>(g) * N + j) * kGroupBytes;
      const int8_t *ya = reinterpret_cast<const int8_t *>(y[j] + 8 * g);
      __m512i a[4], hy[2], ys[2];
      act512<F>(ya, k0, 0, a[0], a[1], hy[0]);
      act512<F>(ya + 4 * kAct, k1, 1, a[2], a[3], hy[1]);
      for (int c = 0; c < 4; ++c) _mm512_store_si512(t + 64 * c, a[c]);
      const __m256 dy = _mm256_cvtph_ps(_mm512_castsi512_si128(_mm512_or_si512(hy[0], hy[1])));
      _mm256_store_ps(reinterpret_cast<float *>(t + 256), dy);
      const __m512i c = _mm512_set1_epi8(static_cast<char>(F::kMin ? 1 : kOff512<F>));
      for (int s = 0; s < 2; ++s) ys[s] = dot512(c, c, a[2 * s], a[2 * s + 1]);
      const __m256i sum = q32_sums8(ys[0], ys[1]);
      if constexpr (F::kMin)
        _mm256_store_ps(reinterpret_cast<float *>(t + 288), _mm256_cvtepi32_ps(sum));
      else
        _mm256_store_si256(reinterpret_cast<__m256i *>(t + 288), sum);
    }
  }
  return buf;
}

template <typename F, int N>
NUMOE_TARGET_AVX512VNNI void n_avx512(int n, const void *w, size_t w_stride, int n_rows,
                                      const void *const *act, float *out, size_t out_stride) {
  constexpr int xs = sizeof(typename F::block);
  const block_q8_0 *y[8];
  simd::act_ptrs(act, N, y);
  const int nb = n / QK32, ng = (nb + 7) / 8;
  const uint8_t *tb = tables512<F>(y, N, nb);
  for (int r = 0; r < n_rows; ++r) {
    const uint8_t *x = static_cast<const uint8_t *>(w) + r * w_stride;
    __m256 acc[N];
    for (int j = 0; j < N; ++j) acc[j] = _mm256_setzero_ps();
    for (int g = 0; g < ng; ++g) {
      const int k = std::min(8, nb - 8 * g), k0 = std::min(k, 4), k1 = std::max(k - 4, 0);
      __m512i lo[2], hi[2], hd[2];
      prefetch_group512(x + 8 * g * xs);
      weights512<F>(x + 8 * g * xs, k0, 0, lo[0], hi[0], hd[0]);
      weights512<F>(x + (8 * g + 4) * xs, k1, 1, lo[1], hi[1], hd[1]);
      const __m512 dm = _mm512_cvtph_ps(scale_words512<F>(hd[0], hd[1]));
      const __m256 d = _mm512_castps512_ps256(dm);
      [[maybe_unused]] const __m256 m = _mm512_extractf32x8_ps(dm, 1);
      for (int j = 0; j < N; ++j) {
        const uint8_t *t = tb + (static_cast<size_t>(g) * N + j) * kGroupBytes;
        auto ld = [t](int c) NUMOE_TARGET_AVX512 { return _mm512_load_si512(t + 64 * c); };
        __m256i is =
            q32_sums8(dot512(lo[0], hi[0], ld(0), ld(1)), dot512(lo[1], hi[1], ld(2), ld(3)));
        const __m256 dy = _mm256_load_ps(reinterpret_cast<const float *>(t + 256));
        if constexpr (!F::kMin && kOff512<F> != 0)
          is = _mm256_sub_epi32(is, _mm256_load_si256(reinterpret_cast<const __m256i *>(t + 288)));
        __m256 s = _mm256_mul_ps(_mm256_cvtepi32_ps(is), _mm256_mul_ps(d, dy));
        if constexpr (F::kMin)
          s = _mm256_add_ps(s,
                            _mm256_mul_ps(_mm256_load_ps(reinterpret_cast<const float *>(t + 288)),
                                          _mm256_mul_ps(m, dy)));
        acc[j] = _mm256_add_ps(acc[j], s);
      }
    }
    for (int j = 0; j < N; ++j) out[j * out_stride + r] = hsum(acc[j]);
  }
}

}  // namespace numoe::quant::q32
#endif
