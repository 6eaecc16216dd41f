"""The transposed-convolution generator block (ganfast.nn.ConvTransposeBlock, ganfast.ops.conv_block),
the discriminator block, the DCGAN models and ganfast.nn.fuse.

Every implementation present (reference, cpu, triton through the interpreter on tiny shapes, cuda
on a GPU) against the plain torch.nn Sequential (ConvTranspose2d, BatchNorm2d, activation) run in
float64 on the same parameters: outputs, every gradient and the running statistics after several
steps, train and eval, float32 / float64 / bfloat16, contiguous and channels_last. fuse() on the
classic PyTorch-examples DCGAN: same outputs, gradients, running statistics after optimizer steps,
state_dict both ways. Error cases.
"""
from __future__ import annotations

import contextlib
import copy
import re

import pytest
import torch
from torch import nn

import ganfast
import cuda_emu
from conftest import GPU, assert_close, implementation_device, is_emulated, selected
from ganfast import backend as _backend
from ganfast.nn import (BatchNorm2dParams, Conv2dBlock, ConvTransposeBlock, DCGANDiscriminator,
                        DCGANGenerator, FusedConv2d, FusedConvTranspose2d, fuse)
from ganfast.ops import conv_block as block_ops

# The emulated CUDA implementations run the block's batch_norm_act through csrc/cuda's kernels
# (the convolution is ATen's on CPU tensors, as the cpu implementation's).
IMPLS = ("reference", "cpu", "triton", "cuda") + cuda_emu.IMPLEMENTATIONS


def _cpp_batch_norm_act_present() -> bool:
    return hasattr(torch.ops.ganfast, "batch_norm_act")


def block_device(name: str) -> str:
    """The device implementation `name` of the block runs on here, or skip/fail saying why."""
    if name == "reference":
        return "cpu"
    if is_emulated(name):
        return implementation_device(name, "batch_norm_act")
    if name == "cpu":
        # The CPU kernels are always built: a missing batch_norm_act is a broken build, not a skip.
        if not _cpp_batch_norm_act_present():
            pytest.fail("cpu backend: torch.ops.ganfast.batch_norm_act is not in this build "
                        "(csrc/cpu/batch_norm_act.cpp not built)")
        return "cpu"
    if name == "cuda":
        info = ganfast.available_backends()["cuda"]
        if not info.available:
            pytest.skip(f"cuda backend: {info.detail}")
        return "cuda"
    if name == "triton":
        device = "cuda" if GPU else "cpu"
        try:
            _backend._resolve_uncached("triton", device)
        except ganfast.BackendUnavailableError as exc:
            pytest.skip(f"triton backend: {exc}")
        __import__("ganfast.ops.triton_conv_block")  # present but broken: a failure, named here
        return device
    raise ValueError(name)


@pytest.fixture(params=IMPLS)
def impl(request):
    device = block_device(request.param)
    with selected(request.param):
        yield request.param, device


# ---- the oracle -----------------------------------------------------------------------------------

ACT_MODULES = {"relu": lambda a: nn.ReLU(), "lrelu": lambda a: nn.LeakyReLU(a), "tanh": lambda a: nn.Tanh(),
               None: lambda a: nn.Identity()}


def torch_sequential(block: ConvTransposeBlock) -> nn.Sequential:
    """The torch.nn Sequential a ConvTransposeBlock stands for, in float64, loaded from the block's
    state_dict through the documented key mapping ('conv.' -> '0.', 'bn.' -> '1.')."""
    c = block.conv
    layers = [nn.ConvTranspose2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding,
                                 bias=c.bias is not None)]
    if block.bn is not None:
        layers.append(nn.BatchNorm2d(c.out_channels, block.bn.eps, block.bn.momentum))
    layers.append(ACT_MODULES[block.act](block.alpha))
    seq = nn.Sequential(*layers).double()
    sd = {k.replace("conv.", "0.", 1).replace("bn.", "1.", 1): v.double() if v.is_floating_point() else v
          for k, v in block.state_dict().items()}
    seq.load_state_dict(sd)
    seq.train(block.training)
    return seq


def randomize_(block: nn.Module, gen) -> None:
    """Non-trivial parameters and running statistics (not torch's 1/0 BatchNorm init)."""
    with torch.no_grad():
        for name, t in list(block.named_parameters()) + list(block.named_buffers()):
            if not t.is_floating_point():
                continue
            r = torch.randn(t.shape, generator=gen, dtype=torch.float64)
            if name.endswith("running_var"):
                r = 0.5 + r.abs()
            elif name.endswith("bn.weight"):
                r = 1.0 + 0.3 * r
            elif name.endswith("conv.weight"):
                r = r * (2.0 / (t.shape[0] * t[0].numel())) ** 0.5
            t.copy_(r.to(t.dtype))


