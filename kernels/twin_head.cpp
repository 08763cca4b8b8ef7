// Fused TF4CTR twin head, CPU kernel: auxiliary logits, DFM fusion, BCE + Twin Focus loss and every
// gradient in one pass over h_s and h_c.
//
// Semantics: shared/REFERENCE.md ("Model", "DFM", "Twin Focus loss"); parity target:
// tf4ctr_fast/reference/{dfm,loss}.py. The Python side (tf4ctr_fast/ops/twin_head.py) packs the module
// parameters into the projection stacks below, registers autograd and the fake kernel, and documents
// the numerics. The CUDA twin of this file is kernels/twin_head_triton.py.
//
// Per row i, with K projections per branch (sum/WSF: 1, CF: 2, MoEF: 5):
//   s_k = h_s[i]·w_s[k] + b_s[k],  t_k = h_c[i]·w_c[k] + b_c[k]
//   z_s = s_0, z_c = t_0, fusion inputs f_j = s_j + t_j (j >= 1: CF's logit; MoEF's 2 gate, 2 expert)
// The loss is evaluated on logits (log σ(z) = -softplus(-z)), so it stays finite for any |z|.
//
// The loss is the op's only differentiable output, so the forward pass, while each row of h is in
// cache, also produces everything backward needs: the per-row derivatives g_s = d loss / d s and
// g_c = d loss / d t ([B, K], small) and the parameter gradients (g^T h, sums of g). Backward then
// scales those by grad_output and writes grad_h = grad_output · g @ w (twin_head_grad_h), a pass that
// reads no h. Total traffic: h read once, grad_h written once.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__GNUC__) && defined(__x86_64__)
#define TF4CTR_X86_DISPATCH 1
#define TF4CTR_ALWAYS_INLINE __attribute__((always_inline))
#else
#define TF4CTR_X86_DISPATCH 0
#define TF4CTR_ALWAYS_INLINE
#endif

