// Row-sparse Adam for the CPU field tables (tf4ctr_fast/embedding/sparse_adam.py), fused into the
// backward of their lookup: the gradient rows of one batch are accumulated per distinct table row and
// each such row takes one Adam step, in place, in FBGEMM's flat table storage.
//
// Replay (replay = true): before its step, a row first takes the steps it missed since it was last
// looked up, each with the gradient decay * w that the whole-table L2 term (decay/2)*||W||^2 gives a
// row no batch looked up. Dense Adam over the whole table (the reference backend) takes exactly those
// steps every batch, so the table ends up where dense Adam leaves it, at the cost of the touched rows
// only. catch_up brings every row to the current step (before evaluation and checkpoints).
//
// The arithmetic follows torch.optim.Adam's single-tensor path step for step (bias corrections in
// double, applied as float), so both agree to float rounding; the reference twin is
// tf4ctr_fast/reference/sparse_adam.py.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "target_clones.h"

namespace {

struct AdamScalars {
  float beta1, beta2, eps, decay;
  double lr, dbeta1, dbeta2;
  // grad_scales[step]: the factor of that step's gradients (the trainer's clipping, RowSparseAdam.clip);
  // nullptr: 1 for every step.
  const float* grad_scales = nullptr;
  float scale(int64_t step) const { return grad_scales ? grad_scales[step] : 1.0f; }
};

// Per-step scalars of torch.optim.Adam: lr / (1 - beta1^step) and sqrt(1 - beta2^step), computed in
// double and applied as float, like torch's Python scalars.
struct StepScalars {
  float step_size, bias2_sqrt;
};

inline StepScalars step_scalars(const AdamScalars& s, double beta1_pow, double beta2_pow) {
  return {static_cast<float>(s.lr / (1.0 - beta1_pow)), static_cast<float>(std::sqrt(1.0 - beta2_pow))};
}

inline void adam_coordinate(float& w, float& m, float& v, float g, StepScalars k, float one_minus_beta1, float beta2,
                            float one_minus_beta2, float eps) {
  m = m + one_minus_beta1 * (g - m);                     // exp_avg.lerp_(g, 1 - beta1)
  v = v * beta2 + one_minus_beta2 * g * g;              // exp_avg_sq.mul_(beta2).addcmul_(g, g, 1 - beta2)
  const float denom = std::sqrt(v) / k.bias2_sqrt + eps;
  w = w + (-k.step_size) * m / denom;                    // param.addcdiv_(m, denom, -step_size)
}

// One Adam step on n coordinates with the given gradient; k and scale are the step's (the same for
// every row of a call, so the caller computes them once).
TF4CTR_CLONES
void adam_step(float* __restrict w, float* __restrict m, float* __restrict v, const float* __restrict grad,
               int64_t n, StepScalars k, float scale, const AdamScalars& s) {
  const float one_minus_beta1 = static_cast<float>(1.0 - s.dbeta1);   // torch: 1 - beta in double
  const float one_minus_beta2 = static_cast<float>(1.0 - s.dbeta2);
  for (int64_t d = 0; d < n; ++d) adam_coordinate(w[d], m[d], v[d], grad[d] * scale, k, one_minus_beta1, s.beta2,
                                                  one_minus_beta2, s.eps);
}

// A row that owes steps from..to (inclusive), each with the gradient decay * w.
struct Owed {
  float* w;
  float* m;
  float* v;
  int64_t from, to;
};

// StepScalars of steps 1..until, beta^step by std::pow as in adam_step. Replays read them from here:
// computing them per row and step (a double division and square root each) cost as much as the
// row's own arithmetic. Kept between calls (a training run's steps only grow) and rebuilt when the
// hyper-parameters change; built by the calling thread before any parallel section reads it.
const StepScalars* step_table(const AdamScalars& s, int64_t until) {
  thread_local std::vector<StepScalars> table;
  thread_local double lr = -1.0, beta1 = -1.0, beta2 = -1.0;
  if (lr != s.lr || beta1 != s.dbeta1 || beta2 != s.dbeta2) {
    table.assign(1, StepScalars{0.0f, 0.0f});   // step 0 is never taken
    lr = s.lr, beta1 = s.dbeta1, beta2 = s.dbeta2;
  }
  for (int64_t t = static_cast<int64_t>(table.size()); t <= until; ++t)
    table.push_back(step_scalars(s, std::pow(s.dbeta1, static_cast<double>(t)), std::pow(s.dbeta2, static_cast<double>(t))));
  return table.data();
}

constexpr int kGroup = 8;

// Replays up to kGroup rows of `dim` coordinates side by side. One row's steps form a long latency
// chain (a square root and two divisions per step); different rows are independent, so stepping the
// rows in turn gives the core several chains to overlap. DIM > 0 fixes the row width at compile time
// (the inner loop becomes whole vectors), DIM = 0 reads it from `dim`.
template <int DIM>
TF4CTR_CLONES
void replay_group(const Owed* rows, int count, int64_t dim, const StepScalars* steps, const AdamScalars& s) {
  const int64_t n = DIM > 0 ? DIM : dim;
  const float one_minus_beta1 = static_cast<float>(1.0 - s.dbeta1);
  const float one_minus_beta2 = static_cast<float>(1.0 - s.dbeta2);
  const float beta2 = s.beta2, eps = s.eps, decay = s.decay;
  int64_t next[kGroup];
  for (int i = 0; i < count; ++i) next[i] = rows[i].from;
  for (bool active = true; active;) {
    active = false;
    for (int i = 0; i < count; ++i) {
      if (next[i] > rows[i].to) continue;
      active = true;
      const StepScalars k = steps[next[i]];
      const float scale = s.scale(next[i]);
      float* __restrict w = rows[i].w;
      float* __restrict m = rows[i].m;
      float* __restrict v = rows[i].v;
      // Not unrolled: GCC unrolls a loop of 8 whole before its vectorizer sees it and then leaves it
      // scalar (a row of 8 floats, SER's easy table at d = 16, replayed 9x slower than a row of 16).
#pragma GCC unroll 1
      for (int64_t d = 0; d < n; ++d) adam_coordinate(w[d], m[d], v[d], decay * w[d] * scale, k, one_minus_beta1,
                                                      beta2, one_minus_beta2, eps);
      ++next[i];
    }
  }
}

// Collects rows that owe steps and replays them kGroup at a time (a group holds rows of one width).
class Replayer {
 public:
  // steps: step_table(s, until) for the largest `until` this replayer will be given.
  Replayer(const AdamScalars& s, const StepScalars* steps) : s_(s), steps_(steps) {}
  ~Replayer() { flush(); }
  // Row at w/m/v (n coordinates) brought from row_step to `until`; row_step is set now.
  void owe(float* w, float* m, float* v, int64_t n, int64_t& row_step, int64_t until) {
    if (row_step < until) {
      if (n != dim_) flush();
      dim_ = n;
      for (float* p : {w, m, v}) {   // the group's rows arrive from memory while the previous group runs
        __builtin_prefetch(p);
        __builtin_prefetch(p + n - 1);
      }
      rows_[count_++] = {w, m, v, row_step + 1, until};
      if (count_ == kGroup) flush();
    }
    row_step = until;
  }
  void flush() {
    if (count_ == 0) return;
    switch (dim_) {
      case 8: replay_group<8>(rows_, count_, dim_, steps_, s_); break;
      case 16: replay_group<16>(rows_, count_, dim_, steps_, s_); break;
      case 32: replay_group<32>(rows_, count_, dim_, steps_, s_); break;
      default: replay_group<0>(rows_, count_, dim_, steps_, s_);
    }
    count_ = 0;
  }

