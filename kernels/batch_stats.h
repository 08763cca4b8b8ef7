// Per-channel batch statistics shared by the BatchNorm kernels (exp_batch_norm.cpp, batch_norm_relu.cpp):
// rows of `n` channels, channels contiguous. Sums are accumulated in double, per thread, over values
// shifted by the first row's (one pass), so a channel with a large mean and a small spread keeps its
// variance.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "target_clones.h"

namespace {

constexpr int64_t kRowGrain = 256;   // rows per parallel chunk

// Per-thread rows of `n` doubles (the reductions run over rows in parallel), summed at the end.
struct ThreadSums {
  ThreadSums(int64_t rows, int64_t n) : rows(rows), n(n), threads(at::get_num_threads()),
                                        buf(static_cast<size_t>(threads * rows * n), 0.0) {}
  double* of(int64_t row) { return buf.data() + (at::get_thread_num() * rows + row) * n; }
  std::vector<double> total(int64_t row) const {
    std::vector<double> out(static_cast<size_t>(n), 0.0);
    for (int64_t t = 0; t < threads; ++t)
      for (int64_t c = 0; c < n; ++c) out[c] += buf[(t * rows + row) * n + c];
    return out;
  }
  int64_t rows, n, threads;
  std::vector<double> buf;
};

// Per channel, the sums of d = x - shift and of d * d over rows. In double, d and d * d are exact (x and
// shift have 24-bit mantissas), so only the sums round.
TF4CTR_CLONES
void shifted_sums(const float* __restrict x, const float* __restrict shift, double* __restrict sum,
                  double* __restrict sum_sq, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < n; ++c) {
      const double d = static_cast<double>(x[r * n + c]) - shift[c];
      sum[c] += d;
      sum_sq[c] += d * d;
    }
}

void check_channel_vector(const at::Tensor& t, int64_t n, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 1 && t.size(0) == n &&
                  t.is_contiguous(),
              op, ": ", name, " must be a contiguous float32 CPU vector of ", n, " channels");
}

// mean and invstd = 1 / sqrt(var + eps) of the batch (m rows of x), and the running statistics moved as
// nn.BatchNorm1d moves them in training (the running variance unbiased). One pass: the sums are of the
// values shifted by the first row's, so var = E[d^2] - E[d]^2 cancels only as much as the first row is
// off the mean (a few standard deviations), not as much as the mean is off zero.
void batch_statistics(const float* x, int64_t m, int64_t n, double momentum, double eps, float* mean,
                      float* invstd, float* running_mean, float* running_var) {
  const std::vector<float> shift(x, x + n);
  ThreadSums sums(2, n);
  at::parallel_for(0, m, kRowGrain, [&](int64_t r0, int64_t r1) {
    shifted_sums(x + r0 * n, shift.data(), sums.of(0), sums.of(1), r1 - r0, n);
  });
  const std::vector<double> sum = sums.total(0), sum_sq = sums.total(1);
  for (int64_t c = 0; c < n; ++c) {
    const double mean_d = sum[c] / m, var = std::max(sum_sq[c] / m - mean_d * mean_d, 0.0);
    mean[c] = static_cast<float>(shift[c] + mean_d);
    invstd[c] = static_cast<float>(1.0 / std::sqrt(var + eps));
    running_mean[c] = static_cast<float>((1.0 - momentum) * running_mean[c] + momentum * (shift[c] + mean_d));
    running_var[c] = static_cast<float>((1.0 - momentum) * running_var[c] + momentum * var * m / (m - 1));
  }
}

}  // namespace
