// Run-time instruction-set dispatch: which SIMD level the quantized kernels use.
//
// Levels, each implying the ones before it:
//   scalar  portable C++ (the reference bodies)
//   avx2    AVX2 + FMA + F16C
//   avx512  AVX-512 F + DQ + BW + VL (and the OS saves ZMM/opmask state); the integer dot
//           products use AVX512-VNNI where the CPU has it, else the AVX2 bodies.
// One build runs everywhere: no global -m flags; SIMD bodies carry function-level
// target attributes and are only called when the level is active.
// NUMOE_ISA=scalar|avx2|avx512 forces a level at start-up (a level the CPU lacks falls
// back to the best one available, with a one-time warning on stderr).
#pragma once

#include <string>
#include <vector>

namespace numoe {

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };
constexpr int kIsaCount = 3;

struct CpuFeatures {
  bool avx2 = false;    // avx2 + fma + f16c, OS saves YMM state
  bool avx512 = false;  // avx512 f + dq + bw + vl, OS saves ZMM + opmask state
  bool avx512_vnni = false;
  bool avx512_bf16 = false;
};

// What the CPU (and OS) support; detected once.
const CpuFeatures &cpu_features();
// Best level this CPU supports.
Isa best_isa();
// The level in use (initialised from NUMOE_ISA on first use). Throws std::invalid_argument
// when NUMOE_ISA holds an unknown name.
Isa current_isa();
// Set the level in use; returns the previous one. Throws std::invalid_argument when the CPU
// lacks `level`. For tests and benchmarks: not meant to be switched while kernels run.
Isa set_isa(Isa level);

const char *isa_name(Isa level);
// Parse "scalar" / "avx2" / "avx512"; std::invalid_argument otherwise.
Isa parse_isa(const std::string &name);
// Levels this CPU supports, lowest first.
std::vector<Isa> isa_available();

}  // namespace numoe
