// The 16 non-linear values of IQ4_NL and IQ4_XS (ggml-common.h kvalues_iq4nl); a 4-bit index
// cannot leave the table. 16-byte aligned: the SIMD bodies load it as one register.
#pragma once

#include <cstdint>

namespace numoe::quant {

alignas(16) inline constexpr int8_t kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                                         1,    13,   25,  38,  53,  69,  89,  113};

}  // namespace numoe::quant
