// AFN's logarithmic layer after its projection: y = BatchNorm(exp(z)) with the neurons as channels, z
// [B, d, N] (the projection's rows), y [B, N, d] (FuxiCTR's order, flattened by the next layer). torch
// runs it as exp, a transposing copy, BatchNorm and, backward, BatchNorm's backward, the copy back and
// exp's backward: about ten passes over a [B, N, d] tensor (0.8 GB at Frappe's batch of 10000). Here:
// forward three (ATen's exp, the channel statistics, the normalised transposing write), backward two
// (the channel sums of dy and dy * xhat, then dz with exp's derivative folded in). The statistics are
// accumulated in double over shifted values (batch_stats.h).
//
// The op-by-op twin is tf4ctr_fast/reference/exp_batch_norm.py (torch's exp and batch_norm).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include "batch_stats.h"

namespace {

void check_vector(const at::Tensor& t, int64_t n, const char* name) {
  check_channel_vector(t, n, "exp_batch_norm", name);
}

// Training only (eval runs torch's ops, tf4ctr_fast/ops/exp_batch_norm.py). Returns (y [B, N, d],
// e = exp(z) [B, d, N], mean [N], invstd [N]): the batch's statistics; the running statistics are
// updated in place as nn.BatchNorm1d does.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> exp_batch_norm_forward(
    const at::Tensor& z_in, const at::Tensor& weight, const at::Tensor& bias, at::Tensor running_mean,
    at::Tensor running_var, double momentum, double eps) {
  TORCH_CHECK(z_in.device().is_cpu() && z_in.scalar_type() == at::kFloat && z_in.dim() == 3,
              "exp_batch_norm: z must be a float32 CPU tensor [B, d, N], got ", z_in.sizes());
  const at::Tensor z = z_in.contiguous();
  const int64_t B = z.size(0), D = z.size(1), N = z.size(2), M = B * D;
  for (const auto& [t, name] : {std::pair{&weight, "weight"}, {&bias, "bias"}, {&running_mean, "running_mean"},
                                {&running_var, "running_var"}})
    check_vector(*t, N, name);
  TORCH_CHECK(M > 1, "exp_batch_norm: training needs more than one value per channel, got ", M);
  at::Tensor e = at::exp(z), y = at::empty({B, N, D}, z.options());   // ATen's vectorized exp
  at::Tensor mean = at::empty({N}, z.options()), invstd = at::empty({N}, z.options());
  const float* ep = e.data_ptr<float>();
  float* mp = mean.data_ptr<float>();
  float* ip = invstd.data_ptr<float>();
  batch_statistics(ep, M, N, momentum, eps, mp, ip, running_mean.data_ptr<float>(), running_var.data_ptr<float>());
  // y = e * alpha + beta per channel (torch's form), written transposed: y[b, c, k] from e[b, k, c]
  std::vector<float> alpha(N), beta(N);
  const float* w = weight.data_ptr<float>();
  const float* bi = bias.data_ptr<float>();
  for (int64_t c = 0; c < N; ++c) {
    alpha[c] = ip[c] * w[c];
    beta[c] = bi[c] - mp[c] * alpha[c];
  }
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const float* eb = ep + b * D * N;
      float* yb = yp + b * N * D;
      for (int64_t c = 0; c < N; ++c)
        for (int64_t k = 0; k < D; ++k) yb[c * D + k] = eb[k * N + c] * alpha[c] + beta[c];
    }
  });
  return {y, e, mean, invstd};
}

// Returns (dz [B, d, N], d weight [N], d bias [N]) for dy [B, N, d], from the forward's e, mean, invstd.
std::tuple<at::Tensor, at::Tensor, at::Tensor> exp_batch_norm_backward(const at::Tensor& dy_in, const at::Tensor& e,
                                                                         const at::Tensor& mean,
                                                                         const at::Tensor& invstd,
                                                                         const at::Tensor& weight) {
  TORCH_CHECK(e.is_contiguous() && e.dim() == 3, "exp_batch_norm_backward: e must be the forward's [B, d, N]");
  const int64_t B = e.size(0), D = e.size(1), N = e.size(2), M = B * D;
  TORCH_CHECK(dy_in.sizes() == at::IntArrayRef({B, N, D}) && dy_in.scalar_type() == at::kFloat,
              "exp_batch_norm_backward: grad must be float32 [", B, ", ", N, ", ", D, "], got ", dy_in.sizes());
  for (const auto& [t, name] : {std::pair{&mean, "mean"}, {&invstd, "invstd"}, {&weight, "weight"}})
    check_vector(*t, N, name);
  const at::Tensor dy = dy_in.contiguous();
  const float* dyp = dy.data_ptr<float>();
  const float* ep = e.data_ptr<float>();
  const float* mp = mean.data_ptr<float>();
  const float* ip = invstd.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  // sum dy and sum dy * xhat per channel
  ThreadSums sums(2, N);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    double* s_dy = sums.of(0);
    double* s_dyx = sums.of(1);
    for (int64_t b = b0; b < b1; ++b) {
      const float* eb = ep + b * D * N;
      const float* db = dyp + b * N * D;
      for (int64_t c = 0; c < N; ++c)
        for (int64_t k = 0; k < D; ++k) {
          const double g = db[c * D + k];
          s_dy[c] += g;
          s_dyx[c] += g * ((static_cast<double>(eb[k * N + c]) - mp[c]) * ip[c]);
        }
    }
  });
  const std::vector<double> sum_dy = sums.total(0), sum_dyx = sums.total(1);
  at::Tensor grad_weight = at::empty({N}, e.options()), grad_bias = at::empty({N}, e.options());
  std::vector<float> scale(N), shift(N), slope(N);   // dz = e * (dy * scale - shift - xhat * slope)
  for (int64_t c = 0; c < N; ++c) {
    grad_weight.data_ptr<float>()[c] = static_cast<float>(sum_dyx[c]);
    grad_bias.data_ptr<float>()[c] = static_cast<float>(sum_dy[c]);
    const float k = w[c] * ip[c];
    scale[c] = k;
    shift[c] = static_cast<float>(k * sum_dy[c] / M);
    slope[c] = static_cast<float>(k * sum_dyx[c] / M);
  }
  at::Tensor dz = at::empty_like(e);
  float* dzp = dz.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const float* eb = ep + b * D * N;
      const float* db = dyp + b * N * D;
      float* zb = dzp + b * D * N;
      for (int64_t k = 0; k < D; ++k)
        for (int64_t c = 0; c < N; ++c) {
          const float x = eb[k * N + c];
          const float xhat = (x - mp[c]) * ip[c];
          zb[k * N + c] = x * (db[c * D + k] * scale[c] - shift[c] - xhat * slope[c]);
        }
    }
  });
  return {dz, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tf4ctr_fast, m) {
  m.def("exp_batch_norm_forward(Tensor z, Tensor weight, Tensor bias, Tensor(a!) running_mean, "
        "Tensor(b!) running_var, float momentum, float eps) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("exp_batch_norm_backward(Tensor grad, Tensor e, Tensor mean, Tensor invstd, Tensor weight) "
        "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(tf4ctr_fast, CPU, m) {
  m.impl("exp_batch_norm_forward", &exp_batch_norm_forward);
  m.impl("exp_batch_norm_backward", &exp_batch_norm_backward);
}
