#include "linear.hpp"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>

#include "threadpool.hpp"

namespace numoe {

namespace {

// Activation bytes a token block may use: the block stays in L2 while the weight rows of a
// task pass over it.
constexpr size_t kActBlockBytes = 192 * 1024;
// Software prefetch distance of the decode path, bytes (NUMOE_PREFETCH_AHEAD overrides; 0 = off).
size_t prefetch_ahead() {
  static const size_t v = [] {
    const char *e = std::getenv("NUMOE_PREFETCH_AHEAD");
    return e ? static_cast<size_t>(std::strtoul(e, nullptr, 10)) : size_t{2048};
  }();
  return v;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

int64_t rows_per_task(int64_t rows, int threads, int64_t T, size_t row_bytes) {
  const int64_t max_rows =
      T == 1 ? std::max<int64_t>(64, static_cast<int64_t>((256 << 10) / row_bytes)) : 64;
  return std::clamp<int64_t>(ceil_div(rows, static_cast<int64_t>(threads) * 8), 4, max_rows);
}

size_t row_bytes_of(int type, int64_t n) {
  const quant::TypeInfo &t = quant::type_info(type);
  if (n <= 0 || n % t.block_size != 0)
    throw std::invalid_argument("row length " + std::to_string(n) +
                                " is not a positive multiple of " + t.name + "'s block size " +
                                std::to_string(t.block_size));
  if (n > INT_MAX) throw std::invalid_argument("row length " + std::to_string(n) + " is too large");
  return static_cast<size_t>(n / t.block_size) * static_cast<size_t>(t.type_size);
}

uint8_t *scratch(int slot, size_t bytes) {
  struct Buf {
    std::unique_ptr<uint8_t[]> p;
    size_t size = 0;
  };
  thread_local Buf bufs[9];
  if (slot < 0 || slot >= 9) throw std::logic_error("scratch slot out of range");
  Buf &b = bufs[slot];
  if (b.size < bytes) {
    const size_t n = std::max(bytes, b.size + b.size / 2);
    b.p.reset(new uint8_t[n + 64]);
    b.size = n;
  }
  // 64-byte aligned
  uintptr_t a = reinterpret_cast<uintptr_t>(b.p.get());
  return reinterpret_cast<uint8_t *>((a + 63) & ~uintptr_t(63));
}

void quantize_rows(int act_type, const float *x, int64_t x_stride, int64_t n_rows, int64_t n,
                   uint8_t *out, size_t out_stride) {
  const quant::quantize_fn q = quant::get_quantize(act_type);
  if (n_rows <= 0) return;
  // Small inputs (decode) are not worth waking the pool for.
  const int64_t per_task = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(n, 1));
  const int64_t n_tasks = ceil_div(n_rows, per_task);
  auto body = [&](int64_t task, int) {
    const int64_t r1 = std::min(n_rows, (task + 1) * per_task);
    for (int64_t r = task * per_task; r < r1; ++r) q(x + r * x_stride, out + r * out_stride, n);
  };
  if (n_tasks == 1)
    body(0, 0);
  else
    parallel_for(n_tasks, body);
}

void gemm_rows(quant::vec_dot_fn dot, quant::vec_dot_n_fn dot_n, int n, const uint8_t *w,
               size_t w_row_bytes, int64_t r0, int64_t r1, const uint8_t *act, size_t act_stride,
               const int32_t *tok, int64_t n_tok, float *y, int64_t y_stride) {
  auto act_row = [&](int64_t i) {
    return act + static_cast<size_t>(tok != nullptr ? tok[i] : i) * act_stride;
  };
  if (dot_n == nullptr || n_tok == 1) {
    // Per token: a block of tokens stays in L2 while the weight rows pass over it.
    const int64_t tb = std::max<int64_t>(1, static_cast<int64_t>(kActBlockBytes / act_stride));
    const size_t ahead = prefetch_ahead();
    for (int64_t i0 = 0; i0 < n_tok; i0 += tb) {
      const int64_t i1 = std::min(n_tok, i0 + tb);
      for (int64_t r = r0; r < r1; ++r) {
        const uint8_t *wr = w + static_cast<size_t>(r) * w_row_bytes;
        // Ask for the bytes `ahead` past this row while it is computed: the hardware
        // streamers stop at 4 KiB page ends and ramp up slowly after each task's jump.
        if (ahead)
          for (size_t b = 0; b < w_row_bytes; b += 64) __builtin_prefetch(wr + ahead + b);
        for (int64_t i = i0; i < i1; ++i) y[i * y_stride + r] = dot(n, wr, act_row(i));
      }
    }
    return;
  }
  const void *a[quant::kMaxActs];
  for (int64_t i0 = 0; i0 < n_tok; i0 += quant::kMaxActs) {
    const int na = static_cast<int>(std::min<int64_t>(quant::kMaxActs, n_tok - i0));
    for (int j = 0; j < na; ++j) a[j] = act_row(i0 + j);
    dot_n(n, w + static_cast<size_t>(r0) * w_row_bytes, w_row_bytes, static_cast<int>(r1 - r0), a,
          na, y + i0 * y_stride + r0, static_cast<size_t>(y_stride));
  }
}

LinearOp::LinearOp(const uint8_t *w, int type, int64_t n_out, int64_t n_in, int64_t groups)
    : w_(w), type_(type), n_out_(n_out), n_in_(n_in), groups_(groups) {
  const quant::TypeInfo &t = quant::type_info(type);
  if (t.act_type < 0)
    throw std::invalid_argument(std::string(t.name) + " is an activation type, not a weight type");
  if (n_out <= 0 || groups <= 0) throw std::invalid_argument("n_out and groups must be positive");
  act_type_ = t.act_type;
  row_bytes_ = row_bytes_of(type, n_in);
  act_row_bytes_ = row_bytes_of(act_type_, n_in);
  quant::get_vec_dot(type);  // throws now rather than in a task
}

LinearOp::Plan LinearOp::plan(int64_t T, int threads) const {
  const int64_t G = groups_, out = n_out_;
  const int64_t total_rows = out * G;
  int64_t rb = rows_per_task(total_rows, threads, T, row_bytes_);
  int64_t tb = T;  // tokens per task
  if (T > 1) {
    // Prefill: ~4 row blocks per thread; when the rows give fewer tasks than that, the
    // tokens are split too (in whole groups of kMaxActs; each split re-reads its rows).
    rb = std::clamp<int64_t>(ceil_div(total_rows, threads * 4), 4, 64);
    const int64_t row_tasks = ceil_div(out, rb) * G, want = static_cast<int64_t>(threads) * 4;
    if (row_tasks < want && T > quant::kMaxActs) {
      const int64_t splits = std::min(ceil_div(want, row_tasks), ceil_div(T, quant::kMaxActs));
      tb = ceil_div(ceil_div(T, splits), quant::kMaxActs) * quant::kMaxActs;
    }
  }
  const int64_t blocks_per_group = ceil_div(out, rb), tok_blocks = ceil_div(T, tb);
  return {rb,
          tb,
          blocks_per_group,
          tok_blocks,
          blocks_per_group * G * tok_blocks,
          quant::get_vec_dot(type_),
          quant::get_vec_dot_n(type_)};
}

void LinearOp::run_task(const Plan &p, int64_t task, const uint8_t *act, int64_t T,
                        float *y) const {
  const int64_t G = groups_, in = n_in_, out = n_out_, y_stride = G * out;
  const int64_t tk = task % p.tok_blocks, rt = task / p.tok_blocks;
  const int64_t g = rt / p.blocks_per_group, b = rt % p.blocks_per_group;
  const int64_t r0 = b * p.rb, r1 = std::min(out, r0 + p.rb);
  const int64_t t0 = tk * p.tb, nt = std::min(T, t0 + p.tb) - t0;
  const size_t act_stride = static_cast<size_t>(G) * act_row_bytes_;
  gemm_rows(p.dot, p.dot_n, static_cast<int>(in), w_ + static_cast<size_t>(g * out) * row_bytes_,
            row_bytes_, r0, r1, act + static_cast<size_t>(g) * act_row_bytes_ + t0 * act_stride,
            act_stride, nullptr, nt, y + g * out + t0 * y_stride, y_stride);
}

void LinearOp::forward(const float *x, int64_t T, float *y) const {
  if (T <= 0) return;
  const int64_t n_act = T * groups_;  // activation rows: (t, g) -> t*G + g
  uint8_t *act = scratch(0, static_cast<size_t>(n_act) * act_row_bytes_);
  quantize_rows(act_type_, x, n_in_, n_act, n_in_, act, act_row_bytes_);
  const Plan p = plan(T, pool_threads());
  parallel_for(p.n_tasks, [&](int64_t task, int) { run_task(p, task, act, T, y); });
}

void LinearOp::forward_many(const std::vector<const LinearOp *> &ops, const float *x, int64_t T,
                            const std::vector<float *> &ys) {
  if (ops.size() != ys.size()) throw std::invalid_argument("forward_many: one output per op");
  if (T <= 0 || ops.empty()) return;
  const int64_t width = ops[0]->n_in_ * ops[0]->groups_;
  for (const LinearOp *op : ops)
    if (op->groups_ != 1 || op->n_in_ != width)
      throw std::invalid_argument("forward_many: the ops must share one input width, no groups");
  // x quantized once per activation type, the types in the order the ops first need them
  // (scratch slots 0, 6, 7, 8: F32, Q8_0, Q8_K and Q8_K4 are all the activation types)
  static constexpr int kSlot[4] = {0, 6, 7, 8};
  std::vector<int> types;
  std::vector<const uint8_t *> acts(ops.size());
  for (size_t i = 0; i < ops.size(); ++i) {
    const int t = ops[i]->act_type_;
    const size_t j = std::find(types.begin(), types.end(), t) - types.begin();
    if (j == 4) throw std::logic_error("forward_many: over 4 activation types");
    uint8_t *a = scratch(kSlot[j], static_cast<size_t>(T) * ops[i]->act_row_bytes_);
    if (j == types.size()) {  // a type not seen yet
      types.push_back(t);
      quantize_rows(t, x, width, T, width, a, ops[i]->act_row_bytes_);
    }
    acts[i] = a;
  }
  const int threads = pool_threads();
  std::vector<Plan> plans;
  std::vector<int64_t> first(ops.size() + 1, 0);  // op i's tasks: [first[i], first[i+1])
  for (size_t i = 0; i < ops.size(); ++i) {
    plans.push_back(ops[i]->plan(T, threads));
    first[i + 1] = first[i] + plans[i].n_tasks;
  }
  parallel_for(first.back(), [&](int64_t task, int) {
    const size_t i = std::upper_bound(first.begin(), first.end(), task) - first.begin() - 1;
    ops[i]->run_task(plans[i], task - first[i], acts[i], T, ys[i]);
  });
}

void LinearOp::rows(const int64_t *ids, int64_t n, float *out) const {
  const int64_t n_rows = n_out_ * groups_;
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= n_rows)
      throw std::invalid_argument("row id " + std::to_string(ids[i]) + " at position " +
                                  std::to_string(i) + " is not in [0, " + std::to_string(n_rows) +
                                  ")");
  const quant::TypeInfo &t = quant::type_info(type_);
  for (int64_t i = 0; i < n; ++i)
    t.dequantize(w_ + static_cast<size_t>(ids[i]) * row_bytes_, out + i * n_in_, n_in_);
}

uint64_t read_bytes(const uint8_t *p, size_t bytes) {
  constexpr size_t kChunk = 1 << 20;
  const int64_t n_tasks = static_cast<int64_t>((bytes + kChunk - 1) / kChunk);
  const int threads = pool_threads();
  std::vector<uint64_t> sums(static_cast<size_t>(threads) * 8, 0);
  parallel_for(n_tasks, [&](int64_t task, int thread) {
    const size_t b0 = static_cast<size_t>(task) * kChunk;
    const size_t b1 = std::min(bytes, b0 + kChunk);
    const uint64_t *q = reinterpret_cast<const uint64_t *>(p + b0);
    const size_t n = (b1 - b0) / 8;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      s0 += q[i];
      s1 += q[i + 1];
      s2 += q[i + 2];
      s3 += q[i + 3];
      s4 += q[i + 4];
      s5 += q[i + 5];
      s6 += q[i + 6];
      s7 += q[i + 7];
    }
    for (; i < n; ++i) s0 += q[i];
    for (size_t j = b0 + n * 8; j < b1; ++j) s1 += p[j];
    sums[static_cast<size_t>(thread) * 8] += s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7;
  });
  uint64_t s = 0;
  for (size_t t = 0; t < sums.size(); t += 8) s += sums[t];
  return s;
}

}  // namespace numoe
