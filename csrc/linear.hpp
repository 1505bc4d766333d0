// The quantized linear op: y[T, out] = x[T, in] . W^T with W a GGUF tensor [out, in] of any
// registry type, read in place (a pointer into the file's memory map).
//
// Per call the T activation rows are quantized once to the weight's activation type; then
// tasks over blocks of output rows (and for many tokens and few rows, blocks of tokens) run
// on the pool. Inside a task a group of up to kMaxActs tokens stays in L1 while the task's
// weight rows pass over it (from L2), each row unpacked once per group (vec_dot_n); T = 1
// streams the weights once. Every output element equals one vec_dot, so the result does not
// depend on T, the thread count or the task split.
//
// `groups` batches G independent matrices stored back to back (W [G, out, in], e.g. the
// per-head absorbed MLA projections): x [T, G*in] -> y [T, G*out], group g using
// x[:, g*in:(g+1)*in] and W[g].
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "quant/quant.hpp"

namespace numoe {

// Bytes of one row of n elements of `type`; std::invalid_argument unless n is a positive
// multiple of the block size.
size_t row_bytes_of(int type, int64_t n);

// Quantize n_rows rows of n floats (row r at x + r*x_stride) to activation type `act_type`,
// row r at out + r*out_stride. Runs on the pool when the rows are many.
void quantize_rows(int act_type, const float *x, int64_t x_stride, int64_t n_rows, int64_t n,
                   uint8_t *out, size_t out_stride);

// Weight rows per task when `rows` rows in all are split over `threads` threads: about 8
// tasks per thread (balance), at least 4 rows each (a task amortises its claim). With T > 1
// tokens at most 64 rows (a block is reused from L2 for each token group); at T = 1 up to
// 256 KiB of weights (long contiguous reads keep the hardware prefetchers streaming).
int64_t rows_per_task(int64_t rows, int threads, int64_t T, size_t row_bytes);

// Scratch memory reused across calls, one set per calling thread (never freed while the
// thread lives; grows to the largest request).
uint8_t *scratch(int slot, size_t bytes);

class LinearOp {
 public:
  LinearOp(const uint8_t *w, int type, int64_t n_out, int64_t n_in, int64_t groups = 1);

  // x [T, groups*n_in] float32 (contiguous) -> y [T, groups*n_out].
  void forward(const float *x, int64_t T, float *y) const;
  // The same for several ops with the same input (e.g. an attention's q, k and v): x is
  // quantized once per activation type and all their tasks share one pool call. ops[i] writes
  // ys[i] [T, groups*n_out]; every op must have x's width.
  static void forward_many(const std::vector<const LinearOp *> &ops, const float *x, int64_t T,
                           const std::vector<float *> &ys);
  // Dequantize rows ids[i] of the [groups*n_out, n_in] matrix into out[i*n_in ...].
  // std::invalid_argument for an id out of range (checked before any row is read).
  void rows(const int64_t *ids, int64_t n, float *out) const;

  // How a call with T tokens splits into pool tasks (row blocks x token blocks), and the
  // kernels of this ISA level its tasks run (looked up once per call, not per task).
  struct Plan {
    int64_t rb, tb, blocks_per_group, tok_blocks, n_tasks;
    quant::vec_dot_fn dot;
    quant::vec_dot_n_fn dot_n;
  };
  Plan plan(int64_t T, int threads) const;
  // Task `task` of `p`: act = x quantized to the activation type (T rows).
  void run_task(const Plan &p, int64_t task, const uint8_t *act, int64_t T, float *y) const;

  int type() const { return type_; }
  int64_t n_out() const { return n_out_; }
  int64_t n_in() const { return n_in_; }
  int64_t groups() const { return groups_; }
  size_t row_bytes() const { return row_bytes_; }
  size_t bytes() const { return row_bytes_ * static_cast<size_t>(n_out_ * groups_); }

 private:
  const uint8_t *w_;
  int type_, act_type_;
  int64_t n_out_, n_in_, groups_;
  size_t row_bytes_, act_row_bytes_;
};

// out[t, r] = dot(W row r, act row t) for rows [r0, r1), tokens [0, n_tok): a blocked
// kernel shared by the linear and MoE ops. act rows at act + tok[i]*act_stride (tok may be
// null: identity), y element (i, r) at y + i*y_stride + r. dot_n (may be null) is the
// vec_dot_n paired with dot: groups of up to kMaxActs tokens (in L1) pass over the rows (in
// L2), each weight row unpacked once per group. Every output is the same as dot's.
void gemm_rows(quant::vec_dot_fn dot, quant::vec_dot_n_fn dot_n, int n, const uint8_t *w,
               size_t w_row_bytes, int64_t r0, int64_t r1, const uint8_t *act, size_t act_stride,
               const int32_t *tok, int64_t n_tok, float *y, int64_t y_stride);

// Read `bytes` bytes at p with every pool thread (a STREAM-style read); returns a checksum
// so the reads cannot be optimised away.
uint64_t read_bytes(const uint8_t *p, size_t bytes);

}  // namespace numoe
