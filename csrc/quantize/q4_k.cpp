// Q4_K quantizer: ggml's quantize_row_q4_K_ref. Per 32-value sub-block, make_qkx2_quants
// (weights |x| + rms(x), 21 trial scales from nmax - 1 in steps of 0.1) picks a scale and a
// min; the 8 scales and 8 mins are stored as 6-bit integers under the fp16 super-block
// scales d = max scale / 63 and dmin = max min / 63, and the values are requantized against
// those stored scales. Layout: 4 groups of 64 values, each 32 bytes: low nibbles the first
// 32 values, high nibbles the next 32.
#include "quant/quant.hpp"
#include "quantize.hpp"

namespace numoe::quantize {

void quantize_q4_K(const float *x, void *dst, int64_t n) {
  quant::block_q4_K *y = static_cast<quant::block_q4_K *>(dst);
  uint8_t L[quant::QK_K];
  for (int64_t i = 0; i < n / quant::QK_K; ++i, x += quant::QK_K) {
    detail::k4_superblock(x, 15, -1.f, 20, L, &y[i].d, &y[i].dmin, y[i].scales);
    uint8_t *q = y[i].qs;
    for (int j = 0; j < quant::QK_K; j += 64, q += 32)
      for (int l = 0; l < 32; ++l) q[l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 4));
  }
}

}  // namespace numoe::quantize
