// Dropout with a counter-based mask: element i of a call with seed s is kept when the 32-bit hash of
// (i, s) lies at or above p * 2^32 (compared on its top 24 bits); y = x * (kept ? 1 / (1 - p) : 0), as
// torch's x * mask * scale. The mask is a function of (i, s) alone, so backward recomputes it from the seed instead
// of storing it, and the result does not depend on the thread count. torch's CPU dropout draws one
// Bernoulli variate per element from MT19937 and spent about 30 ns per element here (a fifth of a
// Frappe DNN training step); this is a few hashes per element, vectorized.
//
// The op-by-op twin is tf4ctr_fast/reference/dropout.py (same hash in int64 tensor arithmetic).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "target_clones.h"

namespace {

// "lowbias32" (Chris Wellons' hash-prospector): a full-avalanche 32-bit integer hash, built from the
// 32-bit multiplies and shifts every x86-64 SIMD level has.
inline uint32_t hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// Elements begin..end-1, which share the high 32 bits of their index (the loop below then runs on a
// 32-bit counter and vectorizes). Element i is kept when, with two hash rounds so that every bit of
// the 64-bit index and of both seed halves reaches the result,
//   hash32(hash32(lo32(i) ^ seed_lo) ^ seed_hi ^ hi32(i)) >> 8  >=  threshold24.
TF4CTR_CLONES
void mask_scale(const float* __restrict x, float* __restrict y, int64_t begin, int64_t end, uint32_t seed_lo,
                uint32_t seed_hi, uint32_t threshold24, float scale) {
  const uint32_t mix = seed_hi ^ static_cast<uint32_t>(static_cast<uint64_t>(begin) >> 32);
  const uint32_t lo = static_cast<uint32_t>(begin);
  const uint32_t n = static_cast<uint32_t>(end - begin);   // at most 2^32 (one span)
  x += begin;
  y += begin;
  for (uint32_t j = 0; j < n; ++j) {
    const uint32_t h = hash32(hash32((lo + j) ^ seed_lo) ^ mix);
    // a multiply, not a select: x * 0 keeps torch's NaN for a dropped inf, and it vectorizes
    y[j] = x[j] * ((h >> 8) >= threshold24 ? scale : 0.0f);
  }
}

// y = dropout(x) with the mask of `seed` (see the top of the file); p in [0, 1).
at::Tensor dropout_mask_scale(const at::Tensor& x, double p, int64_t seed) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat,
              "dropout_mask_scale: a float32 CPU tensor, got ", x.scalar_type(), " on ", x.device());
  TORCH_CHECK(p >= 0.0 && p < 1.0, "dropout_mask_scale: p must be in [0, 1), got ", p);
  const at::Tensor input = x.contiguous();
  at::Tensor out = at::empty_like(input);
  const uint32_t threshold24 = static_cast<uint32_t>(p * 16777216.0);   // p * 2^24, floored
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  const uint64_t s = static_cast<uint64_t>(seed);
  const uint32_t seed_lo = static_cast<uint32_t>(s), seed_hi = static_cast<uint32_t>(s >> 32);
  const float* src = input.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  constexpr int64_t kSpan = int64_t{1} << 32;   // indices sharing their high 32 bits
  at::parallel_for(0, input.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end;) {
      const int64_t e = std::min(end, (b / kSpan + 1) * kSpan);
      mask_scale(src, dst, b, e, seed_lo, seed_hi, threshold24, scale);
      b = e;
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tf4ctr_fast, m) {
  m.def("dropout_mask_scale(Tensor x, float p, int seed) -> Tensor");
}

TORCH_LIBRARY_IMPL(tf4ctr_fast, CPU, m) {
  m.impl("dropout_mask_scale", &dropout_mask_scale);
}