 private:
  const AdamScalars& s_;
  const StepScalars* steps_;
  Owed rows_[kGroup];
  int count_ = 0;
  int64_t dim_ = -1;
};

struct Tables {
  const int64_t* weights_offsets;
  const int32_t* d_offsets;
  const int64_t* hash_size_cumsum;
  int64_t num_tables;
};

// The tables' layout tensors (FBGEMM's TBE): dtypes and one entry per table (plus one).
void check_layout(const at::Tensor& weights_offsets, const at::Tensor& d_offsets, const at::Tensor& hash_size_cumsum) {
  TORCH_CHECK(weights_offsets.scalar_type() == at::kLong && hash_size_cumsum.scalar_type() == at::kLong &&
                  d_offsets.scalar_type() == at::kInt,
              "sparse_adam: weights_offsets/hash_size_cumsum int64, D_offsets int32 (FBGEMM's TBE layout)");
  const int64_t num_tables = weights_offsets.numel();
  TORCH_CHECK(d_offsets.numel() == num_tables + 1 && hash_size_cumsum.numel() == num_tables + 1,
              "sparse_adam: D_offsets and hash_size_cumsum need one entry per table plus one");
}

void check_state(const at::Tensor& weights, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                 const at::Tensor& row_step, const at::Tensor& weights_offsets, const at::Tensor& d_offsets,
                 const at::Tensor& hash_size_cumsum) {
  for (const auto* t : {&weights, &exp_avg, &exp_avg_sq}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous() && t->dim() == 1,
                "sparse_adam: weights and Adam state must be contiguous 1-D float32 CPU tensors");
    TORCH_CHECK(t->numel() == weights.numel(), "sparse_adam: Adam state sized unlike the weights");
  }
  TORCH_CHECK(row_step.scalar_type() == at::kLong && row_step.is_contiguous(), "sparse_adam: row_step int64");
  check_layout(weights_offsets, d_offsets, hash_size_cumsum);
  TORCH_CHECK(row_step.numel() == hash_size_cumsum[weights_offsets.numel()].item<int64_t>(),
              "sparse_adam: row_step needs one entry per table row");
}

