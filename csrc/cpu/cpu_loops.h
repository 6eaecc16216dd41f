// cpu_loops.h: the two loop shapes every CPU kernel uses, written so GCC vectorises them.
//
//  * chunked_sum(n, f):  sum of f(i) over [0, n) in float lanes per fixed-size chunk, chunks in
//    parallel, then the chunk partials added in order: the result does not depend on the
//    number of threads.
//  * chunked_for(n, f):  f(i) for every i, chunks in parallel.
//
// The innermost loops are compiled for AVX-512, AVX2 and baseline x86-64 and picked at load
// time (GCC target_clones), with -fno-math-errno -fno-trapping-math (setup.py) so that the
// branch-free math of gan_math.h becomes vector code. A lambda f is inlined into each clone.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define GANFAST_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default"), flatten))
#else
#define GANFAST_CPU_CLONES
#endif

namespace ganfast::cpu {

// Elements per parallel chunk: small losses (a batch of logits) run on the calling thread.
constexpr int64_t kChunk = 16384;
constexpr int kLanes = 16;

template <typename acc_t, typename F>
GANFAST_CPU_CLONES acc_t sum_range(int64_t begin, int64_t end, const F& f) {
  acc_t lanes[kLanes] = {};
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lanes[j] += f(i + j);
  acc_t total = 0;
  for (int j = 0; j < kLanes; ++j) total += lanes[j];
  for (; i < end; ++i) total += f(i);
  return total;
}

template <typename F>
GANFAST_CPU_CLONES void for_range(int64_t begin, int64_t end, const F& f) {
  for (int64_t i = begin; i < end; ++i) f(i);
}

// Returns the sum in double (chunk partials are added in double, in chunk order).
template <typename acc_t, typename F>
double chunked_sum(int64_t n, const F& f) {
  if (n <= kChunk) return static_cast<double>(sum_range<acc_t>(0, n, f));
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      partial[c] = static_cast<double>(sum_range<acc_t>(c * kChunk, std::min(n, (c + 1) * kChunk), f));
  });
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

template <typename F>
void chunked_for(int64_t n, const F& f) {
  if (n <= kChunk) return for_range(0, n, f);
  at::parallel_for(0, n, kChunk, [&](int64_t b, int64_t e) { for_range(b, e, f); });
}

}  // namespace ganfast::cpu
