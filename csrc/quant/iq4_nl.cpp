// IQ4_NL: blocks of 32 4-bit indices into the non-linear table kvalues_iq4nl with an fp16
// scale d (x = d * kvalues_iq4nl[q]); dot against Q8_0 (q32.hpp).
#include <cstddef>

#include "q32.hpp"
#include "q32_simd.hpp"

namespace numoe::quant {
namespace {

struct fmt {
  using block = block_iq4_nl;
  static constexpr int kType = IQ4_NL;
  static constexpr const char *kName = "IQ4_NL";
  static constexpr bool kMin = false, kHigh = false, kTable = true;
  static constexpr int kOff = 0;
  static constexpr int kQs = offsetof(block_iq4_nl, qs), kQh = 0, kM = 0;
};

#ifdef NUMOE_X86
constexpr vec_dot_fn vec_dot_iq4_nl_avx2 = q32::vec_dot_avx2<fmt>;
constexpr vec_dot_fn vec_dot_iq4_nl_avx512 = q32::vec_dot_avx512<fmt>;
template <int N>
constexpr simd::body_n_fn iq4_nl_n_avx2 = q32::n_avx2<fmt, N>;
template <int N>
constexpr simd::body_n_fn iq4_nl_n_avx512 = q32::n_avx512<fmt, N>;
NUMOE_VEC_DOT_N(iq4_nl, avx2, NUMOE_TILE_BODIES)
NUMOE_VEC_DOT_N(iq4_nl, avx512, NUMOE_TILE_BODIES)
#endif

}  // namespace

const TypeInfo &info_iq4_nl() {
  static const TypeInfo t = q32_type_info<fmt>(
#ifdef NUMOE_X86
      {q32_vec_dot_scalar<fmt>, vec_dot_iq4_nl_avx2, vec_dot_iq4_nl_avx512},
      {vec_dot_n_loop<q32_vec_dot_scalar<fmt>>, vec_dot_n_iq4_nl_avx2, vec_dot_n_iq4_nl_avx512});
#else
      {q32_vec_dot_scalar<fmt>, nullptr, nullptr},
      {vec_dot_n_loop<q32_vec_dot_scalar<fmt>>, nullptr, nullptr});
#endif
  return t;
}

}  // namespace numoe::quant
