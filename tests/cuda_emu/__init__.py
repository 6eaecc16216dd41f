"""csrc/cuda's kernels, unchanged, executed on the CPU: the CUDA emulator of the test suite.

g++ compiles every csrc/cuda/*.cu as C++ with include/cuda_emu.h forced in (the CUDA keywords,
threadIdx and friends, __syncthreads and the warp collectives as switches between cooperative
fibers, atomics, the launch as a loop over blocks) and include/cuda_emu_torch.h (the ops register
as torch.ops.ganfast_cudaemu.* for the CPU dispatch key, so the library loads beside ganfast._C).
`emulating(config)` then routes the CPU kernels of torch.ops.ganfast.* to the emulated CUDA
kernels, so ganfast's own autograd, fake kernels and entry points run them unchanged: the family
tests run the CUDA code as one more implementation, "cuda-emu-<config>".

What it proves and what it does not: see docs/cuda-emulator.md.

Environment: GANFAST_CUDA_EMU=0 skips the emulated implementations; GANFAST_CUDA_EMU_BUILD sets
the build directory (default: build/cuda_emu in the repository), GANFAST_CUDA_EMU_CSRC the sources
(default: the repository's csrc; mutate.py points it at a copy with a planted bug); MAX_JOBS the
parallel compiles.
"""
from __future__ import annotations

import contextlib
import functools
import os
import time
import warnings
from pathlib import Path
from typing import Iterator, Optional

import torch

HERE = Path(__file__).resolve().parent
INCLUDE = HERE / "include"
REPO = HERE.parent.parent
NAMESPACE = "ganfast_cudaemu"

# The emulated GPU, one per configuration: (SMs, resident blocks per SM, the order blocks run in
# and threads resume after a barrier). The occupancy queries answer with SMs x blocks, so the
# launch helpers cap their grids there and the grid-stride loops take several turns.
#   sm1-forward:   one block at a time, in order: every grid-stride loop walks the whole tensor
#                  in one block, and a last-block reduction meets its blocks in index order.
#   sm4-reverse:   8 blocks, run last-to-first; released threads run depth-first, so one warp
#                  runs ahead of its block between barriers (shared-memory reuse races show).
#   sm132-shuffle: an H100-sized grid in a shuffled block order with a run-ahead warp: whichever
#                  block finishes last does the final reduction.
CONFIGS = {
    "sm1-forward": {"CUDAEMU_SM_COUNT": "1", "CUDAEMU_BLOCKS_PER_SM": "1", "CUDAEMU_ORDER": "forward"},
    "sm4-reverse": {"CUDAEMU_SM_COUNT": "4", "CUDAEMU_BLOCKS_PER_SM": "2", "CUDAEMU_ORDER": "reverse"},
    "sm132-shuffle": {"CUDAEMU_SM_COUNT": "132", "CUDAEMU_BLOCKS_PER_SM": "8", "CUDAEMU_ORDER": "shuffle:3"},
}
IMPLEMENTATIONS = tuple(f"cuda-emu-{name}" for name in CONFIGS)


def enabled() -> bool:
    return os.environ.get("GANFAST_CUDA_EMU", "1") != "0"


def config_of(implementation: str) -> str:
    """'cuda-emu-sm1-forward' -> 'sm1-forward'."""
    return implementation[len("cuda-emu-"):]


def build(csrc: Optional[Path] = None, build_dir: Optional[Path] = None, verbose: bool = False) -> Path:
    """Compiles csrc (default: the repository's) for the emulator and returns the library's path.
    Cached: nothing is recompiled unless a source or an emulator header changed."""
    from torch.utils.cpp_extension import load

    csrc = Path(csrc or os.environ.get("GANFAST_CUDA_EMU_CSRC") or REPO / "csrc").resolve()
    build_dir = Path(build_dir or os.environ.get("GANFAST_CUDA_EMU_BUILD") or REPO / "build" / "cuda_emu").resolve()
    wrappers = build_dir / "src"
    wrappers.mkdir(parents=True, exist_ok=True)
    # cpp_extension compiles a .cu with nvcc: each kernel file is compiled through a one-line .cpp
    # that includes it (its own relative includes still resolve next to it).
    sources = [str(csrc / "ganfast.cpp")]
    for cu in sorted((csrc / "cuda").glob("*.cu")):
        wrapper = wrappers / f"{cu.stem}.cu.cpp"
        text = f'#include "{cu}"\n'
        if not wrapper.exists() or wrapper.read_text() != text:
            wrapper.write_text(text)
        sources.append(str(wrapper))
    # Rebuilds are incremental: ninja's depfiles track every header and included .cu of each
    # object, and torch's JIT runs ninja once per process.
    flags = ["-O1", "-include", "cuda_emu.h", "-include",
             "cuda_emu_torch.h", "-Wno-unused-function", "-Wno-unused-variable"]
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    load(name=NAMESPACE, sources=sources, extra_include_paths=[str(INCLUDE), str(csrc)], extra_cflags=flags,
         build_directory=str(build_dir), is_python_module=False, verbose=verbose)
    return build_dir / f"{NAMESPACE}.so"


_loaded: Optional[str] = None  # None: not tried; "": loaded; else why it cannot load


def load() -> None:
    """Builds (first time) and loads the emulated library into this process; raises RuntimeError
    saying why it cannot."""
    global _loaded
    if _loaded is None:
        try:
            started = time.time()
            build()  # cpp_extension.load also loads it (torch.ops.load_library)
            if not ops():
                raise RuntimeError(f"the library registered no {NAMESPACE}:: ops")
            _loaded = ""
            if time.time() - started > 5:
                print(f"\ncuda_emu: csrc/cuda built for the emulator in {time.time() - started:.0f} s")
        except Exception as exc:  # a compile error names the file and line: keep it whole
            _loaded = f"{type(exc).__name__}: {exc}"
    if _loaded:
        raise RuntimeError(f"the CUDA emulator library could not be built: {_loaded}")


@functools.lru_cache(maxsize=None)
def _registered_ops() -> tuple[str, ...]:
    prefix = f"{NAMESPACE}::"
    return tuple(sorted(n[len(prefix):] for n in torch._C._dispatch_get_all_op_names()
                        if n.startswith(prefix) and torch._C._dispatch_has_kernel_for_dispatch_key(n, "CPU")))


def ops() -> list[str]:
    """The ops the emulated library registers (every CUDA kernel of csrc/cuda, by op name). Read
    from the dispatcher once the library is loaded (it registers nothing later), not per test."""
    names = list(_registered_ops())
    if not names:  # asked before the library loaded: do not remember the empty answer
        _registered_ops.cache_clear()
    return names


def has_kernel(op: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{op}", "CPU")


@contextlib.contextmanager
def emulating(config: str) -> Iterator[None]:
    """Within the body, every torch.ops.ganfast.<op> that has a CUDA kernel runs that kernel
    through the emulator (configuration `config` of CONFIGS) on CPU tensors, in place of its CPU
    kernel. Autograd, fake kernels and the Python entry points are ganfast's own, unchanged."""
    load()
    saved = {k: os.environ.get(k) for k in CONFIGS[config]}
    os.environ.update(CONFIGS[config])  # read by the emulator at every launch (getenv)
    lib = torch.library.Library("ganfast", "IMPL")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Oo]verrid.*")
            for name in ops():
                lib.impl(name, getattr(getattr(torch.ops, NAMESPACE), name).default, "CPU")
        yield
    finally:
        lib._destroy()  # the CPU kernels of _C are back
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
