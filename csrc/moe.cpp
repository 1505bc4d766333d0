#include "moe.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <stdexcept>
#include <string>

#include "linear.hpp"
#include "quant/quant.hpp"
#include "threadpool.hpp"

namespace numoe {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

MoEOp::MoEOp(std::vector<const uint8_t *> gate, std::vector<const uint8_t *> up,
             std::vector<const uint8_t *> down, int gate_type, int up_type, int down_type,
             int64_t n_expert, int64_t n_ff, int64_t n_embd)
    : MoEOp({MoESlice{std::move(gate), std::move(up), std::move(down), 0, n_ff, 0, -1}}, gate_type,
            up_type, down_type, n_expert, n_ff, n_embd) {}

MoEOp::MoEOp(std::vector<MoESlice> slices, int gate_type, int up_type, int down_type,
             int64_t n_expert, int64_t n_ff, int64_t n_embd)
    : slices_(std::move(slices)),
      gate_type_(gate_type),
      up_type_(up_type),
      down_type_(down_type),
      E_(n_expert),
      F_(n_ff),
      D_(n_embd) {
  if (E_ <= 0 || F_ <= 0 || D_ <= 0)
    throw std::invalid_argument("n_expert, n_ff and n_embd must be positive");
  for (int t : {gate_type_, up_type_, down_type_}) {
    const quant::TypeInfo &ti = quant::type_info(t);
    if (ti.act_type < 0)
      throw std::invalid_argument(std::string(ti.name) +
                                  " is an activation type, not a weight type");
    quant::get_vec_dot(t);
  }
  row_bytes_of(gate_type_, D_);
  row_bytes_of(up_type_, D_);
  row_bytes_of(down_type_, F_);
  row_bytes_of(quant::type_info(gate_type_).act_type, D_);
  row_bytes_of(quant::type_info(up_type_).act_type, D_);
  const int act_d = quant::type_info(down_type_).act_type;
  row_bytes_of(act_d, F_);
  if (slices_.empty()) throw std::invalid_argument("MoE: at least one slice");
  int64_t f = 0;
  for (auto &sl : slices_) {
    if (static_cast<int64_t>(sl.gate.size()) != E_ || static_cast<int64_t>(sl.up.size()) != E_ ||
        static_cast<int64_t>(sl.down.size()) != E_)
      throw std::invalid_argument("need one gate, up and down pointer per expert");
    if (sl.f0 != f || sl.n_ff <= 0)
      throw std::invalid_argument("MoE slices must cover [0, n_ff) in order, each non-empty");
    if (slices_.size() > 1 && sl.group < 0)
      throw std::invalid_argument("MoE: with several slices each needs a pool group >= 0");
    // Boundaries on whole blocks: the sub-rows are valid rows of the down (and act) type.
    const size_t rb = row_bytes_of(down_type_, sl.n_ff);
    row_bytes_of(act_d, sl.n_ff);
    if (sl.f0 > 0) {
      row_bytes_of(down_type_, sl.f0);
      row_bytes_of(act_d, sl.f0);
    }
    if (sl.down_stride == 0) sl.down_stride = rb;
    if (sl.down_stride < rb) throw std::invalid_argument("MoE slice: down stride < row bytes");
    f += sl.n_ff;
  }
  if (f != F_) throw std::invalid_argument("MoE slices must cover [0, n_ff)");
}

size_t MoEOp::gate_bytes() const { return row_bytes_of(gate_type_, D_) * static_cast<size_t>(F_); }
size_t MoEOp::up_bytes() const { return row_bytes_of(up_type_, D_) * static_cast<size_t>(F_); }
size_t MoEOp::down_bytes() const { return row_bytes_of(down_type_, F_) * static_cast<size_t>(D_); }

void MoEOp::forward(const float *x, int64_t T, const void *ids_raw, bool ids64, int64_t k,
                    const float *w, float *out) const {
  if (T <= 0) return;
  if (k <= 0) throw std::invalid_argument("k must be positive");
  const int64_t n_pairs = T * k;
  auto id_at = [&](int64_t i) -> int64_t {
    return ids64 ? static_cast<const int64_t *>(ids_raw)[i]
                 : static_cast<const int32_t *>(ids_raw)[i];
  };
  // 1. validate, count, and group (token, slot) pairs by expert, in token order.
  std::vector<int64_t> count(E_ + 1, 0);
  for (int64_t i = 0; i < n_pairs; ++i) {
    const int64_t e = id_at(i);
    if (e < 0 || e >= E_)
      throw std::invalid_argument("expert id " + std::to_string(e) + " at [" +
                                  std::to_string(i / k) + ", " + std::to_string(i % k) +
                                  "] is not in [0, " + std::to_string(E_) + ")");
    ++count[e];
  }
  std::vector<int64_t> offset(E_ + 1, 0);
  for (int64_t e = 0; e < E_; ++e) offset[e + 1] = offset[e] + count[e];
  std::vector<int32_t> pair_tok(n_pairs);  // pair p (grouped by expert) -> token
  std::vector<int64_t> pair_of(n_pairs);   // t*k + j -> pair
  {
    std::vector<int64_t> fill(offset.begin(), offset.end() - 1);
    for (int64_t i = 0; i < n_pairs; ++i) {
      const int64_t p = fill[id_at(i)]++;
      pair_tok[p] = static_cast<int32_t>(i / k);
      pair_of[i] = p;
    }
  }
  // Active experts, most used first (ties by id): big task groups start early.
  std::vector<int64_t> active;
  for (int64_t e = 0; e < E_; ++e)
    if (count[e] > 0) active.push_back(e);
  std::stable_sort(active.begin(), active.end(),
                   [&](int64_t a, int64_t b) { return count[a] > count[b]; });
  const int64_t n_active = static_cast<int64_t>(active.size());
  const int threads = pool_threads();

  // 2. quantize x once (twice if gate and up pair with different activation types).
  const int act_g = quant::type_info(gate_type_).act_type;
  const int act_u = quant::type_info(up_type_).act_type;
  const size_t xg_bytes = row_bytes_of(act_g, D_), xu_bytes = row_bytes_of(act_u, D_);
  uint8_t *xg = scratch(1, xg_bytes * T);
  quantize_rows(act_g, x, D_, T, D_, xg, xg_bytes);
  uint8_t *xu = xg;
  if (act_u != act_g) {
    xu = scratch(2, xu_bytes * T);
    quantize_rows(act_u, x, D_, T, D_, xu, xu_bytes);
  }

  // Tasks of slice s: one pool call for all slices, each on its group (run_slices).
  const int64_t S = static_cast<int64_t>(slices_.size());
  auto run_slices = [&](const std::vector<int64_t> &n,
                        const std::function<void(int64_t, int64_t)> &body) {
    if (S == 1 && slices_[0].group < 0) {
      parallel_for(n[0], [&](int64_t task, int) { body(0, task); });
      return;
    }
    std::vector<int> group(S);
    for (int64_t s = 0; s < S; ++s) group[s] = slices_[s].group;
    ThreadPool::instance().parallel_for_groups(
        n, group, [&](int64_t s, int64_t task, int) { body(s, task); });
  };
  auto slice_threads = [&](const MoESlice &sl) {
    return sl.group < 0 ? threads : ThreadPool::instance().group_threads(sl.group);
  };

  // 3. gate/up: h[p, r] = SiLU(gate_e[r] . x[tok p]) * (up_e[r] . x[tok p]).
  float *h = reinterpret_cast<float *>(scratch(3, sizeof(float) * n_pairs * F_));
  {
    const quant::vec_dot_fn dg = quant::get_vec_dot(gate_type_);
    const quant::vec_dot_fn du = quant::get_vec_dot(up_type_);
    const quant::vec_dot_n_fn dgn = quant::get_vec_dot_n(gate_type_);
    const quant::vec_dot_n_fn dun = quant::get_vec_dot_n(up_type_);
    const size_t gb = row_bytes_of(gate_type_, D_), ub = row_bytes_of(up_type_, D_);
    std::vector<int64_t> rb(S), nb(S), n(S);
    for (int64_t s = 0; s < S; ++s) {
      rb[s] =
          rows_per_task(slices_[s].n_ff * n_active, slice_threads(slices_[s]), T, std::max(gb, ub));
      nb[s] = ceil_div(slices_[s].n_ff, rb[s]);
      n[s] = n_active * nb[s];
    }
    // Per task: gate and up values of a block of tokens go to small buffers, then combine.
    run_slices(n, [&](int64_t s, int64_t task) {
      const MoESlice &sl = slices_[s];
      const int64_t e = active[task / nb[s]];
      const int64_t r_begin = sl.f0 + (task % nb[s]) * rb[s];
      const int64_t r_end = std::min(sl.f0 + sl.n_ff, r_begin + rb[s]);
      const int64_t n_tok = count[e];
      const int32_t *tok = pair_tok.data() + offset[e];
      float *he = h + offset[e] * F_;
      // Sub-blocks of 64 rows x 32 tokens: gate then up for the same block while x is hot.
      constexpr int64_t kRows = 64, kTok = 32;
      float g[kRows * kTok], u[kRows * kTok];  // [token][row - r0]
      for (int64_t r0 = r_begin; r0 < r_end; r0 += kRows) {
        const int64_t nr = std::min(r_end - r0, kRows);
        const uint8_t *ge = sl.gate[e] + static_cast<size_t>(r0 - sl.f0) * gb;
        const uint8_t *ue = sl.up[e] + static_cast<size_t>(r0 - sl.f0) * ub;
        for (int64_t i0 = 0; i0 < n_tok; i0 += kTok) {
          const int64_t nt = std::min(n_tok - i0, kTok);
          gemm_rows(dg, dgn, static_cast<int>(D_), ge, gb, 0, nr, xg, xg_bytes, tok + i0, nt, g,
                    kRows);
          gemm_rows(du, dun, static_cast<int>(D_), ue, ub, 0, nr, xu, xu_bytes, tok + i0, nt, u,
                    kRows);
          for (int64_t i = 0; i < nt; ++i)
            for (int64_t r = 0; r < nr; ++r) {
              const float a = g[i * kRows + r];
              he[(i0 + i) * F_ + r0 + r] = a / (1.0f + std::exp(-a)) * u[i * kRows + r];
            }
        }
      }
    });
  }

  // 4. quantize h rows to the down weight's activation type.
  const int act_d = quant::type_info(down_type_).act_type;
  const size_t hq_bytes = row_bytes_of(act_d, F_);
  uint8_t *hq = scratch(4, hq_bytes * n_pairs);
  quantize_rows(act_d, h, F_, n_pairs, F_, hq, hq_bytes);

  // 5. down: y_s[p, r] = down_e[r][slice s columns] . h[p][slice s columns].
  float *y = reinterpret_cast<float *>(scratch(5, sizeof(float) * n_pairs * D_ * S));
  {
    const quant::vec_dot_fn dd = quant::get_vec_dot(down_type_);
    const quant::vec_dot_n_fn ddn = quant::get_vec_dot_n(down_type_);
    std::vector<int64_t> rb(S), nb(S), n(S);
    std::vector<size_t> col(S);
    for (int64_t s = 0; s < S; ++s) {
      const MoESlice &sl = slices_[s];
      col[s] = sl.f0 > 0 ? row_bytes_of(act_d, sl.f0) : 0;
      rb[s] = rows_per_task(D_ * n_active, slice_threads(sl), T, sl.down_stride);
      nb[s] = ceil_div(D_, rb[s]);
      n[s] = n_active * nb[s];
    }
    run_slices(n, [&](int64_t s, int64_t task) {
      const MoESlice &sl = slices_[s];
      const int64_t e = active[task / nb[s]];
      const int64_t r0 = (task % nb[s]) * rb[s], r1 = std::min(D_, r0 + rb[s]);
      gemm_rows(dd, ddn, static_cast<int>(sl.n_ff), sl.down[e], sl.down_stride, r0, r1,
                hq + static_cast<size_t>(offset[e]) * hq_bytes + col[s], hq_bytes, nullptr,
                count[e], y + (s * n_pairs + offset[e]) * D_, D_);
    });
  }

  // 6. out[t] = sum_j w[t, j] * y[pair(t, j)], j in order.
  auto reduce = [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      float *o = out + t * D_;
      std::fill(o, o + D_, 0.0f);
      for (int64_t j = 0; j < k; ++j) {
        const float wj = w[t * k + j];
        const float *yp = y + pair_of[t * k + j] * D_;
        if (S == 1) {
          for (int64_t d = 0; d < D_; ++d) o[d] += wj * yp[d];
          continue;
        }
        for (int64_t d = 0; d < D_; ++d) {  // slices summed in order, then weighted
          float v = yp[d];
          for (int64_t s = 1; s < S; ++s) v += yp[s * n_pairs * D_ + d];
          o[d] += wj * v;
        }
      }
    }
  };
  const int64_t tpt = std::max<int64_t>(1, (1 << 15) / (D_ * k));  // tokens per task
  const int64_t n_red = ceil_div(T, tpt);
  if (n_red == 1)
    reduce(0, T);
  else
    parallel_for(n_red,
                 [&](int64_t task, int) { reduce(task * tpt, std::min(T, (task + 1) * tpt)); });
}

}  // namespace numoe
