// Weight quantizers: float32 rows -> GGUF blocks, with ggml's reference algorithms
// (quantize_row_*_ref in ggml-quants.c, no importance matrix), so the bytes are those
// llama-quantize writes without --imatrix. Scalar code: quantizing is an offline step.
//
//   Q8_0  round to nearest, d = max|x| / 127
//   Q4_0  d = (the value of largest magnitude) / -8, q = trunc(x/d + 8.5) clamped to 15
//   Q4_1  d = (max - min) / 15, m = min, q = trunc((x - min)/d + 0.5) clamped to 15
//   Q5_0  d = (the value of largest magnitude) / -16, q = trunc(x/d + 16.5) clamped to 31
//   Q5_1  d = (max - min) / 31, m = min, q = trunc((x - min)/d + 0.5)
//   Q4_K  8 sub-blocks of 32: scale and min by make_qkx2_quants (weighted search over 21
//         candidate scales), the 8 scales/mins quantized to 6 bits under fp16 d / dmin
//   Q5_K  as Q4_K with 5-bit quants (16 candidate scales)
//   Q6_K  16 sub-blocks of 16: signed scale by make_qx_quants (x^2-weighted search over 19
//         candidates), scales quantized to int8 under one fp16 d
//   Q2_K  16 sub-blocks of 16: scale and min by make_qkx2_quants (|x|-weighted absolute
//         error, 16 candidates), quantized to 4 bits under fp16 d / dmin
//   Q3_K  16 sub-blocks of 16: signed scale by make_q3_quants (x^2-weighted coordinate
//         descent on the levels), scales quantized to 6 bits under one fp16 d
//
// Block layouts are quant/quant.hpp's (owned by the kernels).
#pragma once

#include <cstdint>

namespace numoe::quantize {

// Quantize n floats (a multiple of the block size) into consecutive blocks at dst.
using row_fn = void (*)(const float *x, void *dst, int64_t n);

struct Quantizer {
  int type;  // GGML type id
  const char *name;
  int block_size;  // elements per block
  int type_size;   // bytes per block
  row_fn quantize;
};

void quantize_q8_0(const float *x, void *dst, int64_t n);
void quantize_q4_0(const float *x, void *dst, int64_t n);
void quantize_q4_1(const float *x, void *dst, int64_t n);
void quantize_q5_0(const float *x, void *dst, int64_t n);
void quantize_q5_1(const float *x, void *dst, int64_t n);
void quantize_q4_K(const float *x, void *dst, int64_t n);
void quantize_q5_K(const float *x, void *dst, int64_t n);
void quantize_q6_K(const float *x, void *dst, int64_t n);
void quantize_q2_K(const float *x, void *dst, int64_t n);
void quantize_q3_K(const float *x, void *dst, int64_t n);

// The quantizer for a GGML type id; std::invalid_argument naming the type if there is none.
const Quantizer &quantizer(int type);

// rows x cols floats (row-major) -> rows x row_bytes bytes, rows split over n_threads
// std::threads (0: hardware concurrency; small inputs use one thread). cols must be a
// multiple of the block size (std::invalid_argument otherwise).
void quantize_rows(int type, const float *src, uint8_t *dst, int64_t rows, int64_t cols,
                   int n_threads = 0);

// Bytes of one row of `cols` elements (checks the block size).
int64_t row_bytes(int type, int64_t cols);

namespace detail {
// ggml's helpers, written out again here (see ggml-quants.c for the originals).
float make_qkx2_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                       float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep,
                       bool use_mad);
float make_qx_quants(int n, int nmax, const float *x, int8_t *L, int rmse_type, const float *qw);
// Pack 8 6-bit scales and 8 6-bit mins into Q4_K / Q5_K's 12 bytes.
void pack_scales_mins_k4(const uint8_t ls[8], const uint8_t lm[8], uint8_t out[12]);
// Scale/min search of one Q4_K / Q5_K super-block (256 values): fills L with 0..nmax and the
// block's d, dmin and packed scales, as quantize_row_q{4,5}_K_ref.
void k4_superblock(const float *x, int nmax, float rmin, int nstep, uint8_t L[256], uint16_t *d,
                   uint16_t *dmin, uint8_t scales[12]);
}  // namespace detail

}  // namespace numoe::quantize
