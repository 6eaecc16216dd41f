"""What this install of ganfast is: `ganfast --version`, `ganfast.show_config()`.

    ganfast.show_config()          # prints it: paste this into bug reports
    info = ganfast.config()        # the same as a dict (JSON-serialisable)

It says how the C++/CUDA library was built (read from the library itself, so it cannot disagree
with the code that runs: setup.py compiles the build information into ganfast._C), what it runs
with now (torch, CUDA, Triton, Python, the devices), which backends run here and why the others
do not, and the environment variables that change what runs.
"""
from __future__ import annotations

import functools
import os
import platform
import sys
from pathlib import Path
from typing import Optional, TextIO

import torch

# The environment variables that change which kernels run or how they are built.
ENVIRONMENT = ("GANFAST_BACKEND", "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")


def build_info() -> dict:
    """How ganfast._C was built: {"cuda": bool, "cuda_archs": "8.0;9.0+PTX", "cuda_toolkit": "13.0",
    "cuda_skipped": why the CUDA kernels were not built ("" when they were), "torch", "torch_cuda",
    "python", "compiler"} as setup.py saw them."""
    from . import _C

    return dict(_C._build_info())


def _arch_list(archs: str) -> list[tuple[int, int, bool]]:
    """"8.0;9.0+PTX" -> [(8, 0, False), (9, 0, True)]: (major, minor, with PTX)."""
    out = []
    for item in archs.replace(",", ";").replace(" ", ";").split(";"):
        item = item.strip()
        if not item:
            continue
        ptx = item.endswith("+PTX")
        major, _, minor = item.removesuffix("+PTX").partition(".")
        try:
            out.append((int(major), int(minor.rstrip("af") or 0), ptx))
        except ValueError:
            continue
    return out


def arch_runs_on(archs: str, capability: tuple[int, int]) -> Optional[str]:
    """Which compiled code of `archs` runs on a GPU of compute `capability`: "sm_80" (machine code:
    same major, minor not above the GPU's), "PTX 9.0 (JIT-compiled at first launch)", or None."""
    major, minor = capability
    built = _arch_list(archs)
    sass = [(M, m) for M, m, _ in built if M == major and m <= minor]
    if sass:
        M, m = max(sass)
        return f"sm_{M}{m}"
    ptx = [(M, m) for M, m, p in built if p and (M, m) <= (major, minor)]
    if ptx:
        M, m = max(ptx)
        return f"PTX {M}.{m} (JIT-compiled at first launch)"
    return None


@functools.lru_cache(maxsize=None)
def _cpuinfo() -> dict:
    """The first "model name" and "flags" of /proc/cpuinfo ({} where there is none)."""
    out = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "flags") and key not in out:
                out[key] = value.strip()
    except OSError:
        pass
    return out


def _cpu_name() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def _cpu_kernels() -> str:
    """Which clone of the CPU kernels runs (csrc/cpu: GCC target_clones avx512f / avx2 / default,
    picked at load time from the CPU's features)."""
    flags = _cpuinfo().get("flags", "").split()
    if not flags:
        return f"picked at load time (torch sees {torch.backends.cpu.get_cpu_capability()})"
    return "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "default (no AVX2)"


def _triton() -> dict:
    try:
        import triton
    except Exception as exc:  # noqa: BLE001  (ImportError, or a broken install)
        return {"version": None, "problem": f"not importable: {type(exc).__name__}: {exc}"}
    return {"version": getattr(triton, "__version__", "unknown"), "problem": None}


def _install_kind() -> str:
    root = Path(__file__).resolve().parents[1]
    if (root / "setup.py").is_file() and (root / "csrc").is_dir():
        return f"source checkout at {root} (editable install)"
    return f"installed package at {Path(__file__).resolve().parent}"


