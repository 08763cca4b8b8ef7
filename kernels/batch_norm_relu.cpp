// An MLP hidden layer in training (not wired into the models yet: docs/benchmarks.md "BatchNorm + ReLU
// fused"): y = relu(BatchNorm(x)) over x [B, C] (a Linear's
// output; the C neurons are the channels). torch runs it as BatchNorm (statistics, normalise) and
// relu forward, relu's and BatchNorm's backward after, and keeps both x and y for backward. Here:
// forward two passes over [B, C] (the channel statistics, the normalised and rectified write),
// backward two (the channel sums of g and g * xhat, g = dy where the pre-activation is > 0, then dx),
// and only x is kept: the mask is recomputed from it. Statistics in double over shifted values
// (batch_stats.h, shared with exp_batch_norm.cpp). Accuracy: at 1 thread and B 10000 torch's float32
// BatchNorm backward ends up to 0.13 off a float64 computation on a test tensor, this kernel 3e-7
// (bench/test_bench_batch_norm_relu.py); but in a DNN training step its gradient was 3-4x farther from
// float64 than torch's (suspect: the x * alpha + beta form below; docs/benchmarks.md).
//
// The op-by-op twin is tf4ctr_fast/reference/batch_norm_relu.py (torch's batch_norm and relu).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "batch_stats.h"

namespace {

constexpr const char* kOp = "batch_norm_relu";

// BatchNorm's affine map in torch's form, x * alpha + beta with alpha = w * invstd, beta = b - mean * alpha
struct Affine {
  std::vector<float> alpha, beta;
  Affine(const float* mean, const float* invstd, const float* w, const float* b, int64_t n) : alpha(n), beta(n) {
    for (int64_t c = 0; c < n; ++c) {
      alpha[c] = invstd[c] * w[c];
      beta[c] = b[c] - mean[c] * alpha[c];
    }
  }
};

TF4CTR_CLONES
void normalise_rectify(const float* __restrict x, const float* __restrict alpha, const float* __restrict beta,
                       float* __restrict y, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < n; ++c) y[r * n + c] = std::max(x[r * n + c] * alpha[c] + beta[c], 0.0f);
}

// g = dy where the pre-activation x * alpha + beta is > 0 (torch's relu backward: 0 where the output is
// <= 0, NaN passing); dy is loaded unconditionally so that the select vectorizes
inline float masked(float dy, float x, float alpha, float beta) { return x * alpha + beta <= 0.0f ? 0.0f : dy; }

// sums over rows of g and of g * xhat, xhat = (x - mean) * invstd
TF4CTR_CLONES
void gradient_sums(const float* __restrict dy, const float* __restrict x, const float* __restrict alpha,
                   const float* __restrict beta, const float* __restrict mean, const float* __restrict invstd,
                   double* __restrict sum_g, double* __restrict sum_gx, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < n; ++c) {
      const float xv = x[r * n + c];
      const float g = masked(dy[r * n + c], xv, alpha[c], beta[c]);
      sum_g[c] += g;
      sum_gx[c] += static_cast<double>(g) * ((xv - mean[c]) * invstd[c]);
    }
}

// dx = g * scale - shift - xhat * slope (scale = w * invstd, shift = scale * mean(g), slope = scale * mean(g * xhat))
TF4CTR_CLONES
void input_gradient(const float* __restrict dy, const float* __restrict x, const float* __restrict alpha,
                    const float* __restrict beta, const float* __restrict mean, const float* __restrict invstd,
                    const float* __restrict shift, const float* __restrict slope, float* __restrict dx,
                    int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < n; ++c) {
      const float xv = x[r * n + c];
      const float g = masked(dy[r * n + c], xv, alpha[c], beta[c]);
      dx[r * n + c] = g * alpha[c] - shift[c] - (xv - mean[c]) * invstd[c] * slope[c];
    }
}

void check_input(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 2 && t.is_contiguous(),
              kOp, ": ", name, " must be a contiguous float32 CPU tensor [B, C], got ", t.scalar_type(), " ",
              t.sizes());
}

