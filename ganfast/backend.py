"""Which implementation of an op runs.

Backends:
  auto       CUDA tensors: the CUDA C++ kernels if this install built them, else Triton;
             CPU tensors: the CPU C++ kernels; any other device: the reference.
  cuda       the CUDA C++ kernels (csrc/cuda)
  triton     the Triton kernels (ganfast/triton); on CPU tensors only under the Triton
             interpreter (TRITON_INTERPRET=1 set before triton is imported)
  cpu        the CPU C++ kernels (csrc/cpu)
  reference  pure PyTorch (ganfast/reference), differentiable to any order

Choose with ganfast.set_backend(name), `with ganfast.use_backend(name):`, or the environment
variable GANFAST_BACKEND (read at import). A backend that cannot run the given tensors raises
BackendUnavailableError saying what is missing.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterator, NamedTuple

import torch

BACKENDS = ("auto", "cuda", "triton", "cpu", "reference")


class BackendUnavailableError(RuntimeError):
    """The chosen backend cannot run on these tensors in this install."""


class BackendInfo(NamedTuple):
    available: bool
    detail: str


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"ganfast: unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


_current: contextvars.ContextVar[str] = contextvars.ContextVar(
    "ganfast_backend", default=_check_name(os.environ.get("GANFAST_BACKEND", "auto"))
)


def set_backend(name: str) -> None:
    """Select the backend for every following op call (in this thread / context)."""
    _current.set(_check_name(name))


def get_backend() -> str:
    """The selected backend name (possibly "auto")."""
    return _current.get()


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the body with `name` selected, then restore the previous choice."""
    token = _current.set(_check_name(name))
    try:
        yield
    finally:
        _current.reset(token)


# ---- what this install has -------------------------------------------------------------------


def _has_kernel(dispatch_key: str) -> bool:
    from . import _C  # noqa: F401  (loads the library)

    return torch._C._dispatch_has_kernel_for_dispatch_key("ganfast::gan_d_loss", dispatch_key)


def cuda_kernels_built() -> bool:
    """Whether this install compiled the CUDA C++ kernels (no GPU needed to compile them)."""
    return _has_kernel("CUDA")


def triton_interpreter() -> bool:
    """Whether Triton kernels run through the interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_problem() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"triton is not importable ({exc})"
    return None


def available_backends() -> dict[str, BackendInfo]:
    """Each implementation, whether it can run here, and if not, why."""
    gpu = torch.cuda.is_available()
    info = {"auto": BackendInfo(True, "picks the fastest available implementation per device")}
    if not cuda_kernels_built():
        from .buildinfo import build_info

        info["cuda"] = BackendInfo(False, f"not compiled: {build_info()['cuda_skipped']}")
    elif not gpu:
        info["cuda"] = BackendInfo(False, "compiled, no GPU visible")
    else:
        info["cuda"] = BackendInfo(True, f"compiled, running on {torch.cuda.get_device_name()}")
    problem = _triton_problem()
    if problem is not None:
        info["triton"] = BackendInfo(False, problem)
    elif gpu and triton_interpreter():
        info["triton"] = BackendInfo(True, "interpreter (TRITON_INTERPRET=1): CPU and GPU tensors run "
                                           "interpreted")
    elif gpu:
        info["triton"] = BackendInfo(True, f"compiled for {torch.cuda.get_device_name()}")
    elif triton_interpreter():
        info["triton"] = BackendInfo(True, "interpreter on CPU tensors (TRITON_INTERPRET=1)")
    else:
        info["triton"] = BackendInfo(False, "installed, no GPU visible; set TRITON_INTERPRET=1 before "
                                            "importing triton to run it on CPU tensors")
    info["cpu"] = BackendInfo(_has_kernel("CPU"), "compiled CPU kernels")
    info["reference"] = BackendInfo(True, "pure PyTorch, any device, any derivative order")
    return info


# ---- resolution, on every op call: keep it cheap ---------------------------------------------

# Implementations an op can call. `cpu` and `cuda` are both the C++ library (torch's dispatcher
# picks the kernel by device), so they resolve to CPP.
CPP, TRITON, REFERENCE = "cpp", "triton", "reference"

_checked: dict[tuple[str, str], str] = {}


def _resolve_uncached(name: str, device_type: str) -> str:
    if name == "reference":
        return REFERENCE
    if name == "auto":
        if device_type == "cpu":
            return CPP
        if device_type == "cuda":
            return CPP if cuda_kernels_built() else TRITON
        return REFERENCE
    if name == "cpu":
        if device_type != "cpu":
            raise BackendUnavailableError(
                f"ganfast backend 'cpu' runs CPU tensors only; got {device_type} tensors "
                "(use 'auto', 'cuda' or 'triton')")
        return CPP
    if name == "cuda":
        if device_type != "cuda":
            raise BackendUnavailableError(
                f"ganfast backend 'cuda' runs CUDA tensors only; got {device_type} tensors")
        if not cuda_kernels_built():
            raise BackendUnavailableError(
                "ganfast backend 'cuda': this install has no CUDA kernels "
                f"({available_backends()['cuda'].detail}); reinstall with a CUDA toolkit, "
                "or use 'triton'")
        return CPP
    # triton
    problem = _triton_problem()
    if problem is not None:
        raise BackendUnavailableError(f"ganfast backend 'triton': {problem}")
    if device_type == "cpu" and not triton_interpreter():
        raise BackendUnavailableError(
            "ganfast backend 'triton' on CPU tensors needs the Triton interpreter: set "
            "TRITON_INTERPRET=1 before triton is imported")
    if device_type not in ("cpu", "cuda"):
        raise BackendUnavailableError(f"ganfast backend 'triton' cannot run {device_type} tensors")
    return TRITON


def resolve(tensor: torch.Tensor) -> str:
    """The implementation (CPP, TRITON or REFERENCE) that runs an op on `tensor`."""
    # is_cpu / is_cuda are ~5x cheaper than tensor.device.type, and this runs on every op call.
    device_type = "cpu" if tensor.is_cpu else "cuda" if tensor.is_cuda else tensor.device.type
    key = (_current.get(), device_type)
    impl = _checked.get(key)
    if impl is None:
        impl = _checked[key] = _resolve_uncached(*key)
    return impl
