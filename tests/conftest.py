"""Shared fixtures of ganfast's tests.

Triton kernels run on CPU tensors through the Triton interpreter, which must be switched on
before triton is imported. Importing torch does not import triton (checked below), so this file
imports torch, asks whether a GPU is visible, and sets TRITON_INTERPRET=1 when none is, before
ganfast (or anything else) can import triton.
"""
import os

import torch

# Triton reads TRITON_INTERPRET when a kernel is decorated with @triton.jit, i.e. when
# ganfast/triton/* is imported; nothing has imported those yet (test_backend.py checks that
# `import torch` and `import ganfast` leave triton alone).
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import contextlib  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import cuda_emu  # noqa: E402  (tests/cuda_emu: csrc/cuda's kernels run on the CPU)
import ganfast  # noqa: E402
from ganfast import backend as _backend  # noqa: E402

GPU = torch.cuda.is_available()

# IEEE float32 for every test: on Ampere and later cuDNN convolutions default to TF32 (torch 2.14:
# torch.backends.cudnn.conv.fp32_precision == "tf32"), operands rounded to 10 mantissa bits, far
# outside the float32 tolerances of the comparisons with float64. The TF32 path has its own test and
# tolerance (test_conv_block.py). The legacy allow_tf32 flag goes first: the new API does not update
# it, and torch raises when anything reads it while it disagrees with the new flags.
torch.backends.cudnn.allow_tf32 = False
torch.backends.fp32_precision = "ieee"
torch.backends.cudnn.conv.fp32_precision = "ieee"
torch.backends.cudnn.rnn.fp32_precision = "ieee"

# Every implementation of an op family, in the order the tests report them: the CUDA kernels run
# twice over, on a GPU ("cuda") and through the emulator in each of its configurations
# ("cuda-emu-<config>", on CPU tensors; GANFAST_CUDA_EMU=0 skips them).
KERNEL_IMPLEMENTATIONS = ("cpu", "triton", "cuda") + cuda_emu.IMPLEMENTATIONS
IMPLEMENTATIONS = ("reference",) + KERNEL_IMPLEMENTATIONS


def is_emulated(name: str) -> bool:
    return name in cuda_emu.IMPLEMENTATIONS


def selected(name: str):
    """A context manager selecting implementation `name` for the body: its backend and, for an
    emulated one, the routing of ganfast's C++ ops to the emulated CUDA kernels."""
    if not is_emulated(name):
        return ganfast.use_backend(name)
    stack = contextlib.ExitStack()
    stack.enter_context(ganfast.use_backend("cpu"))
    stack.enter_context(cuda_emu.emulating(cuda_emu.config_of(name)))
    return stack


# ---- which implementations this machine can run -----------------------------------------------


def triton_module_path(family: str) -> Path:
    return Path(ganfast.__file__).parent / "triton" / f"{family}.py"


# One op of each family: whether the C++ library registers the family's kernels for a dispatch key.
FAMILY_OPS = {"losses": "gan_d_loss", "penalty": "penalty_from_grad", "bias_act": "bias_act",
              "batch_norm_act": "batch_norm_act", "info_loss": "info_loss",
              "cycle_loss": "cycle_loss", "instance_norm_act": "instance_norm_act",
              "spectral_norm": "spectral_norm", "orthogonal_regularization": "orthogonal_regularization"}
# Families whose C++ kernels live in another family's files (csrc/cpu/<file>.cpp, csrc/cuda/<file>.cu):
# instance norm is batch norm over the per-(n, c) axis, one set of kernels serving both.
CPP_FAMILY_FILES = {"instance_norm_act": "batch_norm_act"}


def cpp_family_registered(family: str, dispatch_key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"ganfast::{FAMILY_OPS[family]}", dispatch_key)


def implementation_device(name: str, family="losses") -> str:
    """The device that implementation `name` of op family `family` (or of every family of a
    tuple of them) runs its tests on here, or a pytest.skip saying why it cannot run here."""
    if not isinstance(family, str):
        devices = [implementation_device(name, f) for f in family]
        return devices[0]
    if name == "reference":
        return "cpu"
    if is_emulated(name):
        if not cuda_emu.enabled():
            pytest.skip("the CUDA emulator is switched off (GANFAST_CUDA_EMU=0)")
        try:
            cuda_emu.load()
        except RuntimeError as exc:  # it builds wherever the tests run: a failure is a failure
            pytest.fail(str(exc))
        if not cuda_emu.has_kernel(FAMILY_OPS[family]):
            pytest.skip(f"{name}: ganfast::{FAMILY_OPS[family]} has no CUDA kernel (csrc/cuda)")
        return "cpu"
    if name == "cpu":
        info = ganfast.available_backends()["cpu"]
        if not info.available:  # the C++ library was built without CPU kernels: a real failure
            pytest.fail(f"the cpu backend is unavailable: {info.detail}")
        if family != "losses" and not cpp_family_registered(family, "CPU"):
            # every family's CPU kernels are always built: a missing one is a broken install
            pytest.fail(f"cpu backend: ganfast::{FAMILY_OPS[family]} has no CPU kernel in this build "
                        f"(csrc/cpu/{CPP_FAMILY_FILES.get(family, family)}.cpp not built)")
        return "cpu"
    if name == "cuda":
        info = ganfast.available_backends()["cuda"]
        if not info.available:
            pytest.skip(f"cuda backend: {info.detail}")
        if family != "losses" and not cpp_family_registered(family, "CUDA"):
            pytest.skip(f"cuda backend: ganfast::{FAMILY_OPS[family]} has no CUDA kernel in this build")
        return "cuda"
    if name == "triton":
        if not triton_module_path(family).exists():  # every family has its Triton kernels
            pytest.fail(f"ganfast/triton/{family}.py is missing")
        info = ganfast.available_backends()["triton"]
        if not info.available:
            pytest.skip(f"triton backend: {info.detail}")
        device = "cuda" if GPU else "cpu"
        try:
            _backend._resolve_uncached("triton", device)
        except ganfast.BackendUnavailableError as exc:
            pytest.skip(f"triton backend: {exc}")
        # Present but broken is a failure, not a skip: import it here so the error is named.
        __import__(f"ganfast.triton.{family}")
        return device
    raise ValueError(name)


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request):
    """(backend name, device) of every implementation of the losses family, selected for the body
    of the test; absent ones are skipped with the reason."""
    name = request.param
    device = implementation_device(name)
    with selected(name):
        yield name, device