// Training only (eval runs torch's ops, tf4ctr_fast/ops/batch_norm_relu.py). Returns (y [B, C], mean
// [C], invstd [C]): the batch's statistics; the running statistics are updated in place as
// nn.BatchNorm1d does.
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_relu_forward(const at::Tensor& x, const at::Tensor& weight,
                                                                       const at::Tensor& bias,
                                                                       at::Tensor running_mean,
                                                                       at::Tensor running_var, double momentum,
                                                                       double eps) {
  check_input(x, "x");
  const int64_t B = x.size(0), C = x.size(1);
  for (const auto& [t, name] : {std::pair{&weight, "weight"}, {&bias, "bias"}, {&running_mean, "running_mean"},
                                {&running_var, "running_var"}})
    check_channel_vector(*t, C, kOp, name);
  TORCH_CHECK(B > 1, kOp, ": training needs more than one value per channel, got a batch of ", B);
  at::Tensor y = at::empty_like(x), mean = at::empty({C}, x.options()), invstd = at::empty({C}, x.options());
  const float* xp = x.data_ptr<float>();
  float* mp = mean.data_ptr<float>();
  float* ip = invstd.data_ptr<float>();
  batch_statistics(xp, B, C, momentum, eps, mp, ip, running_mean.data_ptr<float>(), running_var.data_ptr<float>());
  const Affine affine(mp, ip, weight.data_ptr<float>(), bias.data_ptr<float>(), C);
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, B, kRowGrain, [&](int64_t r0, int64_t r1) {
    normalise_rectify(xp + r0 * C, affine.alpha.data(), affine.beta.data(), yp + r0 * C, r1 - r0, C);
  });
  return {y, mean, invstd};
}

// Returns (dx [B, C], d weight [C], d bias [C]) for dy [B, C], from the forward's x, mean and invstd.
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_relu_backward(const at::Tensor& dy_in, const at::Tensor& x,
                                                                        const at::Tensor& mean,
                                                                        const at::Tensor& invstd,
                                                                        const at::Tensor& weight,
                                                                        const at::Tensor& bias) {
  check_input(x, "x");
  const int64_t B = x.size(0), C = x.size(1);
  TORCH_CHECK(dy_in.sizes() == x.sizes() && dy_in.scalar_type() == at::kFloat, kOp, "_backward: grad must be float32 ",
              x.sizes(), ", got ", dy_in.scalar_type(), " ", dy_in.sizes());
  for (const auto& [t, name] :
       {std::pair{&mean, "mean"}, {&invstd, "invstd"}, {&weight, "weight"}, {&bias, "bias"}})
    check_channel_vector(*t, C, kOp, name);
  const at::Tensor dy = dy_in.contiguous();
  const float *dyp = dy.data_ptr<float>(), *xp = x.data_ptr<float>();
  const float *mp = mean.data_ptr<float>(), *ip = invstd.data_ptr<float>();
  const Affine affine(mp, ip, weight.data_ptr<float>(), bias.data_ptr<float>(), C);
  const float *alpha = affine.alpha.data(), *beta = affine.beta.data();
  ThreadSums sums(2, C);
  at::parallel_for(0, B, kRowGrain, [&](int64_t r0, int64_t r1) {
    gradient_sums(dyp + r0 * C, xp + r0 * C, alpha, beta, mp, ip, sums.of(0), sums.of(1), r1 - r0, C);
  });
  const std::vector<double> sum_g = sums.total(0), sum_gx = sums.total(1);
  at::Tensor grad_weight = at::empty({C}, x.options()), grad_bias = at::empty({C}, x.options());
  std::vector<float> shift(C), slope(C);
  for (int64_t c = 0; c < C; ++c) {
    grad_weight.data_ptr<float>()[c] = static_cast<float>(sum_gx[c]);
    grad_bias.data_ptr<float>()[c] = static_cast<float>(sum_g[c]);
    shift[c] = static_cast<float>(alpha[c] * sum_g[c] / B);   // alpha = w * invstd, dx's scale
    slope[c] = static_cast<float>(alpha[c] * sum_gx[c] / B);
  }
  at::Tensor dx = at::empty_like(x);
  float* dxp = dx.data_ptr<float>();
  at::parallel_for(0, B, kRowGrain, [&](int64_t r0, int64_t r1) {
    input_gradient(dyp + r0 * C, xp + r0 * C, alpha, beta, mp, ip, shift.data(), slope.data(), dxp + r0 * C, r1 - r0,
                   C);
  });
  return {dx, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tf4ctr_fast, m) {
  m.def("batch_norm_relu_forward(Tensor x, Tensor weight, Tensor bias, Tensor(a!) running_mean, "
        "Tensor(b!) running_var, float momentum, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("batch_norm_relu_backward(Tensor grad, Tensor x, Tensor mean, Tensor invstd, Tensor weight, Tensor bias) "
        "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(tf4ctr_fast, CPU, m) {
  m.impl("batch_norm_relu_forward", &batch_norm_relu_forward);
  m.impl("batch_norm_relu_backward", &batch_norm_relu_backward);
}
