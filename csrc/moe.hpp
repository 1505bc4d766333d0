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
//
// Slices (NUMA shard/replicate): the op may instead be built from S slices, slice s holding
// the intermediate columns [f0_s, f0_s + F_s) of every expert (gate/up rows, down sub-rows) in
// its own memory and computed only by the threads of pool group `group` (parallel_for_groups).
// Slices cover [0, F) in order; each boundary is a multiple of the down activation type's
// block size, so a down sub-row is a valid quantized row and h is quantized once for all.
// Slice s's down outputs y_s are summed in slice order before the slot weights apply, so the
// result is deterministic and differs from the one-slice op only by that float summation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace numoe {

struct MoESlice {
  // Per expert: gate/up point at row f0 ([F_s rows of D]); down at column f0 of row 0.
  std::vector<const uint8_t *> gate, up, down;
  int64_t f0 = 0, n_ff = 0;  // columns [f0, f0 + n_ff) of the intermediate dimension
  size_t down_stride = 0;    // bytes between down rows (0: row bytes of n_ff elements)
  int group = -1;            // pool group computing it (-1: any thread; one slice only)
};

class MoEOp {
 public:
  MoEOp(std::vector<MoESlice> slices, int gate_type, int up_type, int down_type, int64_t n_expert,
        int64_t n_ff, int64_t n_embd);
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
  size_t n_slices() const { return slices_.size(); }

 private:
  std::vector<MoESlice> slices_;
  int gate_type_, up_type_, down_type_;
  int64_t E_, F_, D_;
};

}  // namespace numoe
