// Q5_0: blocks of 32 5-bit values q (4 bits in qs, the fifth in qh) with an fp16 scale d
// (x = d * (q - 16)); dot against Q8_0 (q32.hpp).
#include <cstddef>

#include "q32.hpp"
#include "q32_simd.hpp"

namespace numoe::quant {
namespace {

struct fmt {
  using block = block_q5_0;
  static constexpr int kType = Q5_0;
  static constexpr const char *kName = "Q5_0";
  static constexpr bool kMin = false, kHigh = true, kTable = false;
  static constexpr int kOff = 16;
  static constexpr int kQs = offsetof(block_q5_0, qs), kQh = offsetof(block_q5_0, qh), kM = 0;
};

#ifdef NUMOE_X86
constexpr vec_dot_fn vec_dot_q5_0_avx2 = q32::vec_dot_avx2<fmt>;
constexpr vec_dot_fn vec_dot_q5_0_avx512 = q32::vec_dot_avx512<fmt>;
template <int N>
constexpr simd::body_n_fn q5_0_n_avx2 = q32::n_avx2<fmt, N>;
template <int N>
constexpr simd::body_n_fn q5_0_n_avx512 = q32::n_avx512<fmt, N>;
NUMOE_VEC_DOT_N(q5_0, avx2, NUMOE_TILE_BODIES)
NUMOE_VEC_DOT_N(q5_0, avx512, NUMOE_TILE_BODIES)
#endif

}  // namespace

const TypeInfo &info_q5_0() {
  static const TypeInfo t = q32_type_info<fmt>(
#ifdef NUMOE_X86
      {q32_vec_dot_scalar<fmt>, vec_dot_q5_0_avx2, vec_dot_q5_0_avx512},
      {vec_dot_n_loop<q32_vec_dot_scalar<fmt>>, vec_dot_n_q5_0_avx2, vec_dot_n_q5_0_avx512});
#else
      {q32_vec_dot_scalar<fmt>, nullptr, nullptr},
      {vec_dot_n_loop<q32_vec_dot_scalar<fmt>>, nullptr, nullptr});
#endif
  return t;
}

}  // namespace numoe::quant