# (N, Cin, H, W, Cout, kernel, stride, padding)
CASES = [
    (1, 3, 1, 1, 5, 4, 1, 0),                 # batch 1 from 1x1: the generator's first layer
    (3, 5, 1, 1, 7, 4, 1, 0),
    (2, 5, 3, 3, 7, 4, 2, 1),                 # the DCGAN upsampling layer, odd channels
    (1, 3, 4, 5, 6, 4, 2, 1),                 # batch 1, non-square
    (2, 4, 3, 5, 3, 3, 2, 0),                 # odd kernel
    (2, 6, 4, 3, 5, 3, 1, 1),                 # stride 1, padding 1
    (3, 2, 2, 3, 3, 5, 3, 2),                 # stride 3
    (2, 3, 3, 4, 4, (4, 3), (2, 1), (1, 0)),  # per-dimension kernel / stride / padding
]
CASE_IDS = ["b1-1x1-k4s1p0", "1x1-k4s1p0", "k4s2p1", "b1-k4s2p1", "k3s2p0", "k3s1p1", "k5s3p2", "k43s21p10"]
# Triton runs interpreted here: a few tiny cases only.
TRITON_CASES = {"b1-1x1-k4s1p0", "k4s2p1", "k3s2p0"}

# (act, conv bias, momentum) rotated through the cases, so every combination appears somewhere.
VARIANTS = [("relu", False, 0.1), ("lrelu", True, 0.3), ("tanh", False, None), (None, True, 0.1)]


def _tol(dtype):
    return {torch.float64: (1e-9, 1e-8), torch.float32: (2e-5, 2e-4)}[dtype]


def _compare(name, actual, expected64, dtype, eager_err=None, scale=None, tol=None):
    """float32/float64: allclose to the float64 oracle (atol relative to the tensor's scale; tol:
    (atol, rtol) instead of the dtype's). bfloat16: the error against float64 no more than twice
    eager torch's own bfloat16 error (+ a rounding unit), so the check tracks what the format
    allows and still catches real bugs."""
    actual = actual.detach().double().cpu()
    expected64 = expected64.detach().double().cpu()
    if scale is None:
        scale = expected64.abs().max().item() if expected64.numel() else 1.0
    if dtype == torch.bfloat16:
        err = (actual - expected64).abs().max().item() if actual.numel() else 0.0
        bound = 2.0 * eager_err + 8e-3 * max(scale, 1e-3)
        assert err <= bound, f"{name}: bfloat16 max error {err:.3g} > {bound:.3g} (eager bf16 error {eager_err:.3g})"
        return
    atol, rtol = tol if tol is not None else _tol(dtype)
    assert_close(actual, expected64, atol=atol * max(scale, 1.0), rtol=rtol, check_dtype=False, name=name)


def _grads_of(module, x, out, up):
    params = [module.get_parameter(n) for n, p in module.named_parameters()]
    gs = torch.autograd.grad(out, [x] + params, up, allow_unused=True)
    names = ["input"] + [n for n, _ in module.named_parameters()]
    return dict(zip(names, gs))


def _seq_name(block_name: str) -> str:
    return block_name.replace("conv.", "0.", 1).replace("bn.", "1.", 1)


def run_block_check(device, case, variant, norm, training, dtype, channels_last, steps, gen, tol=None):
    n, cin, h, w, cout, k, s, p = case
    act, bias, momentum = variant
    block = ConvTransposeBlock(cin, cout, k, s, p, bias=bias, norm=norm, act=act, momentum=momentum)
    randomize_(block, gen)
    block.train(training)
    oracle = torch_sequential(block)
    eager = copy.deepcopy(oracle).to(dtype) if dtype == torch.bfloat16 else None
    block = block.to(device=device, dtype=dtype)
    for step in range(steps):
        x64 = torch.randn((n, cin, h, w), generator=gen, dtype=torch.float64)
        x = x64.to(dtype)
        x64 = x.double()  # the oracle sees the very values the block sees
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = x.to(device).requires_grad_()
        x64.requires_grad_()
        out = block(x)
        ref = oracle(x64)
        assert out.shape == ref.shape and out.dtype == dtype
        up64 = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
        up = up64.to(dtype)
        up64 = up.double()
        grads = _grads_of(block, x, out, up.to(device))
        ref_grads = _grads_of(oracle, x64, ref, up64)
        eager_errs = {}
        if eager is not None:
            xe = x64.detach().to(dtype).requires_grad_()
            oe = eager(xe)
            eager_errs["out"] = (oe.double() - ref).abs().max().item()
            for nme, g in _grads_of(eager, xe, oe, up).items():
                eager_errs[nme] = (g.double() - ref_grads[nme]).abs().max().item()
        where = f"step {step}"
        _compare(f"{where} output", out, ref, dtype, eager_errs.get("out"), tol=tol)
        for nme, g in grads.items():
            key = _seq_name(nme) if nme != "input" else nme
            # With batch statistics the conv bias cancels: its gradient is 0 up to the rounding of
            # sum(dz), whose scale is the BatchNorm bias gradient's.
            scale = ref_grads["1.bias"].abs().max().item() if key == "0.bias" and "1.bias" in ref_grads \
                and training else None
            _compare(f"{where} grad {nme}", g, ref_grads[key], dtype, eager_errs.get(key), scale, tol=tol)
        if not training or block.bn is None:
            # no autograd: the CPU backend's oneDNN post-op path (sampling); stateless here
            with torch.no_grad():
                _compare(f"{where} output under no_grad", block(x), ref, dtype, eager_errs.get("out"), tol=tol)
        if block.bn is not None:
            for buf in ("running_mean", "running_var"):
                got = getattr(block.bn, buf)
                assert got.dtype == dtype
                _compare(f"{where} {buf}", got, getattr(oracle[1], buf), dtype,
                         (getattr(eager[1], buf).double() - getattr(oracle[1], buf)).abs().max().item()
                         if eager is not None else None, tol=tol)
            assert int(block.bn.num_batches_tracked) == int(oracle[1].num_batches_tracked), where
        if eager is not None and training and block.bn is not None:
            eager[1].load_state_dict(oracle[1].state_dict())  # eager bf16 follows the oracle's statistics


