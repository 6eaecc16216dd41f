"""The CUDA kernels: built into this install where they can be, and every one of them compiles
for sm_80 and sm_90 with no warning and no spill (`ptxas -v`). Needs nvcc and a CUDA build of
torch, not a GPU."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

import ganfast

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))


def _setup_module():
    spec = importlib.util.spec_from_file_location("ganfast_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() itself only runs under __main__
    return module


def _cuda_home():
    if torch.version.cuda is None:
        pytest.skip("this torch is not a CUDA build")
    home = _setup_module().find_cuda_home()
    if home is None or not (Path(home) / "bin" / "nvcc").exists():
        pytest.skip("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    return home


def test_cuda_kernels_are_built_when_a_toolkit_is_present():
    _cuda_home()
    if os.environ.get("GANFAST_CUDA") == "0":
        pytest.skip("GANFAST_CUDA=0: this install was asked to skip the CUDA kernels")
    assert ganfast.backend.cuda_kernels_built(), (
        "torch is a CUDA build and nvcc is present, so `pip install` should have compiled the CUDA "
        "kernels; ganfast.available_backends()['cuda'] says: "
        + ganfast.available_backends()["cuda"].detail)


@pytest.mark.slow
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_cuda_kernels_compile_without_warnings_or_spills(source, tmp_path):
    home = _cuda_home()
    includes = [Path(torch.__file__).parent / "include",
                Path(torch.__file__).parent / "include" / "torch" / "csrc" / "api" / "include",
                Path(home) / "include", sysconfig.get_paths()["include"]]
    # The same flags torch's CUDAExtension passes, plus ptxas's resource report.
    cmd = [str(Path(home) / "bin" / "nvcc"), "-c", str(source), "-o", str(tmp_path / "k.o"),
           "-std=c++20", "-O3", "--expt-relaxed-constexpr", "-lineinfo", "-Xptxas", "-v",
           "-Xcompiler", "-fPIC", "-DGANFAST_WITH_CUDA",
           "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
           "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
           "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]
    cmd += [f"-I{p}" for p in includes]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"nvcc failed:\n{log[-6000:]}"

    warnings = [line for line in log.splitlines() if re.search(r"warning", line, re.IGNORECASE)]
    assert not warnings, "nvcc/ptxas warnings:\n" + "\n".join(warnings[:20])

    # ptxas -v: "Compiling entry function '<name>' for 'sm_80'" then
    # "<n> bytes stack frame, <s> bytes spill stores, <l> bytes spill loads".
    entries = re.findall(r"Compiling entry function '([^']+)' for '(sm_\d+)'", log)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert entries, f"ptxas reported no kernels:\n{log[-3000:]}"
    assert len(spills) == len(entries), "a kernel without a spill report:\n" + log[-3000:]
    archs = {arch for _, arch in entries}
    assert archs == {"sm_80", "sm_90"}, f"compiled for {archs}"
    spilling = [(name, arch, s, l) for (name, arch), (s, l) in zip(entries, spills) if s != "0" or l != "0"]
    assert not spilling, f"{len(spilling)} kernels spill, e.g. {spilling[:5]}"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