def config() -> dict:
    """Everything show_config() prints, as a dict of plain values."""
    from . import __version__
    from .backend import available_backends

    built = build_info()
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            cc = (props.major, props.minor)
            gpus.append({"index": i, "name": props.name, "capability": f"{cc[0]}.{cc[1]}",
                         "memory_gib": round(props.total_memory / 2**30, 1),
                         "cuda_kernels_run_as": arch_runs_on(built["cuda_archs"], cc) if built["cuda"] else None})
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "ganfast": __version__,
        "install": _install_kind(),
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": cudnn,
        "triton": _triton(),
        "built": built,
        "cpu": {"name": _cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                "ganfast_cpu_kernels": _cpu_kernels()},
        "gpus": gpus,
        "backends": {name: {"available": b.available, "detail": b.detail}
                     for name, b in available_backends().items()},
        "environment": {k: os.environ[k] for k in ENVIRONMENT if k in os.environ},
    }


def _cudnn(version) -> str:
    if not version:
        return "none"
    return f"{version // 10000}.{version % 10000 // 100}.{version % 100}" if version >= 10000 else str(version)


def format_config(info: dict) -> str:
    """The text show_config() prints."""
    built = info["built"]
    row = "  {:<13} {}".format
    t = info["triton"]
    lines = [f"ganfast {info['ganfast']}: {info['install']}",
             row("python", info["python"]),
             row("platform", info["platform"]),
             row("torch", f"{info['torch']} (CUDA {info['torch_cuda'] or 'none'}, cuDNN {_cudnn(info['cudnn'])})"),
             row("triton", t["version"] if t["version"] else t["problem"]),
             "built with"]
    mismatch = "" if built["torch"] == info["torch"] else (
        f"  <- differs from the torch running now ({info['torch']}): reinstall ganfast "
        "(pip install --no-build-isolation ...) if its ops fail to load or misbehave")
    compiler = built["compiler"]
    lines += [row("torch", built["torch"] + mismatch),
              row("python", built["python"]),
              row("compiler", f"gcc {compiler}" if compiler[:1].isdigit() else compiler)]
    if built["cuda"]:
        lines.append(row("CUDA kernels", f"compiled with CUDA {built['cuda_toolkit'] or '?'} for "
                                         f"TORCH_CUDA_ARCH_LIST={built['cuda_archs']}"))
    else:
        lines.append(row("CUDA kernels", f"not compiled: {built['cuda_skipped']}"))
    lines.append(row("CPU kernels", "compiled (avx512f / avx2 / default clones, picked at load time)"))
    cpu = info["cpu"]
    lines.append("devices")
    lines.append(row("cpu", f"{cpu['name']}, {cpu['cores']} logical cores, torch threads {cpu['torch_threads']}, "
                            f"ganfast CPU kernels: {cpu['ganfast_cpu_kernels']}"))
    if not info["gpus"]:
        lines.append(row("gpu", "none visible to torch"))
    for g in info["gpus"]:
        runs = ""
        if built["cuda"]:
            runs = (f", CUDA kernels run as {g['cuda_kernels_run_as']}" if g["cuda_kernels_run_as"] else
                    f", NOT covered by the compiled architectures ({built['cuda_archs']}): reinstall with "
                    f"TORCH_CUDA_ARCH_LIST={g['capability']}, or use GANFAST_BACKEND=triton")
        sm = "sm_" + g["capability"].replace(".", "")
        lines.append(row(f"cuda:{g['index']}", f"{g['name']} ({sm}, {g['memory_gib']} GiB){runs}"))
    lines.append("backends (ganfast.available_backends())")
    for name, b in info["backends"].items():
        lines.append(row(name, f"{'yes' if b['available'] else 'no '}  {b['detail']}"))
    env = info["environment"]
    lines.append("environment")
    lines.append(row("set", ", ".join(f"{k}={v}" for k, v in env.items())) if env else
                 row("set", "none of " + ", ".join(ENVIRONMENT)))
    return "\n".join(lines)


def show_config(file: Optional[TextIO] = None) -> None:
    """Print what this install is and what runs here (paste it into bug reports)."""
    print(format_config(config()), file=file or sys.stdout)