def _triton_guard(name, case_id):
    if name == "triton" and case_id not in TRITON_CASES:
        pytest.skip("the Triton interpreter runs only the tiny cases (see TRITON_CASES)")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("ci", range(len(CASES)), ids=CASE_IDS)
def test_block_matches_torch_nn_float32(impl, ci, training, channels_last, rng):
    name, device = impl
    _triton_guard(name, CASE_IDS[ci])
    run_block_check(device, CASES[ci], VARIANTS[ci % len(VARIANTS)], "batch", training, torch.float32,
                    channels_last, steps=3 if training else 1, gen=rng)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("ci", range(len(CASES)), ids=CASE_IDS)
def test_block_without_norm_matches_torch_nn(impl, ci, training, rng):
    name, device = impl
    _triton_guard(name, CASE_IDS[ci])
    act, bias, momentum = VARIANTS[(ci + 1) % len(VARIANTS)]
    run_block_check(device, CASES[ci], (act, bias, momentum), None, training, torch.float32, ci % 2 == 1,
                    steps=1, gen=rng)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("ci", [0, 2, 4], ids=[CASE_IDS[i] for i in (0, 2, 4)])
def test_block_float64_exact(impl, ci, training, rng):
    name, device = impl
    if name == "triton" and CASE_IDS[ci] != "k4s2p1":
        pytest.skip("the Triton interpreter runs float64 on the k4s2p1 case only (time budget)")
    run_block_check(device, CASES[ci], VARIANTS[ci % len(VARIANTS)], "batch", training, torch.float64,
                    ci == 2, steps=2, gen=rng)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("ci", [0, 2, 5], ids=[CASE_IDS[i] for i in (0, 2, 5)])
def test_block_bfloat16(impl, ci, training, channels_last, rng):
    name, device = impl
    _triton_guard(name, CASE_IDS[ci])
    run_block_check(device, CASES[ci], VARIANTS[ci % len(VARIANTS)], "batch", training, torch.bfloat16,
                    channels_last, steps=2, gen=rng)


@contextlib.contextmanager
def cudnn_conv_tf32():
    """cuDNN convolutions in TF32 (torch's default on Ampere and later, switched off for the suite
    by conftest.py), restored on exit."""
    saved = torch.backends.cudnn.conv.fp32_precision
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    try:
        yield
    finally:
        torch.backends.cudnn.conv.fp32_precision = saved


# TF32 keeps 10 mantissa bits: each product is off by up to ~2**-10 relative, so a K-term sum of
# random-sign terms by ~1e-3 of its scale (the normalised output and the gradients alike); 5e-3
# of the scale leaves room for the largest of many outputs and still fails on any real bug.
TF32_TOL = (5e-3, 5e-3)


@pytest.mark.skipif(not GPU, reason="TF32 is GPU arithmetic (cuDNN on Ampere and later)")
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", ["auto", "cuda"])
def test_block_float32_tf32_convolution(name, training, rng):
    """The block with cuDNN's TF32 convolution (what users get by default) against float64, with
    a TF32 tolerance; K = 48 x 4 taps, so the rounding is visible at IEEE tolerances."""
    if name == "cuda":
        block_device("cuda")  # skips where the CUDA kernels are not built
    with ganfast.use_backend(name), cudnn_conv_tf32():
        assert torch.backends.cudnn.conv.fp32_precision == "tf32"
        run_block_check("cuda", (4, 48, 5, 5, 40, 4, 2, 1), ("relu", True, 0.1), "batch", training,
                        torch.float32, training, steps=2, gen=rng, tol=TF32_TOL)
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"


def test_cpu_weight_kept_channels_last(rng):
    """The cpu backend stores a ConvTransposeBlock's weight in channels_last on first use: the same
    Parameter, the same values, state_dict unchanged; other backends leave it alone."""
    block = ConvTransposeBlock(3, 4)
    w = block.conv.weight
    before = w.detach().clone()
    x = torch.randn(2, 3, 2, 2, generator=rng)
    with ganfast.use_backend("reference"):
        block(x)
    assert w.is_contiguous()
    with ganfast.use_backend("cpu"):
        block(x).sum().backward()
    assert block.conv.weight is w and w.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(w.detach(), before) and w.grad.shape == w.shape
    seq = nn.Sequential(nn.ConvTranspose2d(3, 4, 4, 2, 1, bias=False), nn.BatchNorm2d(4))
    seq.load_state_dict({_seq_name(k): v for k, v in block.state_dict().items()})
    assert torch.equal(seq[0].weight, before)


