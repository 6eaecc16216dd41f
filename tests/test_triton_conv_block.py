"""The Triton transposed-convolution block (ganfast/triton/conv_block.py, batch_norm_act.py and the
ganfast_triton ops of ganfast/ops/triton_conv_block.py) against torch: F.conv_transpose2d,
F.batch_norm and the activations, in float64 (float32 where marked), forward and every gradient.

On this GPU-less machine the kernels run through the Triton interpreter on CPU tensors; tile sizes
are shrunk to 16 (fixture `small_tiles`) so tiny shapes still span several tiles and phases.
"""
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close, implementation_device

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def device():
    # Triton's availability on this machine (skips with the reason where it cannot run); the block's
    # modules themselves are imported by `mods`: present but broken is a failure, not a skip.
    return implementation_device("triton", "bias_act")


@pytest.fixture(scope="module")
def mods(device):
    from ganfast.ops import triton_conv_block as ops
    from ganfast.triton import batch_norm_act as bn
    from ganfast.triton import conv_block as conv

    return conv, bn, ops


@pytest.fixture(autouse=True)
def small_tiles(mods):
    conv = mods[0]
    saved = (conv.BLOCK_M, conv.BLOCK_N, conv.BLOCK_K)
    conv.BLOCK_M = conv.BLOCK_N = conv.BLOCK_K = 16
    yield
    conv.BLOCK_M, conv.BLOCK_N, conv.BLOCK_K = saved


def _act(y, act, alpha=0.2):
    if act in (None, "linear"):
        return y
    return {"relu": F.relu, "tanh": torch.tanh, "lrelu": lambda t: F.leaky_relu(t, alpha),
            "sigmoid": torch.sigmoid, "elu": lambda t: F.elu(t, alpha)}[act](y)


