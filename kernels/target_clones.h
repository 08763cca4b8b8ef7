// TF4CTR_CLONES: compile a hot loop for AVX-512, AVX2 and baseline x86-64 and pick one at load time, so
// portable wheels (no -march=native) still vectorize. Elsewhere: one plain build.
#pragma once

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define TF4CTR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define TF4CTR_CLONES
#endif
