// Q5_K quantizer: ggml's quantize_row_q5_K_ref. As Q4_K (see q4_k.cpp) with levels 0..31
// and 16 trial scales from nmax - 0.5; the fifth bit of value n + j (group n of 64, j < 32)
// goes to bit 2*(n/64) of qh[j], that of value n + j + 32 to the next bit.
#include <cstring>

#include "quant/quant.hpp"
#include "quantize.hpp"

namespace numoe::quantize {

void quantize_q5_K(const float *x, void *dst, int64_t n) {
  quant::block_q5_K *y = static_cast<quant::block_q5_K *>(dst);
  uint8_t L[quant::QK_K];
  for (int64_t i = 0; i < n / quant::QK_K; ++i, x += quant::QK_K) {
    detail::k4_superblock(x, 31, -0.5f, 15, L, &y[i].d, &y[i].dmin, y[i].scales);
    uint8_t *qh = y[i].qh;
    uint8_t *ql = y[i].qs;
    std::memset(qh, 0, quant::QK_K / 8);
    uint8_t m1 = 1, m2 = 2;
    for (int g = 0; g < quant::QK_K; g += 64, ql += 32) {
      for (int j = 0; j < 32; ++j) {
        int l1 = L[g + j], l2 = L[g + j + 32];
        if (l1 > 15) {
          l1 -= 16;
          qh[j] |= m1;
        }
        if (l2 > 15) {
          l2 -= 16;
          qh[j] |= m2;
        }
        ql[j] = static_cast<uint8_t>(l1 | (l2 << 4));
      }
      m1 = static_cast<uint8_t>(m1 << 2);
      m2 = static_cast<uint8_t>(m2 << 2);
    }
  }
}

}  // namespace numoe::quantize