namespace {

enum Fusion : int64_t { kSum = 0, kWSF = 1, kCF = 2, kMoEF = 3 };

int64_t projections_for(int64_t fusion) {
  switch (fusion) {
    case kSum:
    case kWSF: return 1;
    case kCF: return 2;
    case kMoEF: return 5;
    default: TORCH_CHECK(false, "twin_head: unknown fusion code ", fusion);
  }
}

// Rows per block. Each block owns one slot of parameter-gradient partial sums, and the slots are added
// in block order, so results are bitwise identical for any thread count.
constexpr int64_t kRowsPerBlock = 256;
constexpr int64_t kMaxProjections = 5;  // MoEF
// Independent accumulator lanes: lets -O3 vectorize the reductions without -ffast-math reordering.
constexpr int kLanes = 16;

template <typename T>
TF4CTR_ALWAYS_INLINE inline T dot(const T* __restrict a, const T* __restrict b, int64_t n) {
  T acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += a[i + l] * b[i + l];
  T s = 0;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

template <typename T>
TF4CTR_ALWAYS_INLINE inline void axpy(T alpha, const T* __restrict x, T* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

template <typename T>
TF4CTR_ALWAYS_INLINE inline void scale_into(T alpha, const T* __restrict x, T* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = alpha * x[i];
}

// (base^γ, d/dbase base^γ). Integer γ (the paper's 0..3) skips pow, which costs more than the rest of
// the row math; γ = 0 has derivative 0 even at base = 0 (as torch.pow).
inline void focal_factor(double base, double gamma, int int_gamma, double* f, double* df) {
  switch (int_gamma) {
    case 0: *f = 1.0; *df = 0.0; return;
    case 1: *f = base; *df = 1.0; return;
    case 2: *f = base * base; *df = 2.0 * base; return;
    case 3: *f = base * base * base; *df = 3.0 * base * base; return;
    default:
      *f = std::pow(base, gamma);
      *df = gamma == 0.0 ? 0.0 : gamma * std::pow(base, gamma - 1.0);
  }
}

struct LossParams {
  double alpha, c, gamma, inv_batch;
  int int_gamma;  // gamma if it is 0, 1, 2 or 3, else -1
  bool twin_focus;
};

// σ(x) and 1 - σ(x), each without cancellation; e = exp(-|x|).
inline void sigmoid_pair(double x, double e, double* p, double* q) {
  const double big = 1.0 / (1.0 + e), small = e * big;
  *p = x >= 0 ? big : small;
  *q = x >= 0 ? small : big;
}

// bce(σ(z), y) and the pieces the focal factors need, from z directly: one exp and one log1p, since
// softplus(±z) = max(±z, 0) + log1p(exp(-|z|)).
struct LogitStats {
  double p, q, bce, p_minus_y, pt, dpt;  // q = 1 - p, pt = y p + (1-y) q, dpt = d pt / dz
  LogitStats(double z, double y) {
    const double e = std::exp(-std::abs(z)), l = std::log1p(e);
    sigmoid_pair(z, e, &p, &q);
    bce = y * (std::max(-z, 0.0) + l) + (1.0 - y) * (std::max(z, 0.0) + l);
    p_minus_y = (1.0 - y) * p - y * q;
    pt = y * p + (1.0 - y) * q;
    dpt = (2.0 * y - 1.0) * p * q;
  }
};

// Per-row loss and d loss_row / d(z_s, z_c, f_1..f_{K-1}), already divided by the batch size.
// g_s[k], g_c[k] are the gradients of the row loss by s_k and t_k (equal for k >= 1).
inline double row_loss(int64_t fusion, const double* s, const double* t, double y, const double* mix,
                       const LossParams& lp, double* z_out, double* g_s, double* g_c, double* g_mix) {
  const double zs = s[0], zc = t[0];
  double z = 0, dz_dzs = 0, dz_dzc = 0;
  double g0 = 0, g1 = 0, m0 = 0, m1 = 0;
  switch (fusion) {
    case kSum: z = zs + zc; dz_dzs = 1; dz_dzc = 1; break;
    case kWSF: z = mix[0] * zs + mix[1] * zc; dz_dzs = mix[0]; dz_dzc = mix[1]; break;
    case kCF: z = s[1] + t[1]; break;
    case kMoEF: {
      const double q0 = s[1] + t[1], q1 = s[2] + t[2];
      m0 = s[3] + t[3];
      m1 = s[4] + t[4];
      sigmoid_pair(q0 - q1, std::exp(-std::abs(q0 - q1)), &g0, &g1);  // softmax over 2 gates
      z = g0 * m0 + g1 * m1;
      break;
    }
  }
  *z_out = z;

  const LogitStats main(z, y);
  double loss = main.bce;
  const double gz = main.p_minus_y * lp.inv_batch;
  double gzs = gz * dz_dzs, gzc = gz * dz_dzc;
  if (lp.twin_focus) {
    const LogitStats ls(zs, y), lc(zc, y);
    double f, df;
    focal_factor(lp.c + ls.pt, lp.gamma, lp.int_gamma, &f, &df);
    loss += lp.alpha * ls.bce * f;
    gzs += lp.alpha * lp.inv_batch * (ls.p_minus_y * f + ls.bce * df * ls.dpt);
    focal_factor((2.0 - lp.c) - lc.pt, lp.gamma, lp.int_gamma, &f, &df);
    loss += (1.0 - lp.alpha) * lc.bce * f;
    gzc += (1.0 - lp.alpha) * lp.inv_batch * (lc.p_minus_y * f - lc.bce * df * lc.dpt);
  }
  g_s[0] = gzs;
  g_c[0] = gzc;
  switch (fusion) {
    case kWSF: g_mix[0] = gz * zs; g_mix[1] = gz * zc; break;
    case kCF: g_s[1] = g_c[1] = gz; break;
    case kMoEF: {
      const double dq = gz * g0 * g1 * (m0 - m1);
      g_s[1] = g_c[1] = dq;
      g_s[2] = g_c[2] = -dq;
      g_s[3] = g_c[3] = gz * g0;
      g_s[4] = g_c[4] = gz * g1;
      break;
    }
    default: break;
  }
  return loss;
}

// Everything one block of rows needs; pointers into contiguous tensors.
template <typename T>
struct BlockArgs {
  const T *hs, *hc, *ws, *wc, *bs, *bc, *y;
  T *z, *z_s, *z_c, *g_s, *g_c;    // g_*: [B, K] per-row derivatives, null without need_grad
  T* wpart;                        // [nblocks, K*Hs + K*Hc]: this block's grad w_s, grad w_c
  double* spart;                   // [nblocks, 2K + 3]: grad b_s, grad b_c, grad mix, loss
  double mix[2];
  int64_t B, Hs, Hc, K, fusion;
  LossParams lp;
};

template <typename T>
TF4CTR_ALWAYS_INLINE inline void process_block(const BlockArgs<T>& a, int64_t blk) {
  const int64_t K = a.K, Hs = a.Hs, Hc = a.Hc;
  const bool need_grad = a.g_s != nullptr;
  double s[kMaxProjections], t[kMaxProjections], g_s[kMaxProjections], g_c[kMaxProjections];
  T* gws = a.wpart + blk * K * (Hs + Hc);
  T* gwc = gws + K * Hs;
  double* acc = a.spart + blk * (2 * K + 3);
  const int64_t row1 = std::min(a.B, (blk + 1) * kRowsPerBlock);
  for (int64_t i = blk * kRowsPerBlock; i < row1; ++i) {
    const T* xs = a.hs + i * Hs;
    const T* xc = a.hc + i * Hc;
    for (int64_t k = 0; k < K; ++k) {
      s[k] = static_cast<double>(dot(xs, a.ws + k * Hs, Hs)) + static_cast<double>(a.bs[k]);
      t[k] = static_cast<double>(dot(xc, a.wc + k * Hc, Hc)) + static_cast<double>(a.bc[k]);
    }
    double zv, g_mix[2] = {0.0, 0.0};
    acc[2 * K + 2] += row_loss(a.fusion, s, t, static_cast<double>(a.y[i]), a.mix, a.lp, &zv, g_s, g_c, g_mix);
    a.z[i] = static_cast<T>(zv);
    a.z_s[i] = static_cast<T>(s[0]);
    a.z_c[i] = static_cast<T>(t[0]);
    if (!need_grad) continue;
    for (int64_t k = 0; k < K; ++k) {
      a.g_s[i * K + k] = static_cast<T>(g_s[k]);
      a.g_c[i * K + k] = static_cast<T>(g_c[k]);
      // The row is still in L1: add its share of d loss / d w[k] = sum_i g[i, k] h[i] now.
      axpy(static_cast<T>(g_s[k]), xs, gws + k * Hs, Hs);
      axpy(static_cast<T>(g_c[k]), xc, gwc + k * Hc, Hc);
      acc[k] += g_s[k];
      acc[K + k] += g_c[k];
    }
    acc[2 * K] += g_mix[0];
    acc[2 * K + 1] += g_mix[1];
  }
}

// The hot loops are compiled twice: for the baseline ISA (portable wheels, no -march) and, on x86-64,
// for AVX2+FMA, picked at run time. MoEF's 10 multiply-adds per element of h are compute bound with
// SSE2; the single-projection fusions are memory bound either way.
template <typename T>
void process_block_baseline(const BlockArgs<T>& a, int64_t blk) { process_block(a, blk); }

template <typename Fn>
Fn pick_isa(Fn baseline, Fn avx2) {
#if TF4CTR_X86_DISPATCH
  static const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has_avx2 ? avx2 : baseline;
#else
  return baseline;
#endif
}

#if TF4CTR_X86_DISPATCH
template <typename T>
__attribute__((target("avx2,fma"))) void process_block_avx2(const BlockArgs<T>& a, int64_t blk) {
  process_block(a, blk);
}
#else
template <typename T>
void process_block_avx2(const BlockArgs<T>& a, int64_t blk) { process_block(a, blk); }
#endif

// Column sums of [nblocks, n] partials in double, adding the blocks in block order whatever the
// thread count (threads split the columns), which keeps the op bitwise deterministic.
template <typename T>
at::Tensor sum_blocks(const at::Tensor& part) {
  const int64_t nblocks = part.size(0), n = part.size(1);
  at::Tensor out = at::empty({n}, part.options().dtype(at::kDouble));
  const T* p = part.data_ptr<T>();
  double* o = out.data_ptr<double>();
  at::parallel_for(0, n, 2048, [&](int64_t c0, int64_t c1) {
    std::fill(o + c0, o + c1, 0.0);
    for (int64_t b = 0; b < nblocks; ++b)
      for (int64_t c = c0; c < c1; ++c) o[c] += static_cast<double>(p[b * n + c]);
  });
  return out;
}

template <typename T>
std::vector<at::Tensor> twin_head_impl(const at::Tensor& h_s, const at::Tensor& h_c, const at::Tensor& w_s,
                                       const at::Tensor& w_c, const at::Tensor& b_s, const at::Tensor& b_c,
                                       const at::Tensor& mix, const at::Tensor& y, const LossParams& lp,
                                       int64_t fusion, bool need_grad) {
  const int64_t B = h_s.size(0), Hs = h_s.size(1), Hc = h_c.size(1), K = w_s.size(0);
  const auto opts = h_s.options();
  at::Tensor z = at::empty({B}, opts), z_s = at::empty({B}, opts), z_c = at::empty({B}, opts);
  at::Tensor g_s, g_c;
  const int64_t nblocks = std::max<int64_t>(1, (B + kRowsPerBlock - 1) / kRowsPerBlock);
  at::Tensor wpart = at::zeros({nblocks, need_grad ? K * (Hs + Hc) : 0}, opts);
  at::Tensor spart = at::zeros({nblocks, 2 * K + 3}, opts.dtype(at::kDouble));
  if (need_grad) {
    g_s = at::empty({B, K}, opts);
    g_c = at::empty({B, K}, opts);
  }
  const T* mixp = mix.data_ptr<T>();
  const BlockArgs<T> args{h_s.data_ptr<T>(), h_c.data_ptr<T>(), w_s.data_ptr<T>(), w_c.data_ptr<T>(),
                          b_s.data_ptr<T>(), b_c.data_ptr<T>(), y.data_ptr<T>(),
                          z.data_ptr<T>(), z_s.data_ptr<T>(), z_c.data_ptr<T>(),
                          need_grad ? g_s.data_ptr<T>() : nullptr, need_grad ? g_c.data_ptr<T>() : nullptr,
                          wpart.data_ptr<T>(), spart.data_ptr<double>(),
                          {static_cast<double>(mixp[0]), static_cast<double>(mixp[1])},
                          B, Hs, Hc, K, fusion, lp};
  const auto block_fn = pick_isa(&process_block_baseline<T>, &process_block_avx2<T>);
  at::parallel_for(0, nblocks, 1, [&](int64_t blk0, int64_t blk1) {
    for (int64_t blk = blk0; blk < blk1; ++blk) block_fn(args, blk);
  });

  at::Tensor wsum = sum_blocks<T>(wpart), ssum = sum_blocks<double>(spart);
  at::Tensor loss = (ssum[2 * K + 2] * lp.inv_batch).to(opts.dtype());
  if (!need_grad) {  // schema outputs may not alias each other: one empty tensor each
    std::vector<at::Tensor> out{loss, z, z_s, z_c};
    for (int j = 0; j < 7; ++j) out.push_back(at::empty({0}, opts));
    return out;
  }
  auto piece = [&](const at::Tensor& t, int64_t from, int64_t n) {
    return t.narrow(0, from, n).to(opts.dtype(), /*non_blocking=*/false, /*copy=*/true);
  };
  return {loss,
          z,
          z_s,
          z_c,
          g_s,
          g_c,
          piece(wsum, 0, K * Hs).view({K, Hs}),
          piece(wsum, K * Hs, K * Hc).view({K, Hc}),
          piece(ssum, 0, K),
          piece(ssum, K, K),
          piece(ssum, 2 * K, 2)};
}

std::vector<at::Tensor> twin_head_cpu(const at::Tensor& h_s, const at::Tensor& h_c, const at::Tensor& w_s,
                                      const at::Tensor& w_c, const at::Tensor& b_s, const at::Tensor& b_c,
                                      const at::Tensor& mix, const at::Tensor& y, double alpha, double c,
                                      double gamma, int64_t fusion, bool twin_focus, bool need_grad) {
  const int64_t K = projections_for(fusion);
  TORCH_CHECK(h_s.dim() == 2 && h_c.dim() == 2 && h_s.size(0) == h_c.size(0),
              "twin_head: h_s and h_c must be [B, H] with the same B, got ", h_s.sizes(), " and ", h_c.sizes());
  const int64_t B = h_s.size(0);
  TORCH_CHECK(w_s.sizes() == at::IntArrayRef({K, h_s.size(1)}) && w_c.sizes() == at::IntArrayRef({K, h_c.size(1)}),
              "twin_head: w_s/w_c must be [", K, ", H] for this fusion, got ", w_s.sizes(), " and ", w_c.sizes());
  TORCH_CHECK(b_s.numel() == K && b_c.numel() == K && mix.numel() == 2 && y.dim() == 1 && y.size(0) == B,
              "twin_head: b_s/b_c must hold ", K, " values, mix 2, y [", B, "]");
  const auto dt = h_s.scalar_type();
  for (const at::Tensor* t : {&h_c, &w_s, &w_c, &b_s, &b_c, &mix, &y})
    TORCH_CHECK(t->scalar_type() == dt, "twin_head: all tensors must share h_s's dtype ", dt, ", got ",
                t->scalar_type());
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "twin_head (CPU): float32 or float64 only, got ", dt);
  const bool small_int = gamma == std::floor(gamma) && gamma >= 0.0 && gamma <= 3.0;
  const LossParams lp{alpha, c, gamma, B > 0 ? 1.0 / static_cast<double>(B) : 0.0,
                      small_int ? static_cast<int>(gamma) : -1, twin_focus};
  const auto hs = h_s.contiguous(), hc = h_c.contiguous(), ws = w_s.contiguous(), wc = w_c.contiguous();
  const auto bs = b_s.contiguous(), bc = b_c.contiguous(), mx = mix.contiguous(), yy = y.contiguous();
  if (dt == at::kFloat)
    return twin_head_impl<float>(hs, hc, ws, wc, bs, bc, mx, yy, lp, fusion, need_grad);
  return twin_head_impl<double>(hs, hc, ws, wc, bs, bc, mx, yy, lp, fusion, need_grad);
}

// grad_h[i] = scale · sum_k g[i, k] w[k] for rows [r0, r1): backward's one pass over [B, H].
template <typename T>
TF4CTR_ALWAYS_INLINE inline void grad_h_rows(const T* __restrict g, const T* __restrict w, T scale,
                                             T* __restrict out, int64_t r0, int64_t r1, int64_t K, int64_t H) {
  for (int64_t i = r0; i < r1; ++i) {
    T* row = out + i * H;  // L1-resident while the K terms are added
    scale_into(scale * g[i * K], w, row, H);
    for (int64_t k = 1; k < K; ++k) axpy(scale * g[i * K + k], w + k * H, row, H);
  }
}

template <typename T>
void grad_h_rows_baseline(const T* g, const T* w, T scale, T* out, int64_t r0, int64_t r1, int64_t K,
                          int64_t H) {
  grad_h_rows(g, w, scale, out, r0, r1, K, H);
}

#if TF4CTR_X86_DISPATCH
template <typename T>
__attribute__((target("avx2,fma"))) void grad_h_rows_avx2(const T* g, const T* w, T scale, T* out, int64_t r0,
                                                           int64_t r1, int64_t K, int64_t H) {
  grad_h_rows(g, w, scale, out, r0, r1, K, H);
}
#else
template <typename T>
void grad_h_rows_avx2(const T* g, const T* w, T scale, T* out, int64_t r0, int64_t r1, int64_t K, int64_t H) {
  grad_h_rows(g, w, scale, out, r0, r1, K, H);
}
#endif

at::Tensor twin_head_grad_h_cpu(const at::Tensor& g, const at::Tensor& w, const at::Tensor& scale) {
  TORCH_CHECK(g.dim() == 2 && w.dim() == 2 && g.size(1) == w.size(0) && g.size(1) >= 1 &&
                  g.size(1) <= kMaxProjections && scale.numel() == 1,
              "twin_head_grad_h: g [B, K], w [K, H] (1 <= K <= 5) and a one-element scale, got ", g.sizes(), ", ",
              w.sizes(), ", ", scale.sizes());
  TORCH_CHECK(g.scalar_type() == w.scalar_type() && (w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble),
              "twin_head_grad_h (CPU): g and w must both be float32 or float64");
  const auto gg = g.contiguous(), ww = w.contiguous();
  at::Tensor out = at::empty({g.size(0), w.size(1)}, w.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "twin_head_grad_h", [&] {
    const auto rows_fn = pick_isa(&grad_h_rows_baseline<scalar_t>, &grad_h_rows_avx2<scalar_t>);
    const scalar_t *gp = gg.data_ptr<scalar_t>(), *wp = ww.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const scalar_t sc = scale.item<scalar_t>();
    const int64_t K = g.size(1), H = w.size(1);
    at::parallel_for(0, g.size(0), 64, [&](int64_t r0, int64_t r1) { rows_fn(gp, wp, sc, op, r0, r1, K, H); });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor, at::Tensor>
twin_head_cpu_op(const at::Tensor& h_s, const at::Tensor& h_c, const at::Tensor& w_s, const at::Tensor& w_c,
                 const at::Tensor& b_s, const at::Tensor& b_c, const at::Tensor& mix, const at::Tensor& y,
                 double alpha, double c, double gamma, int64_t fusion, bool twin_focus, bool need_grad) {
  auto r = twin_head_cpu(h_s, h_c, w_s, w_c, b_s, b_c, mix, y, alpha, c, gamma, fusion, twin_focus, need_grad);
  return {r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10]};
}

}  // namespace

TORCH_LIBRARY(tf4ctr_fast, m) {
  m.def(
      "twin_head(Tensor h_s, Tensor h_c, Tensor w_s, Tensor w_c, Tensor b_s, Tensor b_c, Tensor mix, "
      "Tensor y, float alpha, float c, float gamma, int fusion, bool twin_focus, bool need_grad) -> "
      "(Tensor loss, Tensor z, Tensor z_s, Tensor z_c, Tensor g_s, Tensor g_c, Tensor grad_w_s, "
      "Tensor grad_w_c, Tensor grad_b_s, Tensor grad_b_c, Tensor grad_mix)");
  m.def("twin_head_grad_h(Tensor g, Tensor w, Tensor scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(tf4ctr_fast, CPU, m) {
  m.impl("twin_head", &twin_head_cpu_op);
  m.impl("twin_head_grad_h", &twin_head_grad_h_cpu);
}