def _layout(x):
    """The layout outputs keep: channels_last for a channels_last x that is not also contiguous."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _rand(shape, gen, dtype=torch.float64, device="cpu", scale=1.0, shift=0.0, channels_last=False):
    t = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale + shift).to(dtype=dtype, device=device)
    return t.to(memory_format=torch.channels_last) if channels_last else t


# (x shape, weight shape, stride, padding): DCGAN's k4 s2 p1 and k4 s1 p0 from 1x1, and others:
# stride 1 and 3, padding 0 / 2, odd sizes, rectangular kernels and strides, a kernel smaller than
# the stride (phases with no tap: bias only), odd channel counts.
CONV_CASES = [
    ((2, 5, 3, 3), (5, 7, 4, 4), (2, 2), (1, 1)),
    ((3, 6, 1, 1), (6, 5, 4, 4), (1, 1), (0, 0)),
    ((1, 3, 4, 5), (3, 4, 3, 3), (3, 3), (2, 2)),
    ((2, 3, 3, 5), (3, 3, 3, 5), (1, 1), (0, 0)),
    ((2, 17, 3, 2), (17, 3, 5, 3), (2, 3), (2, 1)),
    ((1, 2, 3, 3), (2, 2, 1, 1), (2, 2), (0, 0)),
]


# ---- conv_transpose2d launcher -------------------------------------------------------------------

@pytest.mark.parametrize("case", range(len(CONV_CASES)))
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_transpose2d_forward_and_stats(mods, device, rng, case, channels_last):
    conv = mods[0]
    xs, ws, stride, padding = CONV_CASES[case]
    x = _rand(xs, rng, device=device, channels_last=channels_last)
    w = _rand(ws, rng, device=device)
    b = _rand((ws[1],), rng, device=device)
    z = F.conv_transpose2d(x, w, b, stride=stride, padding=padding)
    out, stats = conv.conv_transpose2d(x, w, b, stride, padding, act="relu", stats=True)
    assert_close(out, F.relu(z), name="out")
    assert out.is_contiguous(memory_format=_layout(x))
    partial, shift = stats
    assert partial.dtype == torch.float64 and partial.shape[0] == 2 and partial.shape[2] == ws[1]
    # the sums are shifted by the channel's first value (output pixel (0, 0) of image 0)
    assert shift.dtype == torch.float64 and shift.shape == (ws[1],)
    assert_close(shift, z[0, :, 0, 0], name="shift")
    d = z - shift[:, None, None]
    assert_close(partial[0].sum(0), d.sum((0, 2, 3)), name="shifted sum")
    assert_close(partial[1].sum(0), (d * d).sum((0, 2, 3)), name="shifted sum of squares")
    # per-channel scale / shift (the folded eval BatchNorm) and another activation, no bias
    scale, shift = _rand((ws[1],), rng, device=device), _rand((ws[1],), rng, device=device)
    out2, none = conv.conv_transpose2d(x, w, None, stride, padding, scale=scale, shift=shift, act="tanh")
    assert none is None
    z0 = F.conv_transpose2d(x, w, None, stride=stride, padding=padding)
    assert_close(out2, torch.tanh(z0 * scale[:, None, None] + shift[:, None, None]), name="out affine")


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_conv_transpose2d_backward(mods, device, rng, case):
    conv = mods[0]
    xs, ws, stride, padding = CONV_CASES[case]
    x = _rand(xs, rng, device=device, channels_last=case % 2 == 1).requires_grad_()
    w = _rand(ws, rng, device=device).requires_grad_()
    b = _rand((ws[1],), rng, device=device).requires_grad_()
    z = F.conv_transpose2d(x, w, b, stride=stride, padding=padding)
    g = _rand(z.shape, rng, device=device)  # a random upstream gradient
    gx, gw, gb = torch.autograd.grad(z, (x, w, b), g)
    ax, aw, ab = conv.conv_transpose2d_backward(g, x.detach(), w.detach(), stride, padding, True, True, True)
    assert_close(ax, gx, name="grad_x")
    assert_close(aw, gw, name="grad_weight")
    assert_close(ab, gb, name="grad_bias")
    only = conv.conv_transpose2d_backward(g, x.detach(), w.detach(), stride, padding, False, True, False)
    assert only[0] is None and only[2] is None
    assert_close(only[1], gw, name="grad_weight alone")


def test_conv_transpose2d_grad_weight_split_and_determinism(mods, device, rng, monkeypatch):
    """grad_weight's M reduction split in several ranges gives the same (bitwise, run to run)."""
    conv = mods[0]
    monkeypatch.setattr(conv, "GRAD_W_MIN_CHUNK", 1)
    x = _rand((3, 4, 5, 5), rng, device=device)
    w = _rand((4, 3, 4, 4), rng, device=device)
    g = _rand((3, 3, 10, 10), rng, device=device)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    gw_ref = torch.autograd.grad(F.conv_transpose2d(xr, wr, None, 2, 1), wr, g)[0]
    a = conv.conv_transpose2d_backward(g, x, w, (2, 2), (1, 1), False, True, False)[1]
    b = conv.conv_transpose2d_backward(g, x, w, (2, 2), (1, 1), False, True, False)[1]
    assert_close(a, gw_ref, name="grad_weight (split)")
    assert torch.equal(a, b)


def test_conv_transpose2d_float32(mods, device, rng):
    conv = mods[0]
    x = _rand((2, 9, 4, 4), rng, torch.float32, device)
    w = _rand((9, 5, 4, 4), rng, torch.float32, device, scale=0.3)
    out, _ = conv.conv_transpose2d(x, w, None, (2, 2), (1, 1))
    ref = F.conv_transpose2d(x.double(), w.double(), None, 2, 1)
    assert_close(out, ref, atol=1e-5, rtol=1e-5, check_dtype=False, name="float32 out")


# ---- batch_norm_act launchers ----------------------------------------------------------------------

BN_SHAPES = [((3, 5, 4, 6), False), ((3, 5, 4, 6), True), ((4, 7), False), ((2, 3, 5), False),
             ((2, 3, 1, 1), False), ((2, 19, 3, 3), True)]