AdamScalars scalars(double lr, double beta1, double beta2, double eps, double decay,
                    const c10::optional<at::Tensor>& grad_scales, int64_t last_step) {
  AdamScalars s{static_cast<float>(beta1), static_cast<float>(beta2), static_cast<float>(eps),
                static_cast<float>(decay), lr, beta1, beta2};
  if (grad_scales.has_value()) {
    TORCH_CHECK(grad_scales->scalar_type() == at::kFloat && grad_scales->is_contiguous() &&
                    grad_scales->numel() > last_step,
                "sparse_adam: grad_scales must be a contiguous float32 tensor with an entry per step");
    s.grad_scales = grad_scales->data_ptr<float>();
  }
  return s;
}

// Calls fn(table, sample, global row) for every looked-up row, bag by bag (bags table-major: bag
// t * batch + b), after checking its id against its table.
template <typename index_t, typename Fn>
void for_each_lookup(const Tables& tables, const index_t* indices, const index_t* offsets, int64_t batch, Fn fn) {
  for (int64_t t = 0; t < tables.num_tables; ++t) {
    const int64_t first_row = tables.hash_size_cumsum[t], rows = tables.hash_size_cumsum[t + 1] - first_row;
    for (int64_t b = 0; b < batch; ++b) {
      for (index_t i = offsets[t * batch + b]; i < offsets[t * batch + b + 1]; ++i) {
        const int64_t id = static_cast<int64_t>(indices[i]);
        TORCH_CHECK(id >= 0 && id < rows, "sparse_adam: index ", id, " out of range for table ", t);
        fn(t, b, first_row + id);
      }
    }
  }
}

// Scratch that maps a global row to its position among a batch's distinct rows (-1: not seen), so
// finding them costs O(looked-up rows), not O(vocabulary). Sized once per table layout, and every
// entry a call sets is reset before it returns.
std::vector<int32_t>& row_slots(int64_t total_rows) {
  thread_local std::vector<int32_t> slot;
  if (static_cast<int64_t>(slot.size()) != total_rows) slot.assign(total_rows, -1);
  return slot;
}

inline int64_t row_position(const Tables& tables, int64_t t, int64_t r) {
  const int64_t dim = tables.d_offsets[t + 1] - tables.d_offsets[t];
  return tables.weights_offsets[t] + (r - tables.hash_size_cumsum[t]) * dim;
}

// A batch's distinct rows in order of first appearance, each with its gradient summed in that order.
struct RowGrads {
  std::vector<int64_t> rows, row_table, row_buf;
  std::vector<float> buf;
};

