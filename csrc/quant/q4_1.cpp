// Q4_1: blocks of 32 4-bit values q with an fp16 scale d and min m (x = d * q + m); dot
// against Q8_0, the activation block's sum taken in the kernel (q32.hpp).
#include <cstddef>

#include "q32.hpp"
#include "q32_simd.hpp"

namespace numoe::quant {
namespace {

struct fmt {
  using block = block_q4_1;
  static constexpr int kType = Q4_1;
  static constexpr const char *kName = "Q4_1";
  static constexpr bool kMin = true, kHigh = false, kTable = false;
  static constexpr int kOff = 0;
  static constexpr int kQs = offsetof(block_q4_1, qs), kQh = 0, kM = offsetof(block_q4_1, m);
  static half min(const block &b) { return b.m; }
};

#ifdef NUMOE_X86
constexpr vec_dot_fn vec_dot_q4_1_avx2 = q32::vec_dot_avx2<fmt>;
constexpr vec_dot_fn vec_dot_q4_1_avx512 = q32::vec_dot_avx512<fmt>;
template <int N>
constexpr simd::body_n_fn q4_1_n_avx2 = q32::n_avx2<fmt, N>;
template <int N>
constexpr simd::body_n_fn q4_1_n_avx512 = q32::n_avx512<fmt, N>;
NUMOE_VEC_DOT_N(q4_1, avx2, NUMOE_TILE_BODIES)
NUMOE_VEC_DOT_N(q4_1, avx512, NUMOE_TILE_BODIES)
#endif

}  // namespace

const TypeInfo &info_q4_1() {
  static const TypeInfo t = q32_type_info<fmt>(
#ifdef NUMOE_X86
      {q32_vec_dot_scalar<fmt>, vec_dot_q4_1_avx2, vec_dot_q4_1_avx512},
      {vec_dot_n_loop<q32_vec_dot_scalar<fmt>>, vec_dot_n_q4_1_avx2, vec_dot_n_q4_1_avx512});
#else
      {q32_vec_dot_scalar<fmt>, nullptr, nullptr},
      {vec_dot_n_loop<q32_vec_dot_scalar<fmt>>, nullptr, nullptr});
#endif
  return t;
}

}  // namespace numoe::quant
