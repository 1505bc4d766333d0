// The fused MoE op: routed SwiGLU experts, weights read in place from the GGUF mmap.
//
//   out[t] = sum_j w[t, j] * down_e( SiLU(gate_e x[t]) * up_e x[t] ),  e = ids[t, j]
//
// Set up once per layer with one pointer per expert for gate/up [F, D] and down [D, F]
// (merged [E, F, D] tensors give E pointers into one block), called once per layer per step.
// Steps: validate ids; group the (token, slot) pairs by expert (stable: token order);
// quantize x once; tasks (expert, block of F rows) compute h = SiLU(gate)*up for that
// expert's tokens; quantize each h row to the down weight's activation type; tasks (expert,
// block of D rows) compute each pair's expert output; then a reduction over slots in fixed
// order j = 0..k-1. Every number is computed by one task independent of the split, so the
// result is the same for any thread count and any timing. Tasks of the most used experts
// come first, and a hot expert is split into as many row blocks as any other, so it does
// not serialise a step.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace numoe {

class MoEOp {
 public:
  // gate/up/down: n_expert pointers each (gate/up: F rows of D; down: D rows of F).
  MoEOp(std::vector<const uint8_t *> gate, std::vector<const uint8_t *> up,
        std::vector<const uint8_t *> down, int gate_type, int up_type, int down_type,
        int64_t n_expert, int64_t n_ff, int64_t n_embd);

  // x [T, D], ids [T, k] (int64 if ids64 else int32), w [T, k] -> out [T, D].
  // std::invalid_argument for an id outside [0, n_expert) (before any weight is read).
  void forward(const float *x, int64_t T, const void *ids, bool ids64, int64_t k, const float *w,
               float *out) const;

  int64_t n_expert() const { return E_; }
  int64_t n_ff() const { return F_; }
  int64_t n_embd() const { return D_; }
  // Bytes of one expert's gate (or up) and down matrices.
  size_t gate_bytes() const;
  size_t up_bytes() const;
  size_t down_bytes() const;

 private:
  std::vector<const uint8_t *> gate_, up_, down_;
  int gate_type_, up_type_, down_type_;
  int64_t E_, F_, D_;
};

}  // namespace numoe
