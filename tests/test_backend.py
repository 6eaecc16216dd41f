"""Backend selection: set_backend / use_backend / GANFAST_BACKEND, available_backends(), the
errors of a backend that cannot run the given tensors, and which ops each choice dispatches."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ganfast
from conftest import GPU, implementation_device
from ganfast import backend, ops

REPO = Path(__file__).resolve().parent.parent
NAMES = ("auto", "cuda", "triton", "cpu", "reference")


def run_python(code: str, set_env=None, drop_env=()):
    """Runs `code` in a fresh interpreter (so import-time state is fresh); returns the result."""
    env = {k: v for k, v in os.environ.items() if k not in drop_env}
    env.update(set_env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


class OpNames(TorchDispatchMode):
    """Records every op dispatched below autograd, as 'namespace::name'."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.name())
        return func(*args, **(kwargs or {}))


def _call_every_op(device="cpu"):
    x = torch.full((3, 2), 0.25, device=device)
    t = torch.full((3, 2), 0.5, device=device)
    ops.bce_with_logits(x, t)
    ops.binary_cross_entropy(x, t)
    ops.gan_d_loss(x, t[0])
    ops.gan_g_loss(x)


@pytest.fixture
def restore_backend():
    previous = ganfast.get_backend()
    yield
    ganfast.set_backend(previous)


# ---- selection ------------------------------------------------------------------------------------


def test_set_backend_selects_for_following_calls(restore_backend):
    ganfast.set_backend("reference")
    assert ganfast.get_backend() == "reference"
    with OpNames() as seen:
        _call_every_op()
    assert not any(n.startswith(("ganfast::", "ganfast_triton::")) for n in seen.ops), seen.ops
    ganfast.set_backend("cpu")
    assert ganfast.get_backend() == "cpu"
    with OpNames() as seen:
        _call_every_op()
    assert [n for n in seen.ops if n.startswith("ganfast")] == [
        "ganfast::bce_with_logits", "ganfast::binary_cross_entropy", "ganfast::gan_d_loss", "ganfast::gan_g_loss"]


def test_use_backend_restores_on_exit_and_on_error():
    before = ganfast.get_backend()
    with ganfast.use_backend("reference"):
        assert ganfast.get_backend() == "reference"
        with ganfast.use_backend("cpu"):
            assert ganfast.get_backend() == "cpu"
        assert ganfast.get_backend() == "reference"
    assert ganfast.get_backend() == before
    with pytest.raises(KeyError):
        with ganfast.use_backend("reference"):
            raise KeyError("boom")
    assert ganfast.get_backend() == before


def test_selection_is_local_to_the_thread():
    seen = {}
    with ganfast.use_backend("reference"):
        th = threading.Thread(target=lambda: seen.setdefault("other", ganfast.get_backend()))
        th.start()
        th.join()
        assert ganfast.get_backend() == "reference"
    assert seen["other"] == os.environ.get("GANFAST_BACKEND", "auto")


@pytest.mark.parametrize("bad", ["gpu", "CPU", "", "torch"])
def test_unknown_backend_name_raises_listing_choices(bad):
    before = ganfast.get_backend()
    with pytest.raises(ValueError, match=r"unknown backend .*choose one of auto, cuda, triton, cpu, reference"):
        ganfast.set_backend(bad)
    with pytest.raises(ValueError, match="choose one of auto, cuda, triton, cpu, reference"):
        with ganfast.use_backend(bad):
            pass  # pragma: no cover
    assert ganfast.get_backend() == before


def test_environment_variable_selects_the_backend():
    code = """
        import torch, ganfast
        from torch.utils._python_dispatch import TorchDispatchMode
        class M(TorchDispatchMode):
            def __init__(self): super().__init__(); self.ops = []
            def __torch_dispatch__(self, f, types, args=(), kwargs=None):
                self.ops.append(f.name()); return f(*args, **(kwargs or {}))
        with M() as m:
            ganfast.ops.gan_g_loss(torch.zeros(3))
        print(ganfast.get_backend(), any(n.startswith("ganfast") for n in m.ops))
    """
    ref = run_python(code, set_env={"GANFAST_BACKEND": "reference"})
    assert ref.returncode == 0, ref.stderr
    assert ref.stdout.split() == ["reference", "False"]
    default = run_python(code, drop_env=("GANFAST_BACKEND",))
    assert default.returncode == 0, default.stderr
    assert default.stdout.split() == ["auto", "True"]


def test_environment_variable_with_unknown_name_fails_at_import():
    bad = run_python("import ganfast", set_env={"GANFAST_BACKEND": "gpu"})
    assert bad.returncode != 0
    assert "ValueError" in bad.stderr and "choose one of auto, cuda, triton, cpu, reference" in bad.stderr


