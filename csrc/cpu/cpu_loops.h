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

// The blocks are counted up front rather than tested as `i + kLanes <= end`: under -fwrapv
// (which Python's sysconfig flags add to every extension build) that test compiles to
// permute-heavy code ~4x slower (0.37 vs 0.09 ms for 786k floats, AVX-512).
template <typename acc_t, typename F>
GANFAST_CPU_CLONES acc_t sum_range(int64_t begin, int64_t end, const F& f) {
  acc_t lanes[kLanes] = {};
  const int64_t blocks = (end - begin) / kLanes;
  for (int64_t k = 0; k < blocks; ++k) {
    const int64_t i = begin + k * kLanes;
    for (int j = 0; j < kLanes; ++j) lanes[j] += f(i + j);
  }
  acc_t total = 0;
  for (int j = 0; j < kLanes; ++j) total += lanes[j];
  for (int64_t i = begin + blocks * kLanes; i < end; ++i) total += f(i);
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

// ---- loops over rows: a per-sample or per-channel value held constant along a row ----------
// (added for the penalty and bias_act families; the loops above are unchanged)
//
//  * chunked_row_for(n, len, row, f):  f(row(s), i) for every i in [0, n), s = i / len the row
//    of i (a sample, a channel plane); row(s) is evaluated once per row, into a local, so the
//    inner loop sees a loop-invariant value (no load that a store could alias) and vectorises.
//  * chunked_cyclic_for(n, len, f):  f(j, i) for every i, j = i % len (the channel of a
//    channels-last element, for a period len that is a multiple of the channel count); the
//    inner loop runs along j.
//  * row_sums<acc_t>(rows, len, f):  for each row s, the sum of f(i) over its len elements.
//    Each row is cut into fixed pieces of kChunk elements summed in 16 lanes, the pieces
//    (in parallel) stored and then added in order in double: the result does not depend on the
//    number of threads.

template <typename R, typename F>
GANFAST_CPU_CLONES void row_range(int64_t begin, int64_t end, int64_t len, const R& row, const F& f) {
  int64_t s = begin / len;
  int64_t start = begin;
  while (start < end) {
    const int64_t stop = std::min(end, (s + 1) * len);
    const auto p = row(s);
    for (int64_t i = start; i < stop; ++i) f(p, i);
    start = stop;
    ++s;
  }
}

template <typename F>
GANFAST_CPU_CLONES void cyclic_range(int64_t begin, int64_t end, int64_t len, const F& f) {
  int64_t base = begin - begin % len;
  int64_t j0 = begin - base;
  while (base < end) {
    const int64_t j1 = std::min(len, end - base);
    for (int64_t j = j0; j < j1; ++j) f(j, base + j);
    base += len;
    j0 = 0;
  }
}

// len > 0 wherever n > 0.
template <typename R, typename F>
void chunked_row_for(int64_t n, int64_t len, const R& row, const F& f) {
  if (n <= 0) return;
  if (n <= kChunk) return row_range(0, n, len, row, f);
  at::parallel_for(0, n, kChunk, [&](int64_t b, int64_t e) { row_range(b, e, len, row, f); });
}

template <typename F>
void chunked_cyclic_for(int64_t n, int64_t len, const F& f) {
  if (n <= 0) return;
  if (n <= kChunk) return cyclic_range(0, n, len, f);
  at::parallel_for(0, n, kChunk, [&](int64_t b, int64_t e) { cyclic_range(b, e, len, f); });
}

// Returns the rows sums in double; all 0 when len is 0.
template <typename acc_t, typename F>
std::vector<double> row_sums(int64_t rows, int64_t len, const F& f) {
  std::vector<double> sums(static_cast<size_t>(std::max<int64_t>(rows, 0)), 0.0);
  if (rows <= 0 || len <= 0) return sums;
  const int64_t pieces = (len + kChunk - 1) / kChunk;  // per row
  const int64_t total = rows * pieces;
  std::vector<double> partial(total);
  // Each parallel task gets at least kChunk elements' worth of pieces.
  const int64_t grain = std::max<int64_t>(1, kChunk / std::min(len, kChunk));
  at::parallel_for(0, total, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t s = t / pieces, k = t % pieces;
      const int64_t b = s * len + k * kChunk;
      const int64_t e = s * len + std::min(len, (k + 1) * kChunk);
      partial[t] = static_cast<double>(sum_range<acc_t>(b, e, f));
    }
  });
  for (int64_t s = 0; s < rows; ++s) {
    double total_s = 0;
    for (int64_t k = 0; k < pieces; ++k) total_s += partial[s * pieces + k];
    sums[s] = total_s;
  }
  return sums;
}

}  // namespace ganfast::cpu