# ---- which implementation runs the block ----------------------------------------------------------

def _resolve_as_cuda(monkeypatch, kernels_built):
    """Every op resolves as for CUDA tensors in an install with (or without) the CUDA kernels: the
    routing a GPU machine sees, exercised here on CPU tensors (Triton through the interpreter)."""
    monkeypatch.setattr(_backend, "cuda_kernels_built", lambda: kernels_built)
    monkeypatch.setattr(_backend, "resolve",
                        lambda t: _backend._resolve_uncached(_backend.get_backend(), "cuda"))


@pytest.mark.parametrize("selected,kernels_built,expected", [
    ("auto", False, block_ops.ATEN),      # cuDNN's convolution, not the IEEE-float32 implicit GEMM
    ("auto", True, block_ops.ATEN),
    ("cuda", True, block_ops.ATEN),
    ("triton", False, block_ops.TRITON),  # the Triton GEMM only when chosen by name
    ("triton", True, block_ops.TRITON),
    ("reference", False, block_ops.REFERENCE),
])
def test_block_routing_on_cuda_tensors(monkeypatch, selected, kernels_built, expected):
    _resolve_as_cuda(monkeypatch, kernels_built)
    with ganfast.use_backend(selected):
        assert block_ops.block_impl(torch.empty(1)) == expected
    if not kernels_built:
        with ganfast.use_backend("cuda"), pytest.raises(ganfast.BackendUnavailableError):
            block_ops.block_impl(torch.empty(1))


def test_block_routing_on_cpu_tensors():
    x = torch.empty(1)
    for selected, expected in (("auto", block_ops.ATEN), ("cpu", block_ops.ATEN),
                               ("reference", block_ops.REFERENCE)):
        with ganfast.use_backend(selected):
            assert block_ops.block_impl(x) == expected


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_block_auto_without_cuda_kernels_runs_aten_conv_and_triton_batch_norm(monkeypatch, training, rng):
    """auto on CUDA tensors without the CUDA kernels: ATen's convolution (cuDNN there), the
    BatchNorm + activation on Triton (in training; eval folds it into the convolution), never the
    Triton implicit GEMM; and the result is the torch.nn block's."""
    try:
        _backend._resolve_uncached("triton", "cpu")
    except ganfast.BackendUnavailableError as exc:
        pytest.skip(f"triton backend: {exc}")
    from ganfast.ops import triton_conv_block
    from ganfast.triton import batch_norm_act as triton_bn

    calls = {"conv": 0, "bn": 0}

    def no_triton_gemm(*args, **kwargs):
        raise AssertionError("the Triton implicit GEMM ran under auto")

    def counted(name, fn):
        def inner(*args, **kwargs):
            calls[name] += args[0].dtype == torch.float32  # (not the float64 oracle's calls)
            return fn(*args, **kwargs)
        return inner

    monkeypatch.setattr(triton_conv_block, "conv_transpose_block", no_triton_gemm)
    monkeypatch.setattr(triton_bn, "batch_norm_act", counted("bn", triton_bn.batch_norm_act))
    monkeypatch.setattr(torch.nn.functional, "conv_transpose2d",
                        counted("conv", torch.nn.functional.conv_transpose2d))
    _resolve_as_cuda(monkeypatch, kernels_built=False)
    with ganfast.use_backend("auto"):
        run_block_check("cpu", CASES[2], VARIANTS[1], "batch", training, torch.float32, False, steps=1, gen=rng)
    assert calls["conv"] > 0
    assert calls["bn"] == (1 if training else 0)


def test_block_empty_batch_eval(impl):
    _, device = impl
    block = ConvTransposeBlock(3, 4).eval().to(device)
    out = block(torch.randn(0, 3, 2, 2, device=device))
    assert out.shape == (0, 4, 4, 4)


def test_block_train_needs_more_than_one_value(impl):
    _, device = impl
    # k1 s1 p0 from 1x1 with batch 1: one value per channel, as BatchNorm2d refuses in training
    block = ConvTransposeBlock(3, 4, 1, 1, 0).to(device)
    with pytest.raises((ValueError, RuntimeError), match="more than 1 value per channel"):
        block(torch.randn(1, 3, 1, 1, device=device))


# ---- gradcheck of the op, double backward -----------------------------------------------------------


def _op_inputs(gen, norm=True, bias=True, n=2, cin=2, h=2, w=3, cout=3, k=3, dtype=torch.float64):
    def r(*shape, scale=1.0, shift=0.0):
        return (shift + scale * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)

    x = r(n, cin, h, w).requires_grad_()
    cw = r(cin, cout, k, k, scale=0.5).requires_grad_()
    cb = r(cout).requires_grad_() if bias else None
    bw = r(cout, scale=0.3, shift=1.0).requires_grad_() if norm else None
    bb = r(cout).requires_grad_() if norm else None
    rm = r(cout) if norm else None
    rv = (0.5 + r(cout).abs()) if norm else None
    return x, cw, cb, bw, bb, rm, rv


