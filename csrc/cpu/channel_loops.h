// channel_loops.h: loops over a tensor whose elements each belong to one channel, with
// deterministic per-channel sums (moved out of batch_norm_act.cpp, where they began, so that the
// bias_act family's fused bias gradient uses the same reduction).
//
// Layouts, walked in memory order without a division per element (ChannelWalk):
//   Rows    contiguous, rows of `len` (= inner, the product of the sizes after the channel dim)
//           elements share one channel, c = row % C: the per-channel values are loop invariants of
//           the row;
//   Cyclic  the channel is the fastest dimension (channels_last, a contiguous (N, C), any inner of
//           1): c = i % C, walked as a periodic pattern of period len = C * ceil(kMinPeriod / C),
//           so the inner loop is long even for a few channels;
//   Plain   no channel at all (bias_act without a bias): only the plain loops of cpu_loops.h.
//
// channel_sums: per channel, K sums of a term over its elements. The elements of a channel are cut
// into fixed pieces (Rows: at most kRowsPiece elements, summed in 16 lanes; Cyclic: at most kChunk,
// in the len lanes of the periodic pattern; in the compute type), the pieces run in parallel, and their partial
// sums are added in a fixed order in double: the result does not depend on the number of threads.
// A term may also write an output element as it goes (bias_act's gradient writes dx and sums it):
// the sums then come from the same pass as the output.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_loops.h"

namespace ganfast::cpu {

constexpr int64_t kMinPeriod = 256;
// Rows: the longest piece summed in the compute type (64 values per lane), longer rows are cut into
// several pieces whose sums are added in double. Rows of a few hundred values (batch norm after a
// convolution) are one piece as before; instance_norm_act's rows are whole images (H W values, 4096
// at 64x64), where 16 float lanes of 256 terms each lost ~1e-6 of the statistics (and so of every
// normalised value), as much as the ganfast check tolerance of a float32 result.
constexpr int64_t kRowsPiece = 1024;

struct ChannelWalk {
  enum Mode { Plain, Rows, Cyclic } mode = Plain;
  int64_t n = 0;         // elements
  int64_t channels = 1;  // C
  int64_t len = 1;       // Rows: elements per row (inner); Cyclic: the period of the pattern
};

// The walk of n elements in `channels` channels, rows of `inner` elements (Rows where the tensor is
// contiguous and inner > 1; Cyclic otherwise: the caller knows the channel is the fastest dim).
inline ChannelWalk make_channel_walk(int64_t n, int64_t channels, int64_t inner, bool contiguous) {
  ChannelWalk w;
  w.n = n;
  w.channels = channels;
  if (contiguous && inner > 1) {
    w.mode = ChannelWalk::Rows;
    w.len = inner;
  } else {
    w.mode = ChannelWalk::Cyclic;
    w.len = channels * ((kMinPeriod + channels - 1) / std::max<int64_t>(channels, 1));
  }
  return w;
}

// Per-channel values as the loops read them: one per channel (Rows) or the periodic pattern of
// length len (Cyclic), in the compute type.
template <typename acc_t>
std::vector<acc_t> slots(const ChannelWalk& w, const std::vector<double>& per_channel) {
  const int64_t count = w.mode == ChannelWalk::Rows ? w.channels : w.len;
  std::vector<acc_t> v(static_cast<size_t>(count));
  for (int64_t j = 0; j < count; ++j) v[j] = static_cast<acc_t>(per_channel[j % w.channels]);
  return v;
}

// K values summed together (a term's contribution of one element).
template <typename acc_t, int K>
struct Sums {
  acc_t v[K];
};

// C per-channel values (double) as a CPU tensor of dtype.
inline at::Tensor channel_tensor(const std::vector<double>& v, at::ScalarType dtype) {
  at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(at::kDouble));
  std::copy(v.begin(), v.end(), t.mutable_data_ptr<double>());
  return t.to(dtype);
}

// ---- the loops ---------------------------------------------------------------------------------
// A term functor T has `P param(int64_t slot) const` (the per-channel values of a slot, read from
// arrays) and `Sums<acc_t, K> term(const P&, int64_t i) const` (reductions) or
// `void apply(const P&, int64_t i) const` (elementwise passes).