@pytest.fixture(params=KERNEL_IMPLEMENTATIONS)
def kernel_impl(request):
    """Like `impl`, without the reference: the implementations that are compiled kernels."""
    name = request.param
    device = implementation_device(name)
    with selected(name):
        yield name, device


def family_fixtures(*families, names=("impl", "kernel_impl")):
    """(impl, kernel_impl) fixtures for a test module of op families other than the losses:
    `impl, kernel_impl = family_fixtures("penalty")` at module level (`names` renames them). An
    implementation whose kernels of any of `families` are absent from this build is skipped with
    the reason."""

    @pytest.fixture(params=IMPLEMENTATIONS, name=names[0])
    def _impl(request):
        device = implementation_device(request.param, families)
        with selected(request.param):
            yield request.param, device

    @pytest.fixture(params=KERNEL_IMPLEMENTATIONS, name=names[1])
    def _kernel_impl(request):
        device = implementation_device(request.param, families)
        with selected(request.param):
            yield request.param, device

    return _impl, _kernel_impl


# ---- random inputs ----------------------------------------------------------------------------


@pytest.fixture
def rng():
    """A torch.Generator seeded per test, so each test's data does not depend on the others."""
    return torch.Generator().manual_seed(20240607)


def randn(shape, dtype=torch.float32, device="cpu", gen=None, scale=1.0, requires_grad=False):
    t = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype=dtype, device=device)
    return t.requires_grad_(requires_grad)


def rand(shape, dtype=torch.float32, device="cpu", gen=None, low=0.0, high=1.0, requires_grad=False):
    t = (low + (high - low) * torch.rand(shape, generator=gen, dtype=torch.float64)).to(dtype=dtype, device=device)
    return t.requires_grad_(requires_grad)


# ---- comparison -------------------------------------------------------------------------------

from ganfast.check import TOLERANCES  # noqa: E402,F401  (atol, rtol) by dtype: one table, shared with `ganfast check`


def tolerance(dtype):
    return TOLERANCES[dtype]


def assert_close(actual, expected, *, atol=None, rtol=None, equal_nan=True, check_dtype=True,
                 name="tensor", max_report=10):
    """torch.isclose with a message naming the mismatching indices and their values.

    `expected` may be a higher-precision oracle: it is compared after rounding to actual's dtype
    (check_dtype=False skips the dtype check, not the rounding)."""
    assert isinstance(actual, torch.Tensor), f"{name}: expected a tensor, got {type(actual).__name__}"
    expected = torch.as_tensor(expected)
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    if check_dtype:
        assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != expected {expected.dtype}"
    d_atol, d_rtol = tolerance(actual.dtype) if actual.dtype in TOLERANCES else (0.0, 0.0)
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol
    a = actual.detach().cpu().to(torch.float64)
    e = expected.detach().cpu().to(actual.dtype).to(torch.float64)
    close = torch.isclose(a, e, rtol=rtol, atol=atol, equal_nan=equal_nan)
    if bool(close.all()):
        return
    bad = (~close).nonzero()
    lines = [f"{name}: {bad.shape[0]} of {a.numel()} elements differ (dtype {actual.dtype}, atol={atol}, "
             f"rtol={rtol})"]
    for idx in bad[:max_report].tolist():
        av, ev = a[tuple(idx)].item(), e[tuple(idx)].item()
        diff = abs(av - ev)
        rel = diff / abs(ev) if ev not in (0.0,) and ev == ev else float("inf")
        lines.append(f"  at index {tuple(idx)}: got {av!r}, expected {ev!r} (abs diff {diff:.3g}, rel diff {rel:.3g})")
    if bad.shape[0] > max_report:
        lines.append(f"  ... and {bad.shape[0] - max_report} more")
    raise AssertionError("\n".join(lines))


# ---- the feature network's cache ---------------------------------------------------------------


@pytest.fixture(autouse=True, scope="session")
def ganfast_cache(tmp_path_factory):
    """One cache directory per test session for the digits CNN of the sample-quality metrics
    (GANFAST_CACHE; subprocesses inherit it): trained once per session (about 20 s), never written to
    the user's ~/.cache."""
    old = os.environ.get("GANFAST_CACHE")
    path = tmp_path_factory.mktemp("ganfast-cache")
    os.environ["GANFAST_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("GANFAST_CACHE", None)
    else:
        os.environ["GANFAST_CACHE"] = old


@pytest.fixture(scope="module")
def one_thread():
    """For the files that train tiny models (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    they gain nothing from intra-op threads, and on a loaded CI machine two threads spinning at every
    barrier of every small op slow these runs tenfold (the engine pins 2-D runs to one thread itself;
    the digits runs use torch's default). The subprocesses of test_train_cli.py get --threads 1."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