@pytest.mark.parametrize("mode", ["train", "eval", "nonorm"])
def test_op_gradcheck(impl, mode, rng):
    name, device = impl
    x, cw, cb, bw, bb, rm, rv = _op_inputs(rng, norm=mode != "nonorm")
    act = {"train": "tanh", "eval": "lrelu", "nonorm": "tanh"}[mode]

    def f(x, cw, cb, *bn):
        bw, bb = bn if bn else (None, None)
        return block_ops.conv_transpose_block(
            x, cw, cb, bw, bb, None if mode == "train" else rm, None if mode == "train" else rv,
            norm=mode != "nonorm", training=mode == "train", momentum=0.1, eps=1e-5, stride=(2, 2),
            padding=(1, 1), act=act, alpha=0.2)

    inputs = [t.to(device) for t in (x, cw, cb) + ((bw, bb) if mode != "nonorm" else ())]
    inputs = [t.detach().requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)


DOUBLE_BACKWARD_ERROR = re.compile(r"(?i)(not implemented|double backward|not differentiable|derivative)")


def _double_backward(block, x):
    out = block(x)
    (gx,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    gx.square().sum().backward()
    return x.grad


def test_double_backward_is_an_error_or_exact(impl, rng):
    """Training with BatchNorm: the fused BatchNorm backward is not differentiable -> a clear error
    from the kernels; the reference is exact. Eval and no-norm blocks: on the C++ backends ATen
    convolutions plus a folded affine, whose double backward must equal torch.nn's; the Triton ops
    raise the same clear error in every mode."""
    name, device = impl
    block = ConvTransposeBlock(3, 4, 4, 2, 1, act="tanh").double()
    randomize_(block, rng)
    x = torch.randn(2, 3, 2, 2, generator=rng, dtype=torch.float64)
    if name != "reference":
        with pytest.raises(RuntimeError, match=DOUBLE_BACKWARD_ERROR):
            _double_backward(block.to(device), x.detach().clone().to(device).requires_grad_())
    for training, norm in ((False, "batch"), (True, None)):
        block = ConvTransposeBlock(3, 4, 4, 2, 1, act="tanh", norm=norm, bias=True).double().train(training)
        randomize_(block, rng)
        oracle = torch_sequential(block)
        try:
            got = _double_backward(block.to(device), x.detach().clone().to(device).requires_grad_())
        except RuntimeError as exc:  # allowed: a clear error (the Triton ops raise for every mode)
            assert name == "triton" and DOUBLE_BACKWARD_ERROR.search(str(exc)), exc
            continue
        want = _double_backward(oracle, x.detach().clone().requires_grad_())
        assert_close(got.cpu(), want, name=f"double backward x.grad (training={training}, norm={norm})")


# ---- the discriminator block ---------------------------------------------------------------------


@pytest.mark.parametrize("norm,training", [(None, True), ("batch", True), ("batch", False)])
def test_conv2d_block_matches_torch_nn(impl, norm, training, rng):
    name, device = impl
    block = Conv2dBlock(3, 5, 4, 2, 1, bias=norm is None, norm=norm, act="lrelu")
    randomize_(block, rng)
    block.train(training)
    layers = [nn.Conv2d(3, 5, 4, 2, 1, bias=norm is None)] + ([nn.BatchNorm2d(5)] if norm else []) + [nn.LeakyReLU(0.2)]
    seq = nn.Sequential(*layers).double().train(training)
    seq.load_state_dict({_seq_name(k): v.double() if v.is_floating_point() else v
                         for k, v in block.state_dict().items()})
    block = block.to(device)
    for step in range(2):
        x64 = torch.randn(2, 3, 6, 8, generator=rng, dtype=torch.float64).requires_grad_()
        x = x64.detach().float().to(device).requires_grad_()
        out, ref = block(x), seq(x64)
        up = torch.randn(ref.shape, generator=rng, dtype=torch.float64)
        g, rg = _grads_of(block, x, out, up.float().to(device)), _grads_of(seq, x64, ref, up)
        _compare("output", out, ref, torch.float32)
        for k, v in g.items():
            _compare(f"grad {k}", v, rg[_seq_name(k) if k != "input" else k], torch.float32)
        if norm:
            _compare("running_var", block.bn.running_var, seq[1].running_var, torch.float32)
            assert int(block.bn.num_batches_tracked) == int(seq[1].num_batches_tracked)


def test_discriminator_gradient_penalty_matches_torch_nn(impl, rng):
    """D without BatchNorm (the default): second derivatives through bias_act are exact."""
    name, device = impl
    if name == "triton":
        pytest.skip("the Triton bias_act double backward is tested in test_bias_act.py; interpreter too slow "
                    "for a whole D here")
    d = DCGANDiscriminator(nc=2, ndf=3, image_size=32).double()
    seq = nn.Sequential()
    for i, m in enumerate(d.main):
        if isinstance(m, Conv2dBlock):
            seq.append(m.conv)
            seq.append(nn.LeakyReLU(0.2))
        else:
            seq.append(m)
    x = torch.randn(2, 2, 32, 32, generator=rng, dtype=torch.float64)

    def penalty(fn, x):
        x = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
        loss = ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()
        # the last convolution's bias does not reach dD/dx: unused, its gradient None
        return torch.autograd.grad(loss, list(d.parameters()), allow_unused=True)

    want = penalty(lambda t: seq(t).flatten(), x)
    got = penalty(lambda t: d.to(device)(t.to(device)), x)
    unused = [n == "main.3.bias" for n, _ in d.named_parameters()]
    assert [a is None for a in got] == [b is None for b in want] == unused
    for (n, _), a, b in zip(d.named_parameters(), got, want):
        if b is not None:
            assert_close(a.cpu(), b, name=f"penalty grad {n}")


# ---- DCGAN models ----------------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", [32, 64, 128])
def test_dcgan_shapes(image_size, rng):
    g = DCGANGenerator(nz=16, ngf=4, nc=3, image_size=image_size)
    d = DCGANDiscriminator(nc=3, ndf=4, image_size=image_size)
    db = DCGANDiscriminator(nc=3, ndf=4, image_size=image_size, norm="batch")
    z = torch.randn(2, 16, generator=rng)
    img = g(z)
    assert img.shape == (2, 3, image_size, image_size)
    assert img.abs().max() <= 1.0
    assert d(img).shape == (2,) and db(img).shape == (2,)
    n_up = {32: 3, 64: 4, 128: 5}[image_size]
    assert len(g.main) == n_up + 1 and g.main[0].conv.out_channels == 4 * 2 ** (n_up - 1)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d.modules()) == 0
    assert sum(isinstance(m, nn.BatchNorm2d) for m in db.modules()) == n_up - 1
    assert not any(isinstance(m, (nn.Linear, nn.MaxPool2d, nn.AvgPool2d)) for m in g.modules())


