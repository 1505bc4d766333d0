// Sign tables of the i-quants that store 8 signs as a 7-bit index (IQ2_XXS, IQ2_XS, IQ3_XXS):
// ggml's ksigns_iq2xs and kmask_iq2xs (ggml-common.h).
//
// ksigns_iq2xs[i] is the 7 bits of i with an eighth that makes the count of set bits even:
// i | (popcount(i) & 1) << 7. Bit j of it is the sign of value j of a group of 8 (set =
// negative); kmask_iq2xs[j] = 1 << j selects it.
#pragma once

#include <cstdint>

namespace numoe::quant {

inline constexpr uint8_t ksigns_iq2xs[128] = {
    0,   129, 130, 3,   132, 5,   6,   135, 136, 9,   10,  139, 12,  141, 142, 15,  144, 17,  18,
    147, 20,  149, 150, 23,  24,  153, 154, 27,  156, 29,  30,  159, 160, 33,  34,  163, 36,  165,
    166, 39,  40,  169, 170, 43,  172, 45,  46,  175, 48,  177, 178, 51,  180, 53,  54,  183, 184,
    57,  58,  187, 60,  189, 190, 63,  192, 65,  66,  195, 68,  197, 198, 71,  72,  201, 202, 75,
    204, 77,  78,  207, 80,  209, 210, 83,  212, 85,  86,  215, 216, 89,  90,  219, 92,  221, 222,
    95,  96,  225, 226, 99,  228, 101, 102, 231, 232, 105, 106, 235, 108, 237, 238, 111, 240, 113,
    114, 243, 116, 245, 246, 119, 120, 249, 250, 123, 252, 125, 126, 255,
};

inline constexpr uint8_t kmask_iq2xs[8] = {1, 2, 4, 8, 16, 32, 64, 128};

// The tables are what their rule says (checked at compile time).
constexpr bool ksigns_iq2xs_follow_parity() {
  for (int i = 0; i < 128; ++i) {
    int p = 0;
    for (int b = 0; b < 7; ++b) p ^= (i >> b) & 1;
    if (ksigns_iq2xs[i] != (i | (p << 7))) return false;
  }
  return true;
}
static_assert(ksigns_iq2xs_follow_parity(), "ksigns_iq2xs");

}  // namespace numoe::quant