// The K sums of term over [begin, end), all in one channel, in 16 lanes (counted-blocks form:
// see sum_range in cpu_loops.h on -fwrapv).
template <typename acc_t, int K, typename T, typename P>
GANFAST_CPU_CLONES Sums<acc_t, K> rows_piece_sum(int64_t begin, int64_t end, const T& t, const P p) {
  acc_t lanes[K][kLanes] = {};
  const int64_t blocks = (end - begin) / kLanes;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t i = begin + b * kLanes;
    for (int j = 0; j < kLanes; ++j) {
      const Sums<acc_t, K> v = t.term(p, i + j);
      for (int k = 0; k < K; ++k) lanes[k][j] += v.v[k];
    }
  }
  Sums<acc_t, K> r{};
  for (int j = 0; j < kLanes; ++j)
    for (int k = 0; k < K; ++k) r.v[k] += lanes[k][j];
  for (int64_t i = begin + blocks * kLanes; i < end; ++i) {
    const Sums<acc_t, K> v = t.term(p, i);
    for (int k = 0; k < K; ++k) r.v[k] += v.v[k];
  }
  return r;
}

// The K sums of term over [begin, end) (begin a multiple of len) into the len lanes lanes[k * len + j].
template <typename acc_t, int K, typename T>
GANFAST_CPU_CLONES void cyclic_piece_sum(int64_t begin, int64_t end, int64_t len, const T& t,
                                         acc_t* __restrict lanes) {
  for (int64_t base = begin; base < end; base += len) {
    const int64_t jn = std::min(len, end - base);
    for (int64_t j = 0; j < jn; ++j) {
      const Sums<acc_t, K> v = t.term(t.param(j), base + j);
      for (int k = 0; k < K; ++k) lanes[k * len + j] += v.v[k];
    }
  }
}

// Per channel c, the K sums of term over its elements: sums[k * C + c], in double (w Rows or Cyclic).
template <typename acc_t, int K, typename T>
std::vector<double> channel_sums(const ChannelWalk& w, const T& t) {
  const int64_t C = w.channels;
  std::vector<double> sums(static_cast<size_t>(K * C), 0.0);
  if (w.n == 0) return sums;
  if (w.mode == ChannelWalk::Rows) {
    const int64_t inner = w.len, rows = w.n / inner;
    const int64_t pieces = (inner + kRowsPiece - 1) / kRowsPiece;  // per row
    const int64_t tasks = rows * pieces;
    std::vector<double> part(static_cast<size_t>(K * tasks));
    const int64_t grain = std::max<int64_t>(1, kChunk / std::min(inner, kRowsPiece));  // ~kChunk values a grain
    at::parallel_for(0, tasks, grain, [&](int64_t t0, int64_t t1) {
      for (int64_t q = t0; q < t1; ++q) {
        const int64_t s = q / pieces, r = q % pieces;
        const int64_t b = s * inner + r * kRowsPiece, e = s * inner + std::min(inner, (r + 1) * kRowsPiece);
        const Sums<acc_t, K> v = rows_piece_sum<acc_t, K>(b, e, t, t.param(s % C));
        for (int k = 0; k < K; ++k) part[K * q + k] = static_cast<double>(v.v[k]);
      }
    });
    for (int64_t q = 0; q < tasks; ++q) {  // row order: for each channel, samples in order
      const int64_t c = (q / pieces) % C;
      for (int k = 0; k < K; ++k) sums[k * C + c] += part[K * q + k];
    }
    return sums;
  }
  const int64_t len = w.len;
  const int64_t piece = len * std::max<int64_t>(1, kChunk / len);
  const int64_t tasks = (w.n + piece - 1) / piece;
  std::vector<double> part(static_cast<size_t>(K * tasks * len));
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<acc_t> lanes(static_cast<size_t>(K * len));
    for (int64_t q = t0; q < t1; ++q) {
      std::fill(lanes.begin(), lanes.end(), acc_t(0));
      cyclic_piece_sum<acc_t, K>(q * piece, std::min(w.n, (q + 1) * piece), len, t, lanes.data());
      for (int64_t j = 0; j < K * len; ++j) part[K * q * len + j] = static_cast<double>(lanes[j]);
    }
  });
  for (int64_t q = 0; q < tasks; ++q)
    for (int k = 0; k < K; ++k)
      for (int64_t j = 0; j < len; ++j) sums[k * C + j % C] += part[(K * q + k) * len + j];
  return sums;
}

// t.apply(param, i) for every element (w Rows or Cyclic).
template <typename T>
void channel_for(const ChannelWalk& w, const T& t) {
  if (w.mode == ChannelWalk::Rows) {
    const int64_t C = w.channels;
    chunked_row_for(
        w.n, w.len, [&](int64_t s) { return t.param(s % C); }, [&](const auto& p, int64_t i) { t.apply(p, i); });
  } else {
    chunked_cyclic_for(w.n, w.len, [&](int64_t j, int64_t i) { t.apply(t.param(j), i); });
  }
}

}  // namespace ganfast::cpu