def test_generator_z_shapes_agree(rng):
    g = DCGANGenerator(nz=8, ngf=4, nc=1, image_size=32).eval()
    z = torch.randn(3, 8, generator=rng)
    assert torch.equal(g(z), g(z.view(3, 8, 1, 1)))


def test_dcgan_init():
    torch.manual_seed(0)
    g = DCGANGenerator(nz=64, ngf=32, nc=3)
    d = DCGANDiscriminator(nc=3, ndf=32)
    for m in list(g.modules()) + list(d.modules()):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            assert abs(m.weight.std().item() - 0.02) < 0.004 and abs(m.weight.mean().item()) < 0.004
            assert m.bias is None or torch.all(m.bias == 0)
        if isinstance(m, nn.BatchNorm2d):
            assert abs(m.weight.mean().item() - 1) < 0.01 and 0.01 < m.weight.std().item() < 0.03
            assert torch.all(m.bias == 0)


def test_dcgan_errors():
    with pytest.raises(ValueError, match="image_size"):
        DCGANGenerator(image_size=48)
    with pytest.raises(ValueError, match="image_size"):
        DCGANDiscriminator(image_size=256)
    with pytest.raises(ValueError, match="norm"):
        DCGANDiscriminator(norm="instance")
    with pytest.raises(ValueError, match="nz"):
        DCGANGenerator(nz=0)
    g = DCGANGenerator(nz=8, ngf=2, image_size=32)
    with pytest.raises(ValueError, match=r"z must have shape \(B, 8\)"):
        g(torch.randn(2, 7))
    d = DCGANDiscriminator(nc=1, ndf=2, image_size=32)
    with pytest.raises(ValueError, match=r"input must have shape \(B, 1, 32, 32\)"):
        d(torch.randn(2, 1, 64, 64))


# ---- block errors -----------------------------------------------------------------------------------


def test_block_errors():
    for kw, arg in ((dict(output_padding=1), "output_padding"), (dict(dilation=2), "dilation"),
                    (dict(groups=2), "groups"), (dict(padding_mode="reflect"), "padding_mode"),
                    (dict(norm="instance"), "norm"), (dict(act="gelu"), "act")):
        with pytest.raises(ValueError, match=arg):
            ConvTransposeBlock(4, 6, **kw)
    block = ConvTransposeBlock(4, 6)
    with pytest.raises(ValueError, match="in_channels=4"):
        block(torch.randn(2, 5, 3, 3))
    with pytest.raises(ValueError, match="4-D"):
        block(torch.randn(4, 3, 3))
    with pytest.raises(ValueError, match="4-D"):
        Conv2dBlock(4, 6)(torch.randn(4, 3, 3))
    with pytest.raises(ValueError, match="in_channels=4"):
        Conv2dBlock(4, 6)(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="act"):
        block_ops.conv_transpose_block(torch.randn(1, 4, 2, 2), torch.randn(4, 6, 4, 4), None, None, None, None,
                                       None, norm=False, training=True, momentum=0.1, eps=1e-5, stride=(2, 2),
                                       padding=(1, 1), act="gelu", alpha=0.0)
    with pytest.raises(ValueError, match="conv_bias"):
        block_ops.conv_transpose_block(torch.randn(1, 4, 2, 2), torch.randn(4, 6, 4, 4), torch.randn(5), None,
                                       None, None, None, norm=False, training=True, momentum=0.1, eps=1e-5,
                                       stride=(2, 2), padding=(1, 1), act="relu", alpha=0.0)
    with pytest.raises(TypeError, match="nn.Module"):
        fuse(3)


