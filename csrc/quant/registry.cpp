// The table of block formats keyed by GGML type id, and kernel selection per ISA level.
#include <stdexcept>
#include <string>
#include <vector>

#include "quant.hpp"

namespace numoe::quant {
namespace {

// Every block format numoe has kernels for: one line per format (its table is in its file).
const TypeInfo &(*const kFormats[])() = {
    // clang-format off: one line per format
    info_f32,
    info_f16,
    info_bf16,
    info_q4_0,
    info_q8_0,
    info_q4_K,
    info_q5_K,
    info_q6_K,
    info_q8_K,
    info_q8_K4,
    info_iq2_xxs,
    info_iq2_xs,
    info_iq2_s,
    info_q2_K,
    info_q3_K,
    info_iq4_xs,
    info_q4_1,
    info_q5_0,
    info_q5_1,
    info_iq4_nl,
    info_iq3_xxs,
    info_iq3_s,
    info_iq1_s,
    info_iq1_m,
    // clang-format on
};

const TypeInfo *find(int type) {
  for (auto info : kFormats)
    if (info().type == type) return &info();
  return nullptr;
}

// GGML names of the ids numoe has no kernels for, so errors can name them.
const char *ggml_name(int type) {
  static const char *names[] = {"F32",     "F16",      "Q4_0",     "Q4_1",     "Q4_2",    "Q4_3",
                                "Q5_0",    "Q5_1",     "Q8_0",     "Q8_1",     "Q2_K",    "Q3_K",
                                "Q4_K",    "Q5_K",     "Q6_K",     "Q8_K",     "IQ2_XXS", "IQ2_XS",
                                "IQ3_XXS", "IQ1_S",    "IQ4_NL",   "IQ3_S",    "IQ2_S",   "IQ4_XS",
                                "I8",      "I16",      "I32",      "I64",      "F64",     "IQ1_M",
                                "BF16",    "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0",   "TQ2_0"};
  if (type >= 0 && type < static_cast<int>(sizeof(names) / sizeof(names[0]))) return names[type];
  return nullptr;
}

// The level whose kernel runs for `level`: the highest at or below it that has one.
template <typename Fn>
int pick_level(const Fn (&fns)[kIsaCount], Isa level, bool avx512_needs_vnni) {
  int l = static_cast<int>(level);
  if (l == static_cast<int>(Isa::avx512) && avx512_needs_vnni && !cpu_features().avx512_vnni)
    l = static_cast<int>(Isa::avx2);
  for (; l >= 0; --l)
    if (fns[l] != nullptr) return l;
  return -1;
}

template <typename Fn>
Fn pick(const Fn (&fns)[kIsaCount], Isa level, bool avx512_needs_vnni) {
  const int l = pick_level(fns, level, avx512_needs_vnni);
  return l < 0 ? nullptr : fns[l];
}

}  // namespace

const char *type_name(int type) {
  if (const TypeInfo *t = find(type)) return t->name;
  if (const char *n = ggml_name(type)) return n;
  return "unknown";
}

const TypeInfo &type_info(int type) {
  if (const TypeInfo *t = find(type)) return *t;
  std::string names;
  for (int w : weight_types()) names += std::string(names.empty() ? "" : ", ") + type_name(w);
  throw std::invalid_argument("GGML type " + std::to_string(type) + " (" + type_name(type) +
                              ") is not supported by numoe's CPU kernels (supported: " + names +
                              ")");
}

std::vector<int> weight_types() {
  std::vector<int> out;
  for (auto info : kFormats)
    if (info().act_type >= 0) out.push_back(info().type);
  return out;
}

vec_dot_fn get_vec_dot(int type, Isa level) {
  const TypeInfo &t = type_info(type);
  vec_dot_fn f = pick(t.vec_dot, level, t.avx512_vec_dot_needs_vnni);
  if (f == nullptr)
    throw std::invalid_argument(std::string(t.name) + " is an activation type, not a weight type");
  return f;
}

vec_dot_n_fn get_vec_dot_n(int type, Isa level) {
  get_vec_dot(type, level);  // same checks
  const TypeInfo &t = type_info(type);
  return t.vec_dot_n[pick_level(t.vec_dot, level, t.avx512_vec_dot_needs_vnni)];
}

quantize_fn get_quantize(int act_type, Isa level) {
  const TypeInfo &t = type_info(act_type);
  quantize_fn f = pick(t.quantize, level, false);
  if (f == nullptr) throw std::invalid_argument(std::string(t.name) + " is not an activation type");
  return f;
}

vec_dot_fn get_vec_dot(int type) { return get_vec_dot(type, current_isa()); }
vec_dot_n_fn get_vec_dot_n(int type) { return get_vec_dot_n(type, current_isa()); }
quantize_fn get_quantize(int act_type) { return get_quantize(act_type, current_isa()); }

}  // namespace numoe::quant
