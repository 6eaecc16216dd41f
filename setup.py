"""Builds ganfast._C: the operator schemas, the CPU kernels and, when a CUDA toolkit is
available, the CUDA kernels. No GPU is needed to compile the CUDA kernels.

Environment:
  GANFAST_CUDA=0          skip the CUDA kernels even where they could be built
  CUDA_HOME               the CUDA toolkit; otherwise the one the nvcc on PATH belongs to
  TORCH_CUDA_ARCH_LIST    GPU architectures; "8.0;9.0+PTX" when unset and no GPU is visible
  MAX_JOBS                parallel compile jobs (ninja)
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"


def find_cuda_home():
    """The CUDA toolkit nvcc really runs from (the nvcc on PATH may be a wrapper script)."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.cu"
        probe.write_text("int main() { return 0; }\n")
        result = subprocess.run([nvcc, "--dryrun", str(probe)], capture_output=True, text=True)
    match = re.search(r"_HERE_=(\S+)", result.stdout + result.stderr)
    if match is None:
        return str(Path(nvcc).resolve().parent.parent)
    return str(Path(match.group(1)).resolve().parent)


def want_cuda(torch):
    if os.environ.get("GANFAST_CUDA", "1") == "0":
        print("ganfast: GANFAST_CUDA=0, building without the CUDA kernels")
        return False
    if torch.version.cuda is None:
        print("ganfast: this torch has no CUDA support, building without the CUDA kernels")
        return False
    cuda_home = find_cuda_home()
    if cuda_home is None or not (Path(cuda_home) / "bin" / "nvcc").exists():
        print("ganfast: nvcc not found, building without the CUDA kernels")
        return False
    # torch.utils.cpp_extension reads CUDA_HOME when it is imported, so set it first.
    os.environ["CUDA_HOME"] = cuda_home
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # With no GPU visible torch cannot guess the architectures (and raises IndexError).
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
    print(f"ganfast: building the CUDA kernels with {cuda_home} for "
          f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')}")
    return True


def extensions():
    import torch

    with_cuda = want_cuda(torch)
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cpp"))
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "autograd").glob("*.cpp"))
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cpu").glob("*.cpp"))
    # -fno-math-errno / -fno-trapping-math (as torch's own build) let GCC vectorise the
    # branch-free math of csrc/gan_math.h; no -ffast-math: NaN and inf must behave.
    cxx = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-Wall", "-Wno-unused-function"]
    link = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is inline OpenMP in torch's Linux builds: without -fopenmp the CPU
        # kernels would silently run on one thread. The soname matches torch's bundled
        # libgomp.so.1, so the one runtime torch already loaded is the one used.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    macros = []
    if with_cuda:
        sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        if os.environ.get("GANFAST_PTXAS_VERBOSE") == "1":
            nvcc += ["-Xptxas", "-v"]
        macros.append(("GANFAST_WITH_CUDA", None))
        return [CUDAExtension("ganfast._C", sources, define_macros=macros, py_limited_api=True,
                              extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link)]
    return [CppExtension("ganfast._C", sources, define_macros=macros, py_limited_api=True,
                         extra_compile_args={"cxx": cxx}, extra_link_args=link)]


def main():
    ext_modules = extensions()  # first: it sets CUDA_HOME, which cpp_extension reads on import
    from torch.utils.cpp_extension import BuildExtension

    setup(
        ext_modules=ext_modules,
        cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)},
        options={"bdist_wheel": {"py_limited_api": "cp39"}},
    )


if __name__ == "__main__":
    main()