template <typename index_t>
RowGrads accumulate_rows(const Tables& tables, const index_t* indices, const index_t* offsets, int64_t batch,
                         const float* grad_out, int64_t total_d) {
  auto& slot = row_slots(tables.hash_size_cumsum[tables.num_tables]);
  RowGrads g;
  for_each_lookup(tables, indices, offsets, batch, [&](int64_t t, int64_t b, int64_t r) {
    const int64_t d0 = tables.d_offsets[t], dim = tables.d_offsets[t + 1] - d0;
    if (slot[r] < 0) {
      slot[r] = static_cast<int32_t>(g.rows.size());
      g.rows.push_back(r);
      g.row_table.push_back(t);
      g.row_buf.push_back(static_cast<int64_t>(g.buf.size()));
      g.buf.resize(g.buf.size() + dim, 0.0f);
    }
    float* acc = g.buf.data() + g.row_buf[slot[r]];
    const float* src = grad_out + b * total_d + d0;
    for (int64_t d = 0; d < dim; ++d) acc[d] += src[d];
  });
  for (int64_t r : g.rows) slot[r] = -1;
  return g;
}

template <typename index_t>
void step_rows(float* w, float* m, float* v, int64_t* row_step, const Tables& tables, const index_t* indices,
               const index_t* offsets, int64_t batch, const float* grad_out, int64_t total_d, int64_t step,
               bool replay, const AdamScalars& s) {
  const RowGrads g = accumulate_rows(tables, indices, offsets, batch, grad_out, total_d);
  const StepScalars* steps = replay ? step_table(s, step - 1) : nullptr;
  const StepScalars k = step_scalars(s, std::pow(s.dbeta1, static_cast<double>(step)),
                                     std::pow(s.dbeta2, static_cast<double>(step)));
  const float scale = s.scale(step);
  at::parallel_for(0, static_cast<int64_t>(g.rows.size()), 64, [&](int64_t begin, int64_t end) {
    {
      Replayer owed(s, steps);   // the steps a row still owes come first (none after the lookup's catch-up)
      for (int64_t u = begin; u < end; ++u) {
        const int64_t t = g.row_table[u], pos = row_position(tables, t, g.rows[u]);
        int64_t& last = row_step[g.rows[u]];
        if (replay) owed.owe(w + pos, m + pos, v + pos, tables.d_offsets[t + 1] - tables.d_offsets[t], last, step - 1);
      }
    }
    for (int64_t u = begin; u < end; ++u) {
      const int64_t t = g.row_table[u], pos = row_position(tables, t, g.rows[u]);
      adam_step(w + pos, m + pos, v + pos, g.buf.data() + g.row_buf[u], tables.d_offsets[t + 1] - tables.d_offsets[t], k,
                scale, s);
      row_step[g.rows[u]] = step;
    }
  });
}

// The looked-up rows that are behind step `until`, replayed up to it.
template <typename index_t>
void catch_up_rows(float* w, float* m, float* v, int64_t* row_step, const Tables& tables, const index_t* indices,
                   const index_t* offsets, int64_t batch, int64_t until, const AdamScalars& s) {
  auto& slot = row_slots(tables.hash_size_cumsum[tables.num_tables]);
  std::vector<int64_t> rows, row_table;
  for_each_lookup(tables, indices, offsets, batch, [&](int64_t t, int64_t b, int64_t r) {
    if (row_step[r] < until && slot[r] < 0) {
      slot[r] = 0;
      rows.push_back(r);
      row_table.push_back(t);
    }
  });
  for (int64_t r : rows) slot[r] = -1;
  const StepScalars* steps = step_table(s, until);
  at::parallel_for(0, static_cast<int64_t>(rows.size()), 64, [&](int64_t begin, int64_t end) {
    Replayer owed(s, steps);
    for (int64_t u = begin; u < end; ++u) {
      const int64_t t = row_table[u], pos = row_position(tables, t, rows[u]);
      owed.owe(w + pos, m + pos, v + pos, tables.d_offsets[t + 1] - tables.d_offsets[t], row_step[rows[u]], until);
    }
  });
}