@pytest.mark.parametrize("shape,channels_last", BN_SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_act(mods, device, rng, shape, channels_last, training):
    bn = mods[1]
    C = shape[1]
    for act, affine in (("relu", True), ("tanh", False), ("lrelu", True)):
        x = _rand(shape, rng, device=device, scale=2.0, shift=3.0, channels_last=channels_last)
        w = _rand((C,), rng, device=device) if affine else None
        b = _rand((C,), rng, device=device) if affine else None
        rm, rv = _rand((C,), rng, device=device), torch.rand(C, generator=rng, dtype=torch.float64) + 0.5
        rm2, rv2 = rm.clone(), rv.clone()
        out, mean, invstd = bn.batch_norm_act(x, w, b, rm, rv, training, 0.1, 1e-5, act, 0.2)
        xr = x.clone().requires_grad_()
        wr = w.clone().requires_grad_() if affine else None
        br = b.clone().requires_grad_() if affine else None
        ref = _act(F.batch_norm(xr, rm2, rv2, wr, br, training, 0.1, 1e-5), act)
        assert_close(out, ref, name=f"out ({act})")
        assert out.stride() == x.stride()
        assert_close(rm, rm2, name="running_mean")
        assert_close(rv, rv2, name="running_var")
        if training:
            dims = [d for d in range(x.dim()) if d != 1]
            assert_close(mean, x.mean(dims), name="save_mean")
            assert_close(invstd, (x.var(dims, unbiased=False) + 1e-5).rsqrt(), name="save_invstd")
        g = _rand(ref.shape, rng, device=device)
        ref.backward(g)
        gi, gw, gb = bn.batch_norm_act_backward(g, x, w, b, mean, invstd, training, act, 0.2)
        assert_close(gi, xr.grad, name=f"grad_input ({act})")
        if affine:
            assert_close(gw, wr.grad, name="grad_weight")
            assert_close(gb, br.grad, name="grad_bias")
        else:  # still defined: the gradients an affine (1, 0) would get
            z = (x - mean.view(-1, *[1] * (x.dim() - 2))) * invstd.view(-1, *[1] * (x.dim() - 2))
            dims = [d for d in range(x.dim()) if d != 1]
            dz = g * (1 - torch.tanh(z) ** 2)
            assert_close(gb, dz.sum(dims), name="grad_bias (no bias)")
            assert_close(gw, (dz * z).sum(dims), name="grad_weight (no weight)")


def test_batch_norm_act_partial_sums(mods, device, rng):
    """The statistics from the convolution's epilogue (sums of y - shift) replace the statistics
    pass: finalize with that shift, then normalise, as the block op does."""
    conv, bn, _ = mods
    x = _rand((2, 4, 3, 3), rng, device=device)
    w = _rand((4, 5, 4, 4), rng, device=device)
    cb = _rand((5,), rng, device=device, shift=4.0)
    y, stats = conv.conv_transpose2d(x, w, cb, (2, 2), (1, 1), stats=True)
    rm, rv = torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
    rm2, rv2 = rm.clone(), rv.clone()
    mean, invstd, _ = bn.finalize(stats.partial, stats.partial.size(1), 5, y.numel() // 5, rm, rv, True, 0.3, 1e-5,
                                  bn.acc_dtype(y.dtype), y.device, shift=stats.shift, shift_stride=1)
    out = bn.normalize(y, None, None, mean, invstd, "relu", 0.0)
    ref = F.relu(F.batch_norm(y, rm2, rv2, None, None, True, 0.3, 1e-5))
    assert_close(out, ref, name="out")
    assert_close(rm, rm2, name="running_mean")
    assert_close(rv, rv2, name="running_var")


def test_batch_norm_act_float32_large_mean(mods, device, rng):
    """float32 with |mean| >> std: the shifted statistics keep the variance accurate."""
    bn = mods[1]
    x = _rand((4, 3, 8, 8), rng, torch.float32, device, scale=0.01, shift=100.0)
    out, mean, invstd = bn.batch_norm_act(x, None, None, None, None, True, 0.1, 1e-5, "linear", 0.0)
    ref = F.batch_norm(x.double(), None, None, None, None, True, 0.1, 1e-5)
    assert_close(out, ref, atol=2e-3, rtol=2e-3, check_dtype=False, name="out")
    assert_close(invstd, (x.double().var((0, 2, 3), unbiased=False) + 1e-5).rsqrt(), atol=0, rtol=1e-3,
                 check_dtype=False, name="invstd")


def test_batch_norm_act_errors(mods, device):
    bn = mods[1]
    x = torch.randn(1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn.batch_norm_act(x, None, None, None, None, True, 0.1, 1e-5, "relu", 0.0)
    with pytest.raises(ValueError, match="required when training is False"):
        bn.batch_norm_act(torch.randn(2, 3), None, None, None, None, False, 0.1, 1e-5, "relu", 0.0)
    with pytest.raises(ValueError, match="weight must have shape"):
        bn.batch_norm_act(torch.randn(2, 3), torch.ones(4), None, None, None, True, 0.1, 1e-5, "relu", 0.0)
    with pytest.raises(ValueError, match="act must be one of"):
        bn.batch_norm_act(torch.randn(2, 3), None, None, None, None, True, 0.1, 1e-5, "gelu", 0.0)


# ---- the block ops ---------------------------------------------------------------------------------

def _block_inputs(gen, xs, ws, device, dtype=torch.float64, conv_bias=True, channels_last=False):
    C = ws[1]
    x = _rand(xs, gen, dtype, device, channels_last=channels_last)
    w = _rand(ws, gen, dtype, device, scale=0.5)
    cb = _rand((C,), gen, dtype, device) if conv_bias else None
    bw, bb = _rand((C,), gen, dtype, device, shift=1.0), _rand((C,), gen, dtype, device)
    rm = _rand((C,), gen, dtype, device)
    rv = (torch.rand(C, generator=gen, dtype=torch.float64) + 0.5).to(dtype=dtype, device=device)
    return x, w, cb, bw, bb, rm, rv


def _kw(norm, training, stride, padding, act, momentum=0.1):
    return dict(norm=norm, training=training, momentum=momentum, eps=1e-5, stride=stride, padding=padding,
                act=act, alpha=0.2)


BLOCK_CASES = [  # (x, weight, stride, padding, act, conv bias, channels_last)
    ((2, 5, 3, 3), (5, 3, 4, 4), (2, 2), (1, 1), "relu", False, False),   # DCGAN middle block
    ((1, 6, 1, 1), (6, 5, 4, 4), (1, 1), (0, 0), "relu", False, False),   # DCGAN first block, batch 1
    ((2, 3, 4, 4), (3, 1, 4, 4), (2, 2), (1, 1), "tanh", True, False),    # DCGAN last block (no norm)
    ((2, 3, 3, 2), (3, 7, 3, 3), (3, 3), (2, 2), "lrelu", True, True),
    ((3, 4, 2, 3), (4, 3, 2, 3), (1, 2), (0, 1), "linear", True, True),
]


@pytest.mark.parametrize("case", range(len(BLOCK_CASES)))
@pytest.mark.parametrize("norm,training", [(True, True), (True, False), (False, True)])
def test_block_matches_reference(mods, device, rng, case, norm, training):
    ops = mods[2]
    from ganfast.reference import conv_block as reference

    xs, ws, stride, padding, act, has_cb, cl = BLOCK_CASES[case]
    if norm and training and xs[0] * ((xs[2] - 1) * stride[0] - 2 * padding[0] + ws[2]) == 1:
        pytest.skip("one value per channel")
    x, w, cb, bw, bb, rm, rv = _block_inputs(rng, xs, ws, device, conv_bias=has_cb, channels_last=cl)
    a = [t.clone().requires_grad_() if t is not None else None for t in (x, w, cb, bw, bb)]
    r = [t.clone().requires_grad_() if t is not None else None for t in (x, w, cb, bw, bb)]
    rm2, rv2 = rm.clone(), rv.clone()
    kw = _kw(norm, training, stride, padding, act)
    out = ops.conv_transpose_block(*a, rm if norm else None, rv if norm else None, **kw)
    ref = reference.conv_transpose_block(*r, rm2 if norm else None, rv2 if norm else None, **kw)
    assert_close(out, ref, name="out")
    assert out.is_contiguous(memory_format=_layout(x))
    assert_close(rm, rm2, name="running_mean")
    assert_close(rv, rv2, name="running_var")
    g = _rand(ref.shape, rng, device=device)
    out.backward(g)
    ref.backward(g)
    for name, p, q in zip(("x", "conv_weight", "conv_bias", "bn_weight", "bn_bias"), a, r):
        if q is None:
            continue
        if q.grad is None:  # unused (norm False: the BatchNorm parameters)
            assert p.grad is None, name
            continue
        assert_close(p.grad, q.grad, name=f"grad {name}")
    # eval without autograd: the one-launch path (BatchNorm folded into the epilogue)
    if not training or not norm:
        with torch.no_grad():
            out2 = ops.conv_transpose_block(x, w, cb, bw, bb, rm, rv, **kw)
        assert_close(out2, ref.detach(), name="out (no-grad eval path)")


def test_block_negative_slope_keeps_preactivation(mods, device, rng):
    """lrelu with a negative slope: act' cannot be read from the output, so the block keeps the
    pre-activation for the backward (norm None)."""
    ops = mods[2]
    x, w, cb, _, _, _, _ = _block_inputs(rng, (2, 3, 3, 3), (3, 4, 4, 4), device)
    a = [t.clone().requires_grad_() for t in (x, w, cb)]
    r = [t.clone().requires_grad_() for t in (x, w, cb)]
    kw = dict(_kw(False, True, (2, 2), (1, 1), "lrelu"), alpha=-0.5)
    out = ops.conv_transpose_block(*a, None, None, None, None, **kw)
    ref = F.leaky_relu(F.conv_transpose2d(r[0], r[1], r[2], 2, 1), -0.5)
    assert_close(out, ref, name="out")
    g = _rand(ref.shape, rng, device=device)
    out.backward(g)
    ref.backward(g)
    for name, p, q in zip(("x", "conv_weight", "conv_bias"), a, r):
        assert_close(p.grad, q.grad, name=f"grad {name}")


def test_block_float32(mods, device, rng):
    ops = mods[2]
    from ganfast.reference import conv_block as reference

    x, w, cb, bw, bb, rm, rv = _block_inputs(rng, (4, 8, 4, 4), (8, 5, 4, 4), device, torch.float32,
                                             conv_bias=False, channels_last=True)
    a = [t.clone().requires_grad_() if t is not None else None for t in (x, w, cb, bw, bb)]
    r = [t.double().requires_grad_() if t is not None else None for t in (x, w, cb, bw, bb)]
    rm2, rv2 = rm.double(), rv.double()
    kw = _kw(True, True, (2, 2), (1, 1), "relu")
    out = ops.conv_transpose_block(*a, rm, rv, **kw)
    ref = reference.conv_transpose_block(*r, rm2, rv2, **kw)
    assert_close(out, ref, atol=1e-4, rtol=1e-4, check_dtype=False, name="out")
    assert_close(rm, rm2, atol=1e-5, rtol=1e-5, check_dtype=False, name="running_mean")
    assert_close(rv, rv2, atol=1e-5, rtol=1e-5, check_dtype=False, name="running_var")
    g = torch.randn(ref.shape, generator=rng, dtype=torch.float64)
    out.backward(g.float())
    ref.backward(g)
    for name, p, q in zip(("x", "conv_weight", "bn_weight", "bn_bias"), a[:2] + a[3:], r[:2] + r[3:]):
        assert_close(p.grad, q.grad, atol=1e-3, rtol=1e-3, check_dtype=False, name=f"grad {name}")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_block_float32_large_mean(mods, device, rng, channels_last):
    """float32, the convolution's output with a mean ~4e3 times its spread (a large conv bias, as a
    block after a layer that drifted): the epilogue's shifted sums keep the batch variance, so the
    normalised output, the running variance and the gradients match float64. Unshifted float32
    sums of y and y^2 cancel to a variance off by O(1) relative."""
    ops = mods[2]
    from ganfast.reference import conv_block as reference

    x, w, _, bw, bb, rm, rv = _block_inputs(rng, (3, 5, 3, 4), (5, 6, 4, 4), device, torch.float32,
                                             conv_bias=False, channels_last=channels_last)
    cb = _rand((6,), rng, torch.float32, device, scale=1e3, shift=1e4)  # the outputs' spread: ~2
    a = [t.clone().requires_grad_() for t in (x, w, cb, bw, bb)]
    r = [t.double().requires_grad_() for t in (x, w, cb, bw, bb)]
    rm2, rv2 = rm.double(), rv.double()
    kw = _kw(True, True, (2, 2), (1, 1), "linear", momentum=0.5)
    out = ops.conv_transpose_block(*a, rm, rv, **kw)
    ref = reference.conv_transpose_block(*r, rm2, rv2, **kw)
    # float32 stores y ~ 1e4 to 2**-11 absolute: ~3e-4 of its spread, the floor of any float32 BatchNorm
    assert_close(out, ref, atol=3e-3, rtol=3e-3, check_dtype=False, name="out")
    assert_close(rm, rm2, atol=0, rtol=1e-6, check_dtype=False, name="running_mean")
    assert_close(rv, rv2, atol=0, rtol=3e-3, check_dtype=False, name="running_var")
    g = torch.randn(ref.shape, generator=rng, dtype=torch.float64)
    out.backward(g.float())
    ref.backward(g)
    for name, p, q in zip(("x", "conv_weight", "bn_weight", "bn_bias"), a[:2] + a[3:], r[:2] + r[3:]):
        assert_close(p.grad, q.grad, atol=1e-2 * q.grad.abs().max().item(), rtol=1e-2, check_dtype=False,
                     name=f"grad {name}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_block_half(mods, device, rng, dtype):
    """Half-precision inputs (float32 accumulation) against the float64 reference of the same
    rounded inputs: bounded by a few units of the half format on O(1) outputs."""
    ops = mods[2]
    from ganfast.reference import conv_block as reference

    x, w, cb, bw, bb, rm, rv = _block_inputs(rng, (2, 6, 3, 3), (6, 5, 4, 4), device, dtype, conv_bias=False,
                                             channels_last=dtype == torch.bfloat16)
    rm, rv = rm.float(), rv.float()  # BatchNorm keeps its running statistics in float32
    a = [t.clone().requires_grad_() if t is not None else None for t in (x, w, cb, bw, bb)]
    r = [t.double().requires_grad_() if t is not None else None for t in (x, w, cb, bw, bb)]
    rm2, rv2 = rm.double(), rv.double()
    kw = _kw(True, True, (2, 2), (1, 1), "relu")
    out = ops.conv_transpose_block(*a, rm, rv, **kw)
    ref = reference.conv_transpose_block(*r, rm2, rv2, **kw)
    tol = 5e-2 if dtype == torch.bfloat16 else 5e-3
    assert out.dtype == dtype
    assert_close(out, ref, atol=tol, rtol=tol, check_dtype=False, name="out")
    assert_close(rm, rm2, atol=tol, rtol=tol, check_dtype=False, name="running_mean")
    g = torch.randn(ref.shape, generator=rng, dtype=torch.float64)
    out.backward(g.to(dtype))
    ref.backward(g)
    for name, p, q in zip(("x", "conv_weight", "bn_weight", "bn_bias"), a[:2] + a[3:], r[:2] + r[3:]):
        scale = q.grad.abs().max().item()
        assert_close(p.grad, q.grad, atol=tol * scale, rtol=tol, check_dtype=False, name=f"grad {name}")
    with torch.no_grad():
        out_eval = ops.conv_transpose_block(x, w, cb, bw, bb, rm, rv, **_kw(True, False, (2, 2), (1, 1), "relu"))
    ref_eval = reference.conv_transpose_block(x.double(), w.double(), None, bw.double(), bb.double(), rm.double(),
                                              rv.double(), **_kw(True, False, (2, 2), (1, 1), "relu"))
    assert_close(out_eval, ref_eval, atol=tol, rtol=tol, check_dtype=False, name="out (eval)")


def test_block_eval_no_grad_is_one_launch(mods, device, rng, monkeypatch):
    """Sampling: one convolution launch with the BatchNorm and the activation in its epilogue."""
    conv, bn, ops = mods
    x, w, cb, bw, bb, rm, rv = _block_inputs(rng, (2, 3, 2, 2), (3, 4, 4, 4), device)
    calls = []
    real = conv._conv_t_kernel

    class Spy:
        def __getitem__(self, grid):
            calls.append(grid)
            return real[grid]

    monkeypatch.setattr(conv, "_conv_t_kernel", Spy())
    monkeypatch.setattr(bn, "normalize", lambda *a, **k: pytest.fail("eval without autograd must not normalise separately"))
    with torch.no_grad():
        ops.conv_transpose_block(x, w, cb, bw, bb, rm, rv, **_kw(True, False, (2, 2), (1, 1), "relu"))
    assert len(calls) == 1


@pytest.mark.parametrize("norm,training", [(True, True), (True, False), (False, True)])
def test_block_gradcheck(mods, device, rng, norm, training):
    ops = mods[2]
    x, w, cb, bw, bb, rm, rv = _block_inputs(rng, (2, 3, 2, 2), (3, 2, 3, 3), device)
    inputs = [t.clone().requires_grad_() for t in (x, w, cb, bw, bb)]
    kw = _kw(norm, training, (2, 2), (1, 1), "tanh", momentum=0.0)  # momentum 0: running stats fixed

    def f(*args):
        return ops.conv_transpose_block(*args, rm if norm else None, rv if norm else None, **kw)

    if not norm:
        inputs = inputs[:3]

        def f(*args):  # noqa: F811
            return ops.conv_transpose_block(*args, None, None, None, None, **kw)

    # fast mode (random projections of the Jacobian): every input's gradient is checked, in a
    # handful of interpreted launches rather than one per input element
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, fast_mode=True)


def test_block_gradcheck_full(mods, device, rng):
    """Every column of the Jacobian (slow mode) on a tiny training block: BatchNorm statistics
    couple every output to every input."""
    ops = mods[2]
    x, w, cb, bw, bb, rm, rv = _block_inputs(rng, (2, 1, 1, 2), (1, 1, 2, 2), device)
    kw = _kw(True, True, (1, 2), (0, 1), "tanh", momentum=0.0)
    inputs = [t.clone().requires_grad_() for t in (x, w, cb, bw, bb)]
    assert torch.autograd.gradcheck(lambda *a: ops.conv_transpose_block(*a, rm, rv, **kw), inputs,
                                    eps=1e-6, atol=1e-7)


def test_block_double_backward_raises(mods, device, rng):
    ops = mods[2]
    x, w, cb, bw, bb, rm, rv = _block_inputs(rng, (2, 3, 2, 2), (3, 2, 4, 4), device)
    x.requires_grad_()
    out = ops.conv_transpose_block(x, w, cb, bw, bb, rm, rv, **_kw(True, True, (2, 2), (1, 1), "tanh"))
    (gx,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        gx.sum().backward()


def test_block_opcheck(mods, device, rng):
    ops = mods[2]
    x, w, cb, bw, bb, rm, rv = _block_inputs(rng, (2, 3, 2, 2), (3, 2, 4, 4), device)
    for norm, training, act in ((True, True, "relu"), (True, False, "tanh"), (False, True, "lrelu")):
        args = (x, w, cb, bw if norm else None, bb if norm else None, rm if norm else None,
                rv if norm else None, norm, training, 1e-5, [2, 2], [1, 1], act, 0.2)
        torch.library.opcheck(ops._t_block, args)
        if training:  # with inputs that require grad: the autograd registration is checked too
            grad_args = [t.clone().requires_grad_() if t is not None else None for t in args[:5]]
            torch.library.opcheck(ops._t_block, tuple(grad_args) + args[5:])
        out, saved, mean, invstd, _ = ops._t_block(*args)
        g = torch.randn(out.shape, generator=rng, dtype=torch.float64)
        torch.library.opcheck(ops._t_block_backward, (g, out, saved, x, w, args[3], args[4], mean, invstd, norm,
                                                      training, [2, 2], [1, 1], act, 0.2,
                                                      [True, True, True, norm, norm]))
    torch.library.opcheck(ops._t_block_infer, (x, w, cb, bw, bb, rm, rv, True, 1e-5, [2, 2], [1, 1], "relu", 0.0))
    torch.library.opcheck(ops._t_block_infer, (x, w, None, None, None, None, None, False, 1e-5, [1, 1], [0, 0],
                                               "tanh", 0.0))
    mean, var = torch.randn(2, dtype=torch.float64), torch.rand(2, dtype=torch.float64)
    torch.library.opcheck(ops._t_running_update, (rm[:2].clone(), rv[:2].clone(), mean, var, 0.1))


def test_block_empty_batch(mods, device, rng):
    ops = mods[2]
    x, w, cb, bw, bb, rm, rv = _block_inputs(rng, (2, 3, 2, 2), (3, 2, 4, 4), device)
    rm0, rv0 = rm.clone(), rv.clone()
    out = ops.conv_transpose_block(x[:0], w, cb, bw, bb, rm, rv, **_kw(True, True, (2, 2), (1, 1), "relu"))
    assert out.shape == (0, 2, 4, 4)
    assert torch.equal(rm, rm0) and torch.equal(rv, rv0)


def test_block_bad_input(mods, device, rng):
    ops = mods[2]
    x, w, cb, bw, bb, rm, rv = _block_inputs(rng, (2, 3, 2, 2), (3, 2, 4, 4), device)
    kw = _kw(True, True, (2, 2), (1, 1), "relu")
    with pytest.raises(ValueError, match="x must be 4-D"):
        ops.conv_transpose_block(x[0], w, cb, bw, bb, rm, rv, **kw)
    with pytest.raises(ValueError, match="conv_weight must have shape .* Cin = 4"):
        ops.conv_transpose_block(torch.randn(2, 4, 2, 2, dtype=torch.float64), w, cb, bw, bb, rm, rv, **kw)
    with pytest.raises(ValueError, match="bn_weight must have shape"):
        ops.conv_transpose_block(x, w, cb, bw[:1], bb, rm, rv, **kw)
    with pytest.raises(ValueError, match="required when training is False"):
        with torch.no_grad():
            ops.conv_transpose_block(x, w, cb, bw, bb, None, None, **_kw(True, False, (2, 2), (1, 1), "relu"))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ops.conv_transpose_block(x[:1, :, :1, :1], w[:, :, :1, :1], cb, bw, bb, rm, rv,
                                 **_kw(True, True, (1, 1), (0, 0), "relu"))
    with pytest.raises(ValueError, match="stride must be >= 1"):
        ops.conv_transpose_block(x, w, cb, bw, bb, rm, rv, **_kw(True, True, (0, 2), (1, 1), "relu"))
    with pytest.raises(ValueError, match="act must be one of"):
        ops.conv_transpose_block(x, w, cb, bw, bb, rm, rv, **_kw(True, True, (2, 2), (1, 1), "gelu"))


def test_block_torch_compile(mods, device, rng):
    """torch.compile (aot_eager: the fake kernels, functionalisation of the running-statistics
    update, the autograd of the ops) traces the training block in one graph and matches eager."""
    ops = mods[2]
    from ganfast.reference import conv_block as reference

    x, w, _, bw, bb, rm, rv = _block_inputs(rng, (2, 3, 2, 2), (3, 2, 4, 4), device)
    kw = _kw(True, True, (2, 2), (1, 1), "relu")
    a = [t.clone().requires_grad_() for t in (w, bw, bb)]
    r = [t.clone().requires_grad_() for t in (w, bw, bb)]
    rm2, rv2 = rm.clone(), rv.clone()

    def block(x, w, bw, bb, rm, rv):
        return ops.conv_transpose_block(x, w, None, bw, bb, rm, rv, **kw)

    torch._dynamo.reset()
    out = torch.compile(block, backend="aot_eager", fullgraph=True)(x, *a, rm, rv)
    ref = reference.conv_transpose_block(x, r[0], None, r[1], r[2], rm2, rv2, **kw)
    assert_close(out, ref, name="out")
    assert_close(rm, rm2, name="running_mean")
    assert_close(rv, rv2, name="running_var")
    g = _rand(ref.shape, rng, device=device)
    out.backward(g)
    ref.backward(g)
    for name, p, q in zip(("conv_weight", "bn_weight", "bn_bias"), a, r):
        assert_close(p.grad, q.grad, name=f"grad {name}")