# ---- fuse ---------------------------------------------------------------------------------------------


class ExamplesGenerator(nn.Module):
    """The DCGAN generator as PyTorch's examples write it (dcgan/main.py), ngf reduced for speed."""

    def __init__(self, nz=100, ngf=4, nc=3):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, input):
        return self.main(input)


class ExamplesDiscriminator(nn.Module):
    def __init__(self, nc=3, ndf=4):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid())

    def forward(self, input):
        return self.main(input).view(-1, 1).squeeze(1)


def weights_init(m):
    """The examples' initialisation, by class name (must keep working on fused models)."""
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def _assert_shared_and_unique(model, before_params, before_buffers):
    assert dict(model.named_parameters()).keys() == before_params.keys()
    for k, p in model.named_parameters():
        assert p is before_params[k], f"{k}: not the same Parameter object after fuse"
    for k, b in model.named_buffers():
        assert b is before_buffers[k], f"{k}: not the same buffer object after fuse"
    mods = [id(m) for _, m in model.named_modules(remove_duplicate=False)]
    assert len(mods) == len(set(mods)), "a module is registered twice"


def test_fuse_examples_generator_training_steps(rng):
    torch.manual_seed(1)
    g = ExamplesGenerator()
    g.apply(weights_init)
    opt = torch.optim.SGD(g.parameters(), lr=0.05, momentum=0.9)
    g_ref = copy.deepcopy(g)
    opt_ref = torch.optim.SGD(g_ref.parameters(), lr=0.05, momentum=0.9)
    params, buffers = dict(g.named_parameters()), dict(g.named_buffers())
    keys = list(g.state_dict().keys())
    assert fuse(g) is g  # the optimizer built before fusing keeps optimising the same Parameters
    _assert_shared_and_unique(g, params, buffers)
    assert list(g.state_dict().keys()) == keys
    kinds = [type(m) for m in g.main]
    assert kinds[:3] == [FusedConvTranspose2d, BatchNorm2dParams, nn.Identity]
    assert kinds[-2:] == [FusedConvTranspose2d, nn.Identity]
    g.apply(weights_init)  # the examples' init works on the fused model (names contain Conv / BatchNorm)
    g.load_state_dict(g_ref.state_dict())
    for step in range(3):
        z = torch.randn(2, 100, 1, 1, generator=rng)
        target = torch.randn(2, 3, 64, 64, generator=rng)
        outs = []
        for model, o in ((g, opt), (g_ref, opt_ref)):
            o.zero_grad()
            out = model(z)
            ((out - target) ** 2).mean().backward()
            o.step()
            outs.append(out)
        assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-4, name=f"step {step} output")
        for (k, p), (_, q) in zip(g.named_parameters(), g_ref.named_parameters()):
            scale = q.grad.abs().max().item()
            assert_close(p.grad, q.grad, atol=1e-4 * scale, rtol=1e-3, name=f"step {step} grad {k}")
            assert_close(p, q, atol=1e-5, rtol=1e-4, name=f"step {step} {k}")
        for (k, b), (_, c) in zip(g.named_buffers(), g_ref.named_buffers()):
            if b.is_floating_point():
                assert_close(b, c, atol=1e-5, rtol=1e-4, name=f"step {step} {k}")
            else:
                assert torch.equal(b, c), k
    g.eval(), g_ref.eval()
    z = torch.randn(4, 100, 1, 1, generator=rng)
    with torch.no_grad():
        assert_close(g(z), g_ref(z), atol=1e-5, rtol=1e-4, name="eval output (BatchNorm folded)")
    # state_dict both ways
    fresh = ExamplesGenerator()
    fresh.load_state_dict(g.state_dict())
    fused_fresh = fuse(ExamplesGenerator())
    fused_fresh.load_state_dict(g_ref.state_dict())
    for a, b in ((fresh, g), (fused_fresh, g_ref)):
        for (k, t), (_, u) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(t, u), k
    fresh.eval(), fused_fresh.eval()
    with torch.no_grad():
        assert_close(fused_fresh(z), fresh(z), atol=1e-5, rtol=1e-4, name="reloaded fused vs unfused")
    copied = copy.deepcopy(g)  # deepcopy keeps the fused module reading its own copy's BatchNorm
    assert copied.main[0].bn is copied.main[1]


