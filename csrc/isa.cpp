#include "isa.hpp"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <stdexcept>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define NUMOE_X86 1
#endif

namespace numoe {
namespace {

#ifdef NUMOE_X86
// XCR0: which register state the OS saves on context switch (XGETBV needs OSXSAVE).
unsigned long long read_xcr0() {
  unsigned int eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<unsigned long long>(edx) << 32) | eax;
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#ifdef NUMOE_X86
  unsigned int a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28),
             f16c = c & (1u << 29);
  if (!osxsave || !avx) return f;
  const unsigned long long xcr0 = read_xcr0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;    // SSE + AVX state
  const bool os_zmm = (xcr0 & 0xE6) == 0xE6;  // + opmask, ZMM_Hi256, Hi16_ZMM
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
  const bool avx2 = b & (1u << 5), avx512f = b & (1u << 16), avx512dq = b & (1u << 17),
             avx512bw = b & (1u << 30), avx512vl = b & (1u << 31), vnni = c & (1u << 11);
  f.avx2 = os_ymm && avx2 && fma && f16c;
  f.avx512 = f.avx2 && os_zmm && avx512f && avx512dq && avx512bw && avx512vl;
  f.avx512_vnni = f.avx512 && vnni;
  if (f.avx512 && __get_cpuid_count(7, 1, &a, &b, &c, &d)) f.avx512_bf16 = a & (1u << 5);
#endif
  return f;
}

Isa initial_isa() {
  const Isa best = best_isa();
  const char *env = std::getenv("NUMOE_ISA");
  if (env == nullptr || *env == '\0') return best;
  Isa want;
  try {
    want = parse_isa(env);
  } catch (const std::invalid_argument &) {
    throw std::invalid_argument(std::string("NUMOE_ISA='") + env +
                                "' is not one of scalar, avx2, avx512");
  }
  if (static_cast<int>(want) > static_cast<int>(best)) {
    std::fprintf(stderr, "numoe: NUMOE_ISA=%s: this CPU lacks it; using %s\n", env, isa_name(best));
    return best;
  }
  return want;
}

std::atomic<int> g_isa{-1};
std::mutex g_init;

}  // namespace

const CpuFeatures &cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

Isa best_isa() {
  const CpuFeatures &f = cpu_features();
  return f.avx512 ? Isa::avx512 : f.avx2 ? Isa::avx2 : Isa::scalar;
}

Isa current_isa() {
  int v = g_isa.load(std::memory_order_relaxed);
  if (v >= 0) return static_cast<Isa>(v);
  std::lock_guard<std::mutex> lock(g_init);
  v = g_isa.load();
  if (v < 0) {
    v = static_cast<int>(initial_isa());  // throws on a bad NUMOE_ISA; retried next call
    g_isa.store(v);
  }
  return static_cast<Isa>(v);
}

Isa set_isa(Isa level) {
  if (static_cast<int>(level) > static_cast<int>(best_isa()))
    throw std::invalid_argument(std::string("ISA level '") + isa_name(level) +
                                "' is not supported by this CPU (best: " + isa_name(best_isa()) +
                                ")");
  const Isa prev = current_isa();
  g_isa.store(static_cast<int>(level));
  return prev;
}

const char *isa_name(Isa level) {
  switch (level) {
    case Isa::scalar:
      return "scalar";
    case Isa::avx2:
      return "avx2";
    case Isa::avx512:
      return "avx512";
  }
  return "?";
}

Isa parse_isa(const std::string &name) {
  if (name == "scalar") return Isa::scalar;
  if (name == "avx2") return Isa::avx2;
  if (name == "avx512") return Isa::avx512;
  throw std::invalid_argument("unknown ISA level '" + name + "' (expected scalar, avx2 or avx512)");
}

std::vector<Isa> isa_available() {
  std::vector<Isa> out;
  for (int i = 0; i <= static_cast<int>(best_isa()); ++i) out.push_back(static_cast<Isa>(i));
  return out;
}

}  // namespace numoe