def test_importing_ganfast_leaves_triton_unimported():
    """So TRITON_INTERPRET may still be set after `import ganfast` (tests/conftest.py relies on
    `import torch` not importing triton either)."""
    r = run_python("""
        import sys, torch
        a = "triton" in sys.modules
        import ganfast, ganfast.losses
        print(a, "triton" in sys.modules)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]


# ---- what is available ------------------------------------------------------------------------


def test_available_backends_reports_every_backend():
    info = ganfast.available_backends()
    assert set(info) == set(NAMES), list(info)
    for name, entry in info.items():
        assert isinstance(entry, backend.BackendInfo)
        assert isinstance(entry.available, bool), name
        assert isinstance(entry.detail, str) and entry.detail.strip(), name
    assert info["auto"].available and info["reference"].available
    assert info["cpu"].available, info["cpu"].detail  # this install is built with its CPU kernels
    assert info["cuda"].available == (backend.cuda_kernels_built() and GPU), info["cuda"].detail
    if not backend.cuda_kernels_built():
        assert "not compiled" in info["cuda"].detail
    elif not GPU:
        assert "no GPU" in info["cuda"].detail
    try:
        import triton  # noqa: F401
    except ImportError:  # pragma: no cover
        assert not info["triton"].available and "not importable" in info["triton"].detail
    else:
        # conftest.py switched the interpreter on where no GPU is visible.
        assert info["triton"].available, info["triton"].detail
        if not GPU:
            assert "TRITON_INTERPRET=1" in info["triton"].detail


# ---- a backend that cannot run the tensors ------------------------------------------------------


def test_cuda_backend_on_cpu_tensors_raises():
    with ganfast.use_backend("cuda"):
        with pytest.raises(ganfast.BackendUnavailableError, match="'cuda' runs CUDA tensors only; got cpu"):
            _call_every_op("cpu")
    assert issubclass(ganfast.BackendUnavailableError, RuntimeError)


def test_cuda_backend_without_cuda_kernels_says_so():
    if backend.cuda_kernels_built():
        pytest.skip("this install compiled the CUDA kernels")
    with pytest.raises(ganfast.BackendUnavailableError, match="no CUDA kernels") as exc:
        backend._resolve_uncached("cuda", "cuda")
    assert ganfast.available_backends()["cuda"].detail in str(exc.value)


def test_cpu_backend_on_meta_tensors_raises():
    with ganfast.use_backend("cpu"):
        with pytest.raises(ganfast.BackendUnavailableError, match="'cpu' runs CPU tensors only; got meta"):
            _call_every_op("meta")


def test_triton_backend_on_cpu_tensors_without_interpreter_raises():
    r = run_python("""
        import torch, ganfast
        print(ganfast.available_backends()["triton"])
        with ganfast.use_backend("triton"):
            try:
                ganfast.ops.gan_g_loss(torch.zeros(3))
            except ganfast.BackendUnavailableError as exc:
                print("raised:", exc)
    """, drop_env=("TRITON_INTERPRET",))
    assert r.returncode == 0, r.stderr
    raised = [line for line in r.stdout.splitlines() if line.startswith("raised:")]
    assert raised, r.stdout
    assert "TRITON_INTERPRET=1" in raised[0]
    if not GPU:
        assert "available=False" in r.stdout and "TRITON_INTERPRET=1" in r.stdout.splitlines()[0]


# ---- what each choice dispatches -------------------------------------------------------------


@pytest.mark.parametrize("name", ["auto", "cpu"])
def test_auto_and_cpu_on_cpu_tensors_run_the_cpu_kernels(name):
    with ganfast.use_backend(name), OpNames() as seen:
        _call_every_op("cpu")
    assert [n for n in seen.ops if n.startswith("ganfast")] == [
        "ganfast::bce_with_logits", "ganfast::binary_cross_entropy", "ganfast::gan_d_loss", "ganfast::gan_g_loss"]
    # The CPU kernel is what runs: ganfast::gan_d_loss has a CPU kernel and it gave the value.
    assert torch._C._dispatch_has_kernel_for_dispatch_key("ganfast::gan_d_loss", "CPU")


def test_triton_backend_runs_the_triton_ops():
    device = implementation_device("triton")
    with ganfast.use_backend("triton"), OpNames() as seen:
        _call_every_op(device)
    assert [n for n in seen.ops if n.startswith("ganfast")] == [
        "ganfast_triton::bce_with_logits", "ganfast_triton::binary_cross_entropy",
        "ganfast_triton::gan_d_loss", "ganfast_triton::gan_g_loss"]


def test_auto_on_another_device_falls_back_to_the_reference():
    real, fake = torch.zeros(4, device="meta"), torch.zeros(2, 3, device="meta")
    with ganfast.use_backend("auto"), OpNames() as seen:
        out = ops.gan_d_loss(real, fake, "hinge")
        out_g = ops.gan_g_loss(fake, "least_squares")
    assert out.device.type == "meta" and out.shape == () and out_g.shape == ()
    assert not any(n.startswith("ganfast") for n in seen.ops), seen.ops
