// cpu_alloc.h: how the CPU kernels allocate their full-size outputs.
//
// An output of 32 MiB or more comes from glibc as a fresh mmap (above its largest mmap
// threshold on 64-bit), so every call pays one page fault per 4 KiB page on first write: a
// 256x3x128x128 float gradient (50 MB) takes 12,800 faults, measured ~11 ms of the ~13 ms its
// penalty backward took on this project's 2-core CPU, against ~1.8 ms to write into memory
// already mapped. Advising transparent huge pages on such a buffer before the kernel writes it
// (what torch's opt-in THP_MEM_ALLOC_ENABLE=1 does for every allocation) cuts the faults
// 512-fold: measured 11.7 -> 5.2 ms for that fresh 50 MB write. It is a hint only: where the
// kernel's THP mode is "never", or the allocator hands back memory already mapped, nothing
// changes. Smaller outputs are left alone: they come from the heap, often already mapped, and
// a huge page there would outlive the tensor.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace ganfast::cpu {

constexpr int64_t kHugePageAdviceBytes = int64_t(32) << 20;

inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const int64_t bytes = static_cast<int64_t>(t.nbytes());
  if (bytes < kHugePageAdviceBytes) return;
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = (begin + static_cast<uintptr_t>(bytes)) & ~(kHuge - 1);
  // The result is ignored on purpose: a refused hint costs only the speed it would have bought.
  if (last > first) (void)madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

// at::empty_like(like) (same shape, dtype and memory layout), huge pages advised when large.
inline at::Tensor empty_output_like(const at::Tensor& like) {
  at::Tensor out = at::empty_like(like);
  advise_huge_pages(out);
  return out;
}

}  // namespace ganfast::cpu