def test_fuse_examples_discriminator(rng):
    torch.manual_seed(2)
    d = ExamplesDiscriminator()
    d.apply(weights_init)
    d_ref = copy.deepcopy(d)
    params, buffers = dict(d.named_parameters()), dict(d.named_buffers())
    fuse(d)
    _assert_shared_and_unique(d, params, buffers)
    assert [type(m) for m in d.main[:5]] == [FusedConv2d, nn.Identity, FusedConv2d, BatchNorm2dParams, nn.Identity]
    assert type(d.main[-1]) is nn.Sigmoid and type(d.main[-2]) is nn.Conv2d
    for training in (True, False):
        d.train(training), d_ref.train(training)
        x = torch.randn(4, 3, 64, 64, generator=rng)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        out, ref = d(x1), d_ref(x2)
        assert_close(out, ref, atol=1e-5, rtol=1e-4, name=f"D output training={training}")
        out.sum().backward(), ref.sum().backward()
        assert_close(x1.grad, x2.grad, atol=1e-6, rtol=1e-3, name="D input grad")
        for (k, b), (_, c) in zip(d.named_buffers(), d_ref.named_buffers()):
            assert torch.allclose(b.double(), c.double(), atol=1e-5, rtol=1e-4), k


def test_fuse_leaves_unsupported_alone():
    cases = [
        nn.Sequential(nn.ConvTranspose2d(4, 4, 4, 2, 1, groups=2), nn.BatchNorm2d(4), nn.ReLU()),
        nn.Sequential(nn.ConvTranspose2d(4, 4, 4, 2, 1, output_padding=1), nn.ReLU()),
        nn.Sequential(nn.ConvTranspose2d(4, 4, 4, 2, 1, dilation=2), nn.ReLU()),
        nn.Sequential(nn.ConvTranspose2d(4, 4, 4, 2, 1), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), nn.LeakyReLU(0.2)),
        nn.Sequential(nn.ConvTranspose2d(4, 4, 4, 2, 1), nn.BatchNorm2d(4), nn.Sigmoid()),
    ]
    for seq in cases:
        kinds = [type(m) for m in seq]
        fuse(seq)
        assert [type(m) for m in seq] == kinds, seq


def test_fuse_variants_match(rng):
    """ConvTranspose2d -> act without BatchNorm, BatchNorm(affine=False), momentum None, nested
    Sequentials, named (OrderedDict) Sequentials, ganfast's LeakyReLU, a second fuse is a no-op."""
    from collections import OrderedDict

    torch.manual_seed(3)
    model = nn.Sequential(OrderedDict(
        up=nn.Sequential(nn.ConvTranspose2d(5, 6, 4, 2, 1, bias=True), nn.LeakyReLU(0.1)),
        body=nn.Sequential(nn.ConvTranspose2d(6, 7, 3, 1, 1, bias=False),
                           nn.BatchNorm2d(7, affine=False, momentum=None), nn.ReLU()),
        out=nn.Sequential(nn.Conv2d(7, 4, 3, 1, 1), ganfast.nn.LeakyReLU(0.2),
                          nn.ConvTranspose2d(4, 2, 4, 2, 1), nn.Tanh()),
    )).double()
    ref = copy.deepcopy(model)
    fuse(model)
    fuse(model)
    assert isinstance(model.up[0], FusedConvTranspose2d) and isinstance(model.body[1], BatchNorm2dParams)
    assert isinstance(model.out[0], FusedConv2d) and isinstance(model.out[2], FusedConvTranspose2d)
    for step in range(3):
        x = torch.randn(2, 5, 3, 3, generator=rng, dtype=torch.float64)
        a, b = model(x), ref(x)
        assert_close(a, b, name=f"step {step} output")
        a.square().sum().backward(), b.square().sum().backward()
        for (k, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
            assert_close(p.grad, q.grad, name=f"step {step} grad {k}")
    for (k, t), (_, u) in zip(model.state_dict().items(), ref.state_dict().items()):
        if t.is_floating_point():
            assert_close(t, u, name=k)
        else:
            assert torch.equal(t, u), k


def test_torch_compile_of_ganfast_models(rng):
    """torch.compile of the DCGAN models on the cpu backend (fused ops as opaque kernels, weight
    layout left alone while tracing): the same output and gradients as eager ganfast."""
    block_device("cpu")
    torch.manual_seed(4)
    g, d = DCGANGenerator(nz=8, ngf=2, nc=1, image_size=32), DCGANDiscriminator(nc=1, ndf=2, image_size=32)
    g2, d2 = copy.deepcopy(g), copy.deepcopy(d)
    z = torch.randn(3, 8, generator=rng)
    with ganfast.use_backend("cpu"):
        torch._dynamo.reset()
        out = torch.compile(d)(torch.compile(g)(z))
        out.sum().backward()
        ref = d2(g2(z))
        ref.sum().backward()
    assert_close(out, ref, atol=1e-6, rtol=1e-4, name="compiled D(G(z))")
    for (k, p), q in zip(g.named_parameters(), g2.parameters()):
        assert_close(p.grad, q.grad, atol=1e-6 * max(1.0, q.grad.abs().max().item()), rtol=1e-4, name=f"grad {k}")