void check_bags(const at::Tensor& indices, const at::Tensor& offsets, int64_t num_tables) {
  TORCH_CHECK(indices.scalar_type() == offsets.scalar_type() &&
                  (indices.scalar_type() == at::kInt || indices.scalar_type() == at::kLong),
              "sparse_adam: indices and offsets must share an integer dtype (int32 or int64)");
  TORCH_CHECK((offsets.numel() - 1) % num_tables == 0, "sparse_adam: offsets need tables * batch + 1 entries");
}

// grad_output of the lookup, contiguous: float32 [batch, total_D], batch matching the bags and total_D
// the layout's (the kernels index it by both).
at::Tensor checked_grad(const at::Tensor& grad_output, const at::Tensor& offsets, const at::Tensor& d_offsets,
                        int64_t num_tables) {
  auto grad = grad_output.contiguous();
  TORCH_CHECK(grad.scalar_type() == at::kFloat && grad.dim() == 2, "sparse_adam: grad_output float32 [B, total_D]");
  TORCH_CHECK(offsets.numel() == num_tables * grad.size(0) + 1, "sparse_adam: offsets need tables * batch + 1 entries");
  TORCH_CHECK(d_offsets[num_tables].item<int32_t>() == grad.size(1), "sparse_adam: grad_output width != total_D");
  return grad;
}

// The lookup's backward with the optimizer step fused in. indices/offsets are the TBE's (bags
// table-major: bag t * batch + b), grad_output [batch, total_D] the gradient of its pooled output.
void sparse_adam_step(at::Tensor weights, at::Tensor exp_avg, at::Tensor exp_avg_sq, at::Tensor row_step,
                      const at::Tensor& weights_offsets, const at::Tensor& d_offsets,
                      const at::Tensor& hash_size_cumsum, const at::Tensor& indices, const at::Tensor& offsets,
                      const at::Tensor& grad_output, const c10::optional<at::Tensor>& grad_scales, int64_t step,
                      double lr, double beta1, double beta2, double eps, double decay, bool replay) {
  check_state(weights, exp_avg, exp_avg_sq, row_step, weights_offsets, d_offsets, hash_size_cumsum);
  TORCH_CHECK(step >= 1, "sparse_adam: steps count from 1");
  const int64_t num_tables = weights_offsets.numel();
  check_bags(indices, offsets, num_tables);
  const auto grad = checked_grad(grad_output, offsets, d_offsets, num_tables);
  const int64_t batch = grad.size(0), total_d = grad.size(1);
  const auto idx = indices.contiguous(), off = offsets.contiguous();
  const Tables tables{weights_offsets.data_ptr<int64_t>(), d_offsets.data_ptr<int32_t>(),
                      hash_size_cumsum.data_ptr<int64_t>(), num_tables};
  const auto s = scalars(lr, beta1, beta2, eps, decay, grad_scales, step);
  AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "sparse_adam_step", [&] {
    step_rows<index_t>(weights.data_ptr<float>(), exp_avg.data_ptr<float>(), exp_avg_sq.data_ptr<float>(),
                       row_step.data_ptr<int64_t>(), tables, idx.data_ptr<index_t>(), off.data_ptr<index_t>(),
                       batch, grad.data_ptr<float>(), total_d, step, replay, s);
  });
}

// Rows replayed up to step `step` (their missed steps taken, no new one): the rows of the bags
// indices/offsets when given (before a lookup reads them), else every row.
void sparse_adam_catch_up(at::Tensor weights, at::Tensor exp_avg, at::Tensor exp_avg_sq, at::Tensor row_step,
                          const at::Tensor& weights_offsets, const at::Tensor& d_offsets,
                          const at::Tensor& hash_size_cumsum, const c10::optional<at::Tensor>& indices,
                          const c10::optional<at::Tensor>& offsets, const c10::optional<at::Tensor>& grad_scales,
                          int64_t step, double lr, double beta1, double beta2, double eps, double decay) {
  check_state(weights, exp_avg, exp_avg_sq, row_step, weights_offsets, d_offsets, hash_size_cumsum);
  const int64_t num_tables = weights_offsets.numel();
  const Tables tables{weights_offsets.data_ptr<int64_t>(), d_offsets.data_ptr<int32_t>(),
                      hash_size_cumsum.data_ptr<int64_t>(), num_tables};
  float *w = weights.data_ptr<float>(), *m = exp_avg.data_ptr<float>(), *v = exp_avg_sq.data_ptr<float>();
  int64_t* rs = row_step.data_ptr<int64_t>();
  const auto s = scalars(lr, beta1, beta2, eps, decay, grad_scales, step);
  TORCH_CHECK(indices.has_value() == offsets.has_value(), "sparse_adam: give both indices and offsets, or neither");
  if (indices.has_value()) {
    check_bags(*indices, *offsets, num_tables);
    const auto idx = indices->contiguous(), off = offsets->contiguous();
    const int64_t batch = (off.numel() - 1) / num_tables;
    AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "sparse_adam_catch_up", [&] {
      catch_up_rows<index_t>(w, m, v, rs, tables, idx.data_ptr<index_t>(), off.data_ptr<index_t>(), batch, step, s);
    });
    return;
  }
  const StepScalars* steps = step_table(s, step);
  for (int64_t t = 0; t < num_tables; ++t) {
    const int64_t dim = tables.d_offsets[t + 1] - tables.d_offsets[t];
    at::parallel_for(tables.hash_size_cumsum[t], tables.hash_size_cumsum[t + 1], 256, [&](int64_t begin, int64_t end) {
      Replayer owed(s, steps);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t pos = row_position(tables, t, r);
        owed.owe(w + pos, m + pos, v + pos, dim, rs[r], step);
      }
    });
  }
}

// Sum of squares of the batch's gradient summed per distinct row (what a dense table's .grad holds
// on those rows): the tables' part of the gradient norm that the trainer clips.
double sparse_adam_grad_norm_sq(const at::Tensor& weights_offsets, const at::Tensor& d_offsets,
                                const at::Tensor& hash_size_cumsum, const at::Tensor& indices,
                                const at::Tensor& offsets, const at::Tensor& grad_output) {
  check_layout(weights_offsets, d_offsets, hash_size_cumsum);
  const int64_t num_tables = weights_offsets.numel();
  check_bags(indices, offsets, num_tables);
  const auto grad = checked_grad(grad_output, offsets, d_offsets, num_tables);
  const auto idx = indices.contiguous(), off = offsets.contiguous();
  const Tables tables{weights_offsets.data_ptr<int64_t>(), d_offsets.data_ptr<int32_t>(),
                      hash_size_cumsum.data_ptr<int64_t>(), num_tables};
  double total = 0.0;
  AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "sparse_adam_grad_norm_sq", [&] {
    const RowGrads g = accumulate_rows(tables, idx.data_ptr<index_t>(), off.data_ptr<index_t>(), grad.size(0),
                                       grad.data_ptr<float>(), grad.size(1));
    for (float x : g.buf) total += static_cast<double>(x) * x;
  });
  return total;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tf4ctr_fast, m) {
  m.def(
      "sparse_adam_step(Tensor(a!) weights, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor(d!) row_step, "
      "Tensor weights_offsets, Tensor D_offsets, Tensor hash_size_cumsum, Tensor indices, Tensor offsets, "
      "Tensor grad_output, Tensor? grad_scales, int step, float lr, float beta1, float beta2, float eps, "
      "float decay, bool replay) -> ()");
  m.def(
      "sparse_adam_catch_up(Tensor(a!) weights, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, "
      "Tensor(d!) row_step, Tensor weights_offsets, Tensor D_offsets, Tensor hash_size_cumsum, "
      "Tensor? indices, Tensor? offsets, Tensor? grad_scales, int step, float lr, float beta1, float beta2, "
      "float eps, float decay) -> ()");
  m.def(
      "sparse_adam_grad_norm_sq(Tensor weights_offsets, Tensor D_offsets, Tensor hash_size_cumsum, "
      "Tensor indices, Tensor offsets, Tensor grad_output) -> float");
}

TORCH_LIBRARY_IMPL(tf4ctr_fast, CPU, m) {
  m.impl("sparse_adam_step", &sparse_adam_step);
  m.impl("sparse_adam_catch_up", &sparse_adam_catch_up);
  m.impl("sparse_adam_grad_norm_sq", &sparse_adam_grad_norm_sq);
}
