"""The losses op family, every implementation present (reference, cpu, triton, cuda), against
torch.nn.functional and against float64 formulas written here, independently of
ganfast/reference: values, gradients w.r.t. input and target, broadcasting, dtypes, edge values,
errors, gradcheck, opcheck, and the number of ops (and Triton launches) per loss.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import ganfast
import ganfast.losses as L
from conftest import assert_close, implementation_device, rand, randn
from ganfast import ops

KINDS = ("minimax", "nonsaturating", "hinge", "wasserstein", "least_squares")
LABELLED_KINDS = ("minimax", "nonsaturating", "least_squares")
REDUCTIONS = ("none", "mean", "sum")
SHAPES = [(), (1,), (7,), (3, 5), (2, 3, 4, 5), (64, 1), (1000,)]
FLOATS = [torch.float32, torch.float64]
HALVES = [torch.float16, torch.bfloat16]

# (kind, (real_label, fake_label)): the default labels for every kind, smoothed ones where a kind
# takes labels.
D_CASES = [(k, (1.0, 0.0)) for k in KINDS] + [(k, (0.9, 0.1)) for k in LABELLED_KINDS]
D_IDS = [f"{k}-{a}-{b}" for k, (a, b) in D_CASES]
# (real shape, fake shape): real and fake of different shapes and lengths.
D_SHAPES = [((), (1,)), ((7,), (3, 5)), ((2, 3, 4, 5), (64, 1)), ((1000,), (7,))]


def skip_device_assert(device):
    if device == "cuda":
        pytest.skip("on CUDA an out-of-range probability is a device-side assert (as torch's), which "
                    "poisons the CUDA context for the rest of the process")


# ---- float64 oracles, written from the definitions (not ganfast.reference) ----------------------


def d_formula(kind, xr, xf, a=1.0, b=0.0):
    """The discriminator's loss: mean over real + mean over fake."""
    if kind in ("minimax", "nonsaturating"):  # BCE with labels a (real) and b (fake)
        return (F.binary_cross_entropy_with_logits(xr, torch.full_like(xr, a))
                + F.binary_cross_entropy_with_logits(xf, torch.full_like(xf, b)))
    if kind == "hinge":
        return F.relu(1 - xr).mean() + F.relu(1 + xf).mean()
    if kind == "wasserstein":
        return xf.mean() - xr.mean()
    if kind == "least_squares":
        return 0.5 * ((xr - a) ** 2).mean() + 0.5 * ((xf - b) ** 2).mean()
    raise ValueError(kind)


def g_formula(kind, x):
    """The generator's loss: mean over fake."""
    if kind == "minimax":  # E log(1 - sigmoid(x)) = -softplus(x)
        return -F.softplus(x).mean()
    if kind == "nonsaturating":  # -E log sigmoid(x)
        return F.softplus(-x).mean()
    if kind in ("hinge", "wasserstein"):
        return -x.mean()
    if kind == "least_squares":
        return 0.5 * ((x - 1) ** 2).mean()
    raise ValueError(kind)


def _f64(t):
    if not isinstance(t, torch.Tensor):
        return t
    return t.detach().to(torch.float64).requires_grad_(t.requires_grad)


def check_against_oracle(fn, oracle, inputs, gen, *, name, atol=None, rtol=None, value_atol=None):
    """Runs fn(*inputs) and oracle(*inputs in float64); compares the value and the gradients
    w.r.t. every input that requires grad, with a random upstream gradient (a random scalar for a
    0-dim output). The result and the gradients must keep the input's dtype."""
    dtype = inputs[0].dtype
    out = fn(*inputs)
    assert out.dtype == dtype, f"{name}: result dtype {out.dtype}, input dtype {dtype}"
    grad_out = randn(out.shape, dtype, out.device, gen)
    diff = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(out, diff, grad_out) if diff else ()

    inputs64 = [_f64(t) for t in inputs]
    out64 = oracle(*inputs64)
    diff64 = [t for t in inputs64 if isinstance(t, torch.Tensor) and t.requires_grad]
    grads64 = torch.autograd.grad(out64, diff64, grad_out.to(torch.float64)) if diff else ()

    assert_close(out, out64.to(dtype), atol=atol if value_atol is None else value_atol, rtol=rtol,
                 name=f"{name}: value")
    for i, (g, g64, x) in enumerate(zip(grads, grads64, diff)):
        assert g.shape == x.shape, f"{name}: gradient {i} has shape {tuple(g.shape)}, input {tuple(x.shape)}"
        assert_close(g, g64.to(x.dtype), atol=atol, rtol=rtol, name=f"{name}: gradient w.r.t. input {i}")
    return out, grads


# ---- binary cross-entropy with logits --------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_bce_with_logits_matches_torch(impl, dtype, shape, reduction, rng):
    _, device = impl
    x = randn(shape, dtype, device, rng, scale=3.0, requires_grad=True)
    t = rand(shape, dtype, device, rng, requires_grad=True)  # soft labels: d/dt is defined
    check_against_oracle(
        lambda x, t: L.binary_cross_entropy_with_logits(x, t, reduction=reduction),
        lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction=reduction),
        [x, t], rng, name="bce_with_logits")


# (input shape, weight shape, pos_weight shape); None = absent.
WEIGHT_CASES = [
    ((4, 3, 5), (1,), None),            # scalar-like
    ((4, 3, 5), (), (1,)),              # 0-dim weight
    ((4, 3, 5), (4, 3, 5), (4, 3, 5)),  # per element
    ((4, 3, 5), (5,), (5,)),            # last dim (pos_weight per class)
    ((6, 4), (6, 1), (4,)),             # per sample (N, 1), per class (C,)
    ((4, 3, 5), (4, 1, 5), (3, 1)),     # (N, 1, W) vs (N, C, W): not one run, materialised
    ((4, 3, 5), (4, 1, 1), (1, 3, 1)),  # leading run, middle run
    ((2, 3, 4, 5), (3, 1, 5), (2, 1, 1, 5)),  # gaps in both
    ((2, 1, 5), (1, 1, 5), (2, 1, 1)),  # size-1 input dim inside the run
    ((7,), None, (7,)),
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", WEIGHT_CASES, ids=lambda c: f"x{list(c[0])}-w{c[1] and list(c[1])}-pw{c[2] and list(c[2])}")
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_bce_with_logits_weight_broadcasts(impl, dtype, case, reduction, rng):
    _, device = impl
    shape, wshape, pwshape = case
    x = randn(shape, dtype, device, rng, scale=3.0, requires_grad=True)
    t = rand(shape, dtype, device, rng, requires_grad=True)
    w = None if wshape is None else rand(wshape, dtype, device, rng, 0.5, 2.0)
    pw = None if pwshape is None else rand(pwshape, dtype, device, rng, 0.5, 3.0)
    check_against_oracle(
        lambda x, t, w, pw: L.binary_cross_entropy_with_logits(x, t, weight=w, reduction=reduction, pos_weight=pw),
        lambda x, t, w, pw: F.binary_cross_entropy_with_logits(x, t, weight=w, reduction=reduction, pos_weight=pw),
        [x, t, w, pw], rng, name="bce_with_logits")


@pytest.mark.parametrize("upstream", ["expanded_scalar", "expanded_row", "mean_of_none"])
def test_bce_with_logits_none_reduction_with_strided_upstream_grad(impl, upstream, rng):
    """reduction='none' gradients that arrive expanded (stride 0), as .sum()/.mean() produce."""
    _, device = impl
    x = randn((4, 5), torch.float64, device, rng, scale=3.0, requires_grad=True)
    t = rand((4, 5), torch.float64, device, rng, requires_grad=True)
    pw = rand((5,), torch.float64, device, rng, 0.5, 3.0)

    def grads(fn, x, t):
        out = fn(x, t, pos_weight=pw, reduction="none")
        if upstream == "mean_of_none":
            return torch.autograd.grad(out.mean(), (x, t))
        g = (randn((), torch.float64, device, torch.Generator().manual_seed(3)).expand(4, 5)
             if upstream == "expanded_scalar"
             else randn((1, 5), torch.float64, device, torch.Generator().manual_seed(3)).expand(4, 5))
        return torch.autograd.grad(out, (x, t), g)

    got = grads(L.binary_cross_entropy_with_logits, x, t)
    want = grads(F.binary_cross_entropy_with_logits, _f64(x), _f64(t))
    assert_close(got[0], want[0], name="d/dinput")
    assert_close(got[1], want[1], name="d/dtarget")


# ---- binary cross-entropy on probabilities -----------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_binary_cross_entropy_matches_torch(impl, dtype, shape, reduction, rng):
    _, device = impl
    p = rand(shape, dtype, device, rng, 0.02, 0.98, requires_grad=True)
    t = rand(shape, dtype, device, rng, requires_grad=True)
    check_against_oracle(
        lambda p, t: L.binary_cross_entropy(p, t, reduction=reduction),
        lambda p, t: F.binary_cross_entropy(p, t, reduction=reduction),
        [p, t], rng, name="binary_cross_entropy")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", [((4, 3, 5), (5,)), ((6, 4), (6, 1)), ((4, 3, 5), (4, 1, 5)),
                                  ((4, 3, 5), (4, 3, 5)), ((7,), (1,)), ((7,), ())],
                         ids=lambda c: f"x{list(c[0])}-w{list(c[1])}")
def test_binary_cross_entropy_weight_broadcasts(impl, case, reduction, rng):
    _, device = impl
    shape, wshape = case
    p = rand(shape, torch.float64, device, rng, 0.02, 0.98, requires_grad=True)
    t = rand(shape, torch.float64, device, rng, requires_grad=True)
    w = rand(wshape, torch.float64, device, rng, 0.5, 2.0)
    check_against_oracle(
        lambda p, t, w: L.binary_cross_entropy(p, t, weight=w, reduction=reduction),
        lambda p, t, w: F.binary_cross_entropy(p, t, weight=w, reduction=reduction),
        [p, t, w], rng, name="binary_cross_entropy")


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_binary_cross_entropy_at_zero_and_one(impl, dtype, rng, request):
    """p = 0 or 1: each log is clamped at -100, the input gradient divides by max(p(1-p), 1e-12)
    and the target gradient is -logit(p) (infinite), as torch's."""
    name, device = impl
    p = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.5, 1e-30], dtype=dtype, device=device, requires_grad=True)
    t = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.3, 0.7], dtype=dtype, device=device, requires_grad=True)
    for reduction in REDUCTIONS:
        check_against_oracle(
            lambda p, t: L.binary_cross_entropy(p, t, reduction=reduction),
            lambda p, t: F.binary_cross_entropy(p, t, reduction=reduction),
            [p, t], rng, name=f"binary_cross_entropy[{reduction}]")


# ---- GAN objectives ----------------------------------------------------------------------------


@pytest.mark.parametrize("shapes", D_SHAPES, ids=lambda s: f"real{list(s[0])}-fake{list(s[1])}")
@pytest.mark.parametrize("case", D_CASES, ids=D_IDS)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_discriminator_loss_matches_formula(impl, dtype, case, shapes, rng):
    _, device = impl
    kind, (a, b) = case
    xr = randn(shapes[0], dtype, device, rng, scale=2.0, requires_grad=True)
    xf = randn(shapes[1], dtype, device, rng, scale=2.0, requires_grad=True)
    check_against_oracle(
        lambda xr, xf: L.discriminator_loss(xr, xf, kind=kind, real_label=a, fake_label=b),
        lambda xr, xf: d_formula(kind, xr, xf, a, b),
        [xr, xf], rng, name=f"discriminator_loss[{kind}]")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_generator_loss_matches_formula(impl, dtype, kind, shape, rng):
    _, device = impl
    x = randn(shape, dtype, device, rng, scale=2.0, requires_grad=True)
    check_against_oracle(lambda x: L.generator_loss(x, kind=kind), lambda x: g_formula(kind, x),
                         [x], rng, name=f"generator_loss[{kind}]")


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_hinge_kinks_match_torch_relu_subgradient(impl, dtype, rng):
    """At x_r = 1 and x_f = -1 the hinge terms are relu(0): gradient 0 there, as torch's."""
    _, device = impl
    xr = torch.tensor([1.0, -1.0, 0.5, 2.0, 1.0], dtype=dtype, device=device, requires_grad=True)
    xf = torch.tensor([-1.0, 1.0, -0.5, -2.0], dtype=dtype, device=device, requires_grad=True)
    _, (gr, gf) = check_against_oracle(lambda xr, xf: L.discriminator_loss(xr, xf, kind="hinge"),
                                       lambda xr, xf: d_formula("hinge", xr, xf), [xr, xf], rng,
                                       name="hinge at the kinks")
    # The oracle is torch's relu; say what it means, so a change of oracle cannot hide the kink.
    assert gr[0].item() == 0.0 and gr[4].item() == 0.0, f"d/dx_r at x_r = 1 must be 0; got {gr.tolist()}"
    assert gf[0].item() == 0.0, f"d/dx_f at x_f = -1 must be 0; got {gf.tolist()}"


# Larger than one block of the kernels: several Triton programs (a masked tail, then an exact
# multiple of the block), several parallel chunks of the CPU loops (16384 elements each).
LARGE_SHAPES = [(17000,), (64, 64)]


@pytest.mark.parametrize("shape", LARGE_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_large_inputs_span_blocks(impl, dtype, shape, rng):
    _, device = impl
    x = randn(shape, dtype, device, rng, scale=3.0, requires_grad=True)
    t = rand(shape, dtype, device, rng, requires_grad=True)
    for reduction in REDUCTIONS:
        check_against_oracle(
            lambda x, t: L.binary_cross_entropy_with_logits(x, t, reduction=reduction),
            lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction=reduction),
            [x, t], rng, name=f"bce_with_logits[{reduction}] on {shape}")
    xf = randn((3001,), dtype, device, rng, scale=2.0, requires_grad=True)
    for kind, (a, b) in [(k, (0.9, 0.1) if k in LABELLED_KINDS else (1.0, 0.0)) for k in KINDS]:
        check_against_oracle(lambda r, f: L.discriminator_loss(r, f, kind, a, b),
                             lambda r, f: d_formula(kind, r, f, a, b), [x, xf], rng,
                             name=f"discriminator_loss[{kind}] on {shape} and (3001,)")
    for kind in KINDS:
        check_against_oracle(lambda x: L.generator_loss(x, kind), lambda x: g_formula(kind, x), [x], rng,
                             name=f"generator_loss[{kind}] on {shape}")
    p = rand(shape, dtype, device, rng, 0.02, 0.98, requires_grad=True)
    check_against_oracle(lambda p, t: L.binary_cross_entropy(p, t, reduction="mean"),
                         lambda p, t: F.binary_cross_entropy(p, t, reduction="mean"), [p, t], rng,
                         name=f"binary_cross_entropy on {shape}")


# ---- empty tensors -----------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(0,), (0, 3)], ids=str)
@pytest.mark.parametrize("op", ["bce_with_logits", "binary_cross_entropy"])
def test_empty_inputs_as_torch(impl, op, shape, reduction, rng):
    """numel 0: 'none' gives an empty tensor, 'sum' 0, 'mean' NaN, as torch's."""
    _, device = impl
    x = torch.empty(shape, device=device, requires_grad=True)
    t = torch.empty(shape, device=device, requires_grad=True)
    ours = L.binary_cross_entropy_with_logits if op == "bce_with_logits" else L.binary_cross_entropy
    theirs = F.binary_cross_entropy_with_logits if op == "bce_with_logits" else F.binary_cross_entropy
    out, grads = check_against_oracle(lambda x, t: ours(x, t, reduction=reduction),
                                      lambda x, t: theirs(x, t, reduction=reduction), [x, t], rng, name=op)
    expected = {"none": None, "sum": 0.0, "mean": "nan"}[reduction]
    if expected is None:
        assert out.shape == shape
    elif expected == "nan":
        assert out.shape == () and math.isnan(out.item())
    else:
        assert out.shape == () and out.item() == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_empty_logits_give_nan_as_mean_of_nothing(impl, kind, rng):
    _, device = impl
    empty = torch.empty(0, device=device, requires_grad=True)
    xf = randn((5,), torch.float32, device, rng, requires_grad=True)
    for real, fake in ((empty, xf), (xf, empty), (empty, empty)):
        out, _ = check_against_oracle(lambda r, f: L.discriminator_loss(r, f, kind=kind),
                                      lambda r, f: d_formula(kind, r, f), [real, fake], rng,
                                      name=f"discriminator_loss[{kind}] with an empty half")
        assert math.isnan(out.item())
    out, _ = check_against_oracle(lambda x: L.generator_loss(x, kind=kind), lambda x: g_formula(kind, x),
                                  [empty], rng, name=f"generator_loss[{kind}] on nothing")
    assert math.isnan(out.item())


# ---- non-contiguous inputs ---------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_noncontiguous_bce(impl, reduction, rng):
    _, device = impl
    x = randn((5, 6), torch.float64, device, rng, scale=3.0).t().requires_grad_()
    t = rand((5, 6), torch.float64, device, rng).t().requires_grad_()
    pw = rand((10,), torch.float64, device, rng, 0.5, 3.0)[::2]  # (5,), stride 2
    w = rand((5, 6), torch.float64, device, rng, 0.5, 2.0).t()  # (6, 5) transposed
    assert not x.is_contiguous() and not pw.is_contiguous() and not w.is_contiguous()
    check_against_oracle(
        lambda x, t, w, pw: L.binary_cross_entropy_with_logits(x, t, w, reduction=reduction, pos_weight=pw),
        lambda x, t, w, pw: F.binary_cross_entropy_with_logits(x, t, w, reduction=reduction, pos_weight=pw),
        [x, t, w, pw], rng, name="bce_with_logits on transposed inputs")
    p = rand((5, 6), torch.float64, device, rng, 0.02, 0.98).t().requires_grad_()
    check_against_oracle(
        lambda p, t, w: L.binary_cross_entropy(p, t, w, reduction=reduction),
        lambda p, t, w: F.binary_cross_entropy(p, t, w, reduction=reduction),
        [p, t, w], rng, name="binary_cross_entropy on transposed inputs")


@pytest.mark.parametrize("case", D_CASES, ids=D_IDS)
def test_noncontiguous_gan_losses(impl, case, rng):
    _, device = impl
    kind, (a, b) = case
    xr = randn((4, 6), torch.float64, device, rng, scale=2.0).t().requires_grad_()
    xf = randn((12,), torch.float64, device, rng, scale=2.0)[::3].requires_grad_()
    assert not xr.is_contiguous() and not xf.is_contiguous()
    check_against_oracle(lambda r, f: L.discriminator_loss(r, f, kind, a, b), lambda r, f: d_formula(kind, r, f, a, b),
                         [xr, xf], rng, name=f"discriminator_loss[{kind}] on strided logits")
    x = randn((3, 4, 5), torch.float64, device, rng, scale=2.0).permute(2, 0, 1).requires_grad_()
    check_against_oracle(lambda x: L.generator_loss(x, kind), lambda x: g_formula(kind, x), [x], rng,
                         name=f"generator_loss[{kind}] on permuted logits")


# ---- extreme and NaN logits ------------------------------------------------------------------

EXTREME = [-1e4, -1e3, -100.0, -88.8, -30.0, -17.0, -1.0, 0.0, 1.0, 17.0, 30.0, 88.8, 100.0, 1e3, 1e4]
# A float32 mean of terms up to 1e4 that cancel is exact to about eps * mean|term| (~1e-4), not
# to 1e-6: the values are compared with that absolute tolerance, the gradients (elementwise) not.
EXTREME_VALUE_ATOL = 2 * torch.finfo(torch.float32).eps * sum(abs(v) for v in EXTREME) / len(EXTREME)


def _finite(name, *tensors):
    for t in tensors:
        assert bool(torch.isfinite(t).all()), f"{name}: non-finite values {t.tolist()}"


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_extreme_logits_bce_with_logits(impl, reduction, rng):
    _, device = impl
    x = torch.tensor(EXTREME, device=device, requires_grad=True)
    t = torch.tensor([0.0, 1.0, 0.3] * 5, device=device, requires_grad=True)
    pw = torch.full((15,), 2.0, device=device)
    out, grads = check_against_oracle(
        lambda x, t, pw: L.binary_cross_entropy_with_logits(x, t, reduction=reduction, pos_weight=pw),
        lambda x, t, pw: F.binary_cross_entropy_with_logits(x, t, reduction=reduction, pos_weight=pw),
        [x, t, pw], rng, name="bce_with_logits at extreme logits", value_atol=EXTREME_VALUE_ATOL)
    _finite("bce_with_logits at extreme logits", out, *grads)


@pytest.mark.parametrize("case", D_CASES, ids=D_IDS)
def test_extreme_logits_gan_losses(impl, case, rng):
    _, device = impl
    kind, (a, b) = case
    xr = torch.tensor(EXTREME, device=device, requires_grad=True)
    xf = torch.tensor(EXTREME[::-1][:9], device=device, requires_grad=True)
    out, grads = check_against_oracle(lambda r, f: L.discriminator_loss(r, f, kind, a, b),
                                      lambda r, f: d_formula(kind, r, f, a, b), [xr, xf], rng,
                                      name=f"discriminator_loss[{kind}] at extreme logits",
                                      value_atol=EXTREME_VALUE_ATOL)
    _finite(f"discriminator_loss[{kind}]", out, *grads)
    out, grads = check_against_oracle(lambda x: L.generator_loss(x, kind), lambda x: g_formula(kind, x), [xr], rng,
                                      name=f"generator_loss[{kind}] at extreme logits",
                                      value_atol=EXTREME_VALUE_ATOL)
    _finite(f"generator_loss[{kind}]", out, *grads)


def test_minimax_generator_loss_finite_where_log_one_minus_sigmoid_is_inf(impl):
    _, device = impl
    x = torch.tensor([100.0, 50.0, 1e4], device=device, requires_grad=True)
    naive = torch.log(1 - torch.sigmoid(x.detach()))
    assert bool(torch.isinf(naive).all()), "precondition: the textbook formula saturates to -inf here"
    loss = L.generator_loss(x, kind="minimax")
    (grad,) = torch.autograd.grad(loss, x)
    _finite("minimax generator loss", loss, grad)
    x64 = x.detach().double()
    assert_close(loss, (-F.softplus(x64).mean()).float(), name="minimax generator loss")
    assert_close(grad, (-torch.sigmoid(x64) / 3).float(), name="minimax generator gradient")


@pytest.mark.parametrize("kind", KINDS)
def test_nan_logits_give_nan_loss(impl, kind):
    _, device = impl
    nan = float("nan")
    good = torch.tensor([0.5, -0.3], device=device)
    bad = torch.tensor([0.5, nan, -1.0], device=device)
    for real, fake, where in ((bad, good, "real"), (good, bad, "fake"), (bad, bad, "both")):
        loss = L.discriminator_loss(real, fake, kind=kind)
        assert math.isnan(loss.item()), f"discriminator_loss[{kind}] with NaN in {where}: got {loss.item()}"
    loss = L.generator_loss(bad, kind=kind)
    assert math.isnan(loss.item()), f"generator_loss[{kind}] with a NaN logit: got {loss.item()}"
    # A NaN as large as the hinge's flat side must not be clamped to 0 either.
    assert math.isnan(L.discriminator_loss(torch.tensor([nan], device=device), torch.tensor([-5.0], device=device),
                                           kind=kind).item())


def test_nan_inputs_bce(impl):
    """A NaN logit, or a NaN target, propagates exactly where torch's does."""
    _, device = impl
    nan = float("nan")
    x = torch.tensor([0.5, nan, -1.0], device=device)
    x_ok = torch.tensor([0.5, 2.0, -1.0], device=device)
    t = torch.tensor([0.0, 0.5, 1.0], device=device)
    t_nan = torch.tensor([0.0, nan, 1.0], device=device)
    p = torch.tensor([0.5, 0.2, 0.25], device=device)
    for r in REDUCTIONS:
        assert_close(L.binary_cross_entropy_with_logits(x, t, reduction=r),
                     F.binary_cross_entropy_with_logits(x, t, reduction=r), name=f"bce_with_logits NaN logit [{r}]")
        assert_close(L.binary_cross_entropy_with_logits(x_ok, t_nan, reduction=r),
                     F.binary_cross_entropy_with_logits(x_ok, t_nan, reduction=r),
                     name=f"bce_with_logits NaN target [{r}]")
    for r in ("mean", "sum"):
        assert math.isnan(L.binary_cross_entropy_with_logits(x, t, reduction=r).item())
    none = L.binary_cross_entropy_with_logits(x, t, reduction="none")
    assert torch.isnan(none).tolist() == [False, True, False]


# ---- half precision ------------------------------------------------------------------------------

HALF_CASES = ([("bce_with_logits", r) for r in REDUCTIONS] + [("binary_cross_entropy", r) for r in REDUCTIONS]
              + [("d", k) for k in KINDS] + [("g", k) for k in KINDS])


@pytest.mark.parametrize("case", HALF_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_half_precision_computed_in_float32(impl, dtype, case, rng):
    """float16/bfloat16 in, the same dtype out, equal to the float64 formula rounded once (a
    half-precision accumulation of 1000 terms would be far off)."""
    _, device = impl
    op, arg = case
    if op == "bce_with_logits":
        x = randn((1000,), dtype, device, rng, scale=3.0, requires_grad=True)
        t = rand((1000,), dtype, device, rng, requires_grad=True)
        w = rand((1000,), dtype, device, rng, 0.5, 2.0)
        pw = rand((1,), dtype, device, rng, 0.5, 3.0)
        check_against_oracle(
            lambda x, t, w, pw: L.binary_cross_entropy_with_logits(x, t, w, reduction=arg, pos_weight=pw),
            lambda x, t, w, pw: F.binary_cross_entropy_with_logits(x, t, w, reduction=arg, pos_weight=pw),
            [x, t, w, pw], rng, name=f"bce_with_logits {dtype}")
    elif op == "binary_cross_entropy":
        p = rand((1000,), dtype, device, rng, 0.02, 0.98, requires_grad=True)
        t = rand((1000,), dtype, device, rng, requires_grad=True)
        check_against_oracle(lambda p, t: L.binary_cross_entropy(p, t, reduction=arg),
                             lambda p, t: F.binary_cross_entropy(p, t, reduction=arg),
                             [p, t], rng, name=f"binary_cross_entropy {dtype}")
    elif op == "d":
        a, b = (0.9, 0.1) if arg in LABELLED_KINDS else (1.0, 0.0)
        xr = randn((1000,), dtype, device, rng, scale=2.0, requires_grad=True)
        xf = randn((8, 3), dtype, device, rng, scale=2.0, requires_grad=True)
        check_against_oracle(lambda r, f: L.discriminator_loss(r, f, arg, a, b),
                             lambda r, f: d_formula(arg, r, f, a, b), [xr, xf], rng,
                             name=f"discriminator_loss[{arg}] {dtype}")
    else:
        x = randn((1000,), dtype, device, rng, scale=2.0, requires_grad=True)
        check_against_oracle(lambda x: L.generator_loss(x, arg), lambda x: g_formula(arg, x), [x], rng,
                             name=f"generator_loss[{arg}] {dtype}")


# ---- argument errors ---------------------------------------------------------------------------


def _int(shape, device):
    return torch.ones(shape, dtype=torch.long, device=device)


INT_CASES = {
    "bce_with_logits-input": ("input", lambda f, i: L.binary_cross_entropy_with_logits(i(3), f(3))),
    "bce_with_logits-target": ("target", lambda f, i: L.binary_cross_entropy_with_logits(f(3), i(3))),
    "bce_with_logits-weight": ("weight", lambda f, i: L.binary_cross_entropy_with_logits(f(3), f(3), weight=i(3))),
    "bce_with_logits-pos_weight": ("pos_weight", lambda f, i: L.binary_cross_entropy_with_logits(f(3), f(3), pos_weight=i(3))),
    "binary_cross_entropy-input": ("input", lambda f, i: L.binary_cross_entropy(i(3) * 0, f(3))),
    "binary_cross_entropy-target": ("target", lambda f, i: L.binary_cross_entropy(f(3), i(3))),
    "binary_cross_entropy-weight": ("weight", lambda f, i: L.binary_cross_entropy(f(3), f(3), weight=i(3))),
    "gan_d_loss-real": ("real_logits", lambda f, i: L.discriminator_loss(i(3), f(2))),
    "gan_d_loss-fake": ("fake_logits", lambda f, i: L.discriminator_loss(f(3), i(2))),
    "gan_g_loss-fake": ("fake_logits", lambda f, i: L.generator_loss(i(3))),
}


@pytest.mark.parametrize("case", INT_CASES, ids=str)
def test_integer_inputs_raise_type_error_naming_the_argument(impl, case, request):
    name, device = impl
    arg, call = INT_CASES[case]

    def f(n):
        return torch.full((n,), 0.5, device=device)

    with pytest.raises(TypeError, match=rf"\b{arg} must be a floating-point tensor"):
        call(f, lambda n: _int((n,), device))


def test_mixed_dtype_gan_logits_raise_type_error(impl):
    _, device = impl
    with pytest.raises(TypeError, match="same dtype"):
        L.discriminator_loss(torch.zeros(3, device=device), torch.zeros(2, device=device, dtype=torch.float64))


@pytest.mark.parametrize("shapes", [((3,), (4,)), ((3, 1), (3,)), ((), (1,)), ((2, 3), (3, 2))], ids=str)
def test_mismatched_shapes_raise_torchs_value_error(impl, shapes):
    _, device = impl
    xs, ts = shapes
    x, t = torch.full(xs, 0.5, device=device), torch.full(ts, 0.5, device=device)
    for ours, theirs in ((L.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits),
                         (L.binary_cross_entropy, F.binary_cross_entropy)):
        with pytest.raises(ValueError) as want:
            theirs(x, t)
        with pytest.raises(ValueError) as got:
            ours(x, t)
        assert str(got.value) == str(want.value)
    # The ops (below the drop-in layer) reject it with their own message, on every backend.
    with pytest.raises(ValueError, match=r"target size \(.*\) must be the same as input size"):
        ops.bce_with_logits(x, t)
    with pytest.raises(ValueError, match=r"target size \(.*\) must be the same as input size"):
        ops.binary_cross_entropy(x, t)


@pytest.mark.parametrize("wshape", [(4,), (2, 3, 5), (3, 1, 5)], ids=str)
@pytest.mark.parametrize("arg", ["weight", "pos_weight"])
def test_weight_that_does_not_broadcast_raises(impl, arg, wshape):
    _, device = impl
    x = torch.zeros(3, 5, device=device)
    w = torch.ones(wshape, device=device)
    with pytest.raises(ValueError, match=rf"{arg} of shape .* cannot be broadcast to input of shape"):
        ops.bce_with_logits(x, x, **{arg: w})
    if arg == "weight":
        with pytest.raises(ValueError, match="weight of shape .* cannot be broadcast"):
            ops.binary_cross_entropy(x, x, weight=w)


DEVICE_CASES = {
    "bce_with_logits-target": lambda x, o: ops.bce_with_logits(x, o),
    "bce_with_logits-weight": lambda x, o: ops.bce_with_logits(x, x, weight=o),
    "bce_with_logits-pos_weight": lambda x, o: ops.bce_with_logits(x, x, pos_weight=o),
    "binary_cross_entropy-target": lambda x, o: ops.binary_cross_entropy(x, o),
    "binary_cross_entropy-weight": lambda x, o: ops.binary_cross_entropy(x, x, weight=o),
    "gan_d_loss-fake": lambda x, o: ops.gan_d_loss(x, o),
}


@pytest.mark.parametrize("case", DEVICE_CASES, ids=str)
def test_mismatched_devices_raise(impl, case):
    """The first tensor on the implementation's device, another on a second device ('meta' when
    the first is on the CPU): an error naming both devices, never a result."""
    _, device = impl
    other = "meta" if device == "cpu" else "cpu"
    x = torch.full((4,), 0.5, device=device)
    o = torch.full((4,), 0.5, device=other)
    with pytest.raises(RuntimeError, match="must be on the same device"):
        out = DEVICE_CASES[case](x, o)
        pytest.fail(f"returned {out!r} instead of raising")  # pragma: no cover


@pytest.mark.parametrize("value", [1.5, -0.1, float("nan")])
def test_binary_cross_entropy_outside_unit_interval_raises(impl, value):
    _, device = impl
    skip_device_assert(device)
    p = torch.tensor([0.5, value, 0.2], device=device)
    t = torch.tensor([0.0, 1.0, 1.0], device=device)
    with pytest.raises(RuntimeError):  # torch's own behaviour, the precondition of the test
        F.binary_cross_entropy(p, t)
    for reduction in REDUCTIONS:
        with pytest.raises(RuntimeError, match="between 0 and 1"):
            L.binary_cross_entropy(p, t, reduction=reduction)


@pytest.mark.parametrize("value", [1.5, -0.1, float("nan")])
def test_binary_cross_entropy_target_outside_unit_interval_raises(impl, value, request):
    name, device = impl
    skip_device_assert(device)
    p = torch.tensor([0.5, 0.4, 0.2], device=device)
    t = torch.tensor([0.0, value, 1.0], device=device)
    try:
        F.binary_cross_entropy(p, t)
    except RuntimeError:
        pass
    else:  # pragma: no cover
        pytest.skip(f"torch {torch.__version__} accepts targets outside [0, 1]: nothing to match")
    for reduction in REDUCTIONS:
        with pytest.raises(RuntimeError, match="target should be between 0 and 1"):
            out = L.binary_cross_entropy(p, t, reduction=reduction)
            pytest.fail(f"returned {out!r}; torch raises")  # pragma: no cover


_KIND_CHOICES = r"'minimax', 'nonsaturating', 'hinge', 'wasserstein', 'least_squares'; got 'vanilla'"
_REDUCTION_CHOICES = r"'none', 'mean', 'sum'; got 'avg'"


def test_unknown_kind_or_reduction_raises_listing_choices(impl):
    _, device = impl
    x = torch.full((3,), 0.5, device=device)
    with pytest.raises(ValueError, match=_REDUCTION_CHOICES):
        ops.bce_with_logits(x, x, reduction="avg")
    with pytest.raises(ValueError, match=_REDUCTION_CHOICES):
        ops.binary_cross_entropy(x, x, reduction="avg")
    with pytest.raises(ValueError, match=_REDUCTION_CHOICES):
        L.BCEWithLogitsLoss(reduction="avg")(x, x)
    with pytest.raises(ValueError, match=_KIND_CHOICES):
        ops.gan_d_loss(x, x, "vanilla")
    with pytest.raises(ValueError, match=_KIND_CHOICES):
        ops.gan_g_loss(x, "vanilla")
    with pytest.raises(ValueError, match=_KIND_CHOICES):
        L.discriminator_loss(x, x, kind="vanilla")
    with pytest.raises(ValueError, match=_KIND_CHOICES):
        L.generator_loss(x, kind="vanilla")
    with pytest.raises(ValueError, match=_KIND_CHOICES):
        L.DiscriminatorLoss("vanilla")
    with pytest.raises(ValueError, match=_KIND_CHOICES):
        L.GeneratorLoss("vanilla")


@pytest.mark.parametrize("kind", ["hinge", "wasserstein"])
def test_unlabelled_kinds_reject_labels(kind):
    r, f = torch.zeros(3), torch.zeros(2)
    for labels in ({"real_label": 0.9}, {"fake_label": 0.1}, {"real_label": 0.9, "fake_label": 0.1}):
        with pytest.raises(ValueError, match=f"kind '{kind}' takes no labels"):
            L.discriminator_loss(r, f, kind=kind, **labels)
        with pytest.raises(ValueError, match=f"kind '{kind}' takes no labels"):
            L.DiscriminatorLoss(kind, **labels)
    # The defaults, spelled out, are accepted.
    assert torch.isfinite(L.discriminator_loss(r, f, kind=kind, real_label=1.0, fake_label=0.0))


@pytest.mark.parametrize("bad", ["0.9", True, None])
def test_labels_must_be_numbers(bad):
    with pytest.raises(TypeError, match="real_label must be a number"):
        L.discriminator_loss(torch.zeros(3), torch.zeros(2), real_label=bad)


# ---- what autograd may and may not do ------------------------------------------------------------

DOUBLE_BACKWARD_CASES = {
    "bce_with_logits": lambda x, t: ops.bce_with_logits(x, t, reduction="mean"),
    "bce_with_logits-none": lambda x, t: ops.bce_with_logits(x, t, reduction="none").sum(),
    "binary_cross_entropy": lambda x, t: ops.binary_cross_entropy(torch.sigmoid(x), t),
    "gan_d_loss-nonsaturating": lambda x, t: ops.gan_d_loss(x, t, "nonsaturating"),
    "gan_d_loss-wasserstein": lambda x, t: ops.gan_d_loss(x, t, "wasserstein"),
    "gan_g_loss-least_squares": lambda x, t: ops.gan_g_loss(x * t, "least_squares"),
}


@pytest.mark.parametrize("case", DOUBLE_BACKWARD_CASES, ids=str)
def test_double_backward_raises(kernel_impl, case, rng):
    """The losses family promises first derivatives only: differentiating a gradient must raise,
    never return a silently wrong (e.g. zero) second derivative."""
    _, device = kernel_impl
    x = randn((6,), torch.float64, device, rng, requires_grad=True)
    t = rand((6,), torch.float64, device, rng, 0.1, 0.9, requires_grad=True)
    loss = DOUBLE_BACKWARD_CASES[case](x, t)
    gx, gt = torch.autograd.grad(loss, (x, t), create_graph=True)
    with pytest.raises(RuntimeError, match=r"(?i)double backward|derivative for .* is not implemented|not supported"):
        second = torch.autograd.grad((gx * gx).sum() + (gt * gt).sum(), (x, t), allow_unused=True)
        pytest.fail(f"double backward returned {second}")  # pragma: no cover


class _DropFirstGradient(torch.autograd.Function):
    """a + b whose backward gives no gradient (None) to a: the loss's node then receives an
    undefined upstream gradient, which every autograd node must accept."""

    @staticmethod
    def forward(ctx, a, b):
        return a + b

    @staticmethod
    def backward(ctx, grad):
        return None, grad


UNDEFINED_GRAD_CASES = {
    "bce_with_logits": lambda x, t: ops.bce_with_logits(x, t),
    "binary_cross_entropy": lambda x, t: ops.binary_cross_entropy(t, x.detach().sigmoid()),
    "gan_d_loss": lambda x, t: ops.gan_d_loss(x, t),
    "gan_g_loss": lambda x, t: ops.gan_g_loss(x),
}


@pytest.mark.parametrize("case", UNDEFINED_GRAD_CASES, ids=str)
def test_undefined_upstream_gradient_is_accepted(impl, case, rng, request):
    """As with torch's losses: no gradient flows to the loss's inputs, and no error."""
    name, device = impl
    x = randn((5,), torch.float32, device, rng, requires_grad=True)
    t = rand((5,), torch.float32, device, rng, 0.1, 0.9, requires_grad=True)
    other = torch.ones((), device=device, requires_grad=True)
    _DropFirstGradient.apply(UNDEFINED_GRAD_CASES[case](x, t), other).backward()
    assert other.grad is not None and other.grad.item() == 1.0
    for name, v in (("input", x), ("target", t)):
        assert v.grad is None or not bool(v.grad.any()), f"{case}: gradient {v.grad} reached {name}"


WEIGHT_GRAD_CASES = ["bce_with_logits-weight", "bce_with_logits-pos_weight", "binary_cross_entropy-weight"]


def _weighted_loss(case, x, t, w):
    if case == "bce_with_logits-weight":
        return ops.bce_with_logits(x, t, weight=w)
    if case == "bce_with_logits-pos_weight":
        return ops.bce_with_logits(x, t, pos_weight=w)
    return ops.binary_cross_entropy(torch.sigmoid(x), t, weight=w)


def _weighted_formula(case, x, t, w):
    if case == "bce_with_logits-weight":
        return (w * ((1 - t) * x + F.softplus(-x))).mean()
    if case == "bce_with_logits-pos_weight":
        return ((1 - t) * x + (1 + (w - 1) * t) * F.softplus(-x)).mean()
    p = torch.sigmoid(x)
    return (-w * (t * torch.log(p) + (1 - t) * torch.log1p(-p))).mean()


@pytest.mark.parametrize("case", WEIGHT_GRAD_CASES)
def test_gradient_wrt_weight(impl, case, rng):
    """The kernels refuse a gradient w.r.t. weight/pos_weight (as torch.nn.functional does),
    either when the loss is built or when it is differentiated; the reference, plain autograd,
    computes the right one."""
    name, device = impl
    x = randn((3, 4), torch.float64, device, rng, requires_grad=True)
    t = rand((3, 4), torch.float64, device, rng)
    w = rand((4,), torch.float64, device, rng, 0.5, 2.0, requires_grad=True)
    arg = case.split("-")[1]
    if name == "reference":  # plain autograd: torch's refusal, or the right gradient
        try:
            (gw,) = torch.autograd.grad(_weighted_loss(case, x, t, w), w)
        except RuntimeError as exc:
            assert arg in str(exc), exc
            return
        (want,) = torch.autograd.grad(_weighted_formula(case, x, t, w), w)
        assert_close(gw, want, name=f"{case}: d/dweight")
        return
    with pytest.raises(RuntimeError, match=rf"gradient with respect to {arg}\b"):
        loss = _weighted_loss(case, x, t, w)
        torch.autograd.grad(loss, (x, w))
    # Detached, the same call works.
    assert torch.isfinite(_weighted_loss(case, x, t, w.detach()))


# ---- gradcheck / gradgradcheck in float64 ----------------------------------------------------------

GRADCHECK_CASES = (
    [("bce_with_logits", r) for r in REDUCTIONS] + [("binary_cross_entropy", r) for r in REDUCTIONS]
    + [("gan_d_loss", k) for k in KINDS] + [("gan_g_loss", k) for k in KINDS])


def _gradcheck_problem(case, device, gen):
    """(function, inputs) for gradcheck; small, because every element costs two forward calls."""
    op, arg = case
    f64 = torch.float64
    if op == "bce_with_logits":
        x = randn((2, 3), f64, device, gen, scale=2.0, requires_grad=True)
        t = rand((2, 3), f64, device, gen, requires_grad=True)
        w = rand((2, 1), f64, device, gen, 0.5, 2.0)
        pw = rand((3,), f64, device, gen, 0.5, 3.0)
        return (lambda x, t: ops.bce_with_logits(x, t, w, pw, arg)), (x, t)
    if op == "binary_cross_entropy":
        p = rand((2, 3), f64, device, gen, 0.1, 0.9, requires_grad=True)
        t = rand((2, 3), f64, device, gen, requires_grad=True)
        w = rand((3,), f64, device, gen, 0.5, 2.0)
        return (lambda p, t: ops.binary_cross_entropy(p, t, w, arg)), (p, t)
    if op == "gan_d_loss":
        a, b = (0.9, 0.1) if arg in LABELLED_KINDS else (1.0, 0.0)
        xr = randn((3,), f64, device, gen, scale=2.0, requires_grad=True)
        xf = randn((2, 2), f64, device, gen, scale=2.0, requires_grad=True)
        return (lambda r, f: ops.gan_d_loss(r, f, arg, a, b)), (xr, xf)
    x = randn((2, 3), f64, device, gen, scale=2.0, requires_grad=True)
    return (lambda x: ops.gan_g_loss(x, arg)), (x,)


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_gradcheck(impl, case, rng):
    """Analytical against numerical gradients. (Undefined upstream gradients, which gradcheck also
    probes, are test_undefined_upstream_gradient_is_accepted's.)"""
    _, device = impl
    fn, inputs = _gradcheck_problem(case, device, rng)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, check_undefined_grad=False)


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_reference_gradgradcheck(case, rng):
    """The reference is differentiable to any order (it is the fallback on other devices)."""
    with ganfast.use_backend("reference"):
        fn, inputs = _gradcheck_problem(case, "cpu", rng)
        assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


# ---- opcheck ----------------------------------------------------------------------------------------


def _opcheck_args(name, device, gen):
    """Valid arguments for op `name`. Forward ops get inputs that require grad (so the autograd
    registration and the AOT backward are exercised); backward ops get plain tensors (their own
    derivative is not promised)."""
    f64 = torch.float64
    x = randn((3, 4), f64, device, gen, scale=2.0)
    p = rand((3, 4), f64, device, gen, 0.1, 0.9)
    t = rand((3, 4), f64, device, gen)
    w = rand((3, 1), f64, device, gen, 0.5, 2.0)
    pw = rand((4,), f64, device, gen, 0.5, 3.0)
    g_none = randn((3, 4), f64, device, gen)
    g0 = randn((), f64, device, gen)
    xr = randn((5,), f64, device, gen, scale=2.0)
    xf = randn((2, 3), f64, device, gen, scale=2.0)
    rg = lambda t: t.clone().requires_grad_()  # noqa: E731
    return {
        "bce_with_logits-none": (rg(x), rg(t), w, pw, "none"),
        "bce_with_logits-mean": (rg(x), rg(t), None, None, "mean"),
        "bce_with_logits_backward-none": (g_none, x, t, w, pw, "none"),
        "bce_with_logits_backward-sum": (g0, x, t, None, pw, "sum"),
        "bce_with_logits_target_backward-mean": (g0, x, t, w, pw, "mean"),
        "binary_cross_entropy-none": (rg(p), rg(t), w, "none"),
        "binary_cross_entropy-sum": (rg(p), rg(t), None, "sum"),
        "binary_cross_entropy_backward-mean": (g0, p, t, w, "mean"),
        "binary_cross_entropy_target_backward-none": (g_none, p, t, w, "none"),
        "gan_d_loss-nonsaturating": (rg(xr), rg(xf), "nonsaturating", 0.9, 0.1),
        "gan_d_loss-hinge": (rg(xr), rg(xf), "hinge", 1.0, 0.0),
        "gan_d_loss_backward-least_squares": (g0, xr, xf, "least_squares", 0.9, 0.1),
        "gan_g_loss-minimax": (rg(xf), "minimax"),
        "gan_g_loss-wasserstein": (rg(xf), "wasserstein"),
        "gan_g_loss_backward-nonsaturating": (g0, xf, "nonsaturating"),
    }[name]


OPCHECK_CASES = [
    "bce_with_logits-none", "bce_with_logits-mean", "bce_with_logits_backward-none",
    "bce_with_logits_backward-sum", "bce_with_logits_target_backward-mean", "binary_cross_entropy-none",
    "binary_cross_entropy-sum", "binary_cross_entropy_backward-mean",
    "binary_cross_entropy_target_backward-none", "gan_d_loss-nonsaturating", "gan_d_loss-hinge",
    "gan_d_loss_backward-least_squares", "gan_g_loss-minimax", "gan_g_loss-wasserstein",
    "gan_g_loss_backward-nonsaturating",
]


def test_opcheck_cases_cover_every_op():
    from ganfast.ops import losses as op_module

    covered = {c.split("-")[0] for c in OPCHECK_CASES}
    assert covered == set(op_module._FAKES), f"ops without an opcheck case: {set(op_module._FAKES) - covered}"


@pytest.mark.parametrize("case", OPCHECK_CASES)
@pytest.mark.parametrize("which", ["cpu", "triton", "cuda"])
def test_opcheck(which, case, rng):
    """torch.library.opcheck: schema, autograd registration, fake tensor, AOT dispatch (dynamic).
    cpu/cuda: the C++ ops torch.ops.ganfast.*; triton: torch.ops.ganfast_triton.*."""
    device = implementation_device(which)
    namespace = torch.ops.ganfast_triton if which == "triton" else torch.ops.ganfast
    op = getattr(namespace, case.split("-")[0]).default
    result = torch.library.opcheck(op, _opcheck_args(case, device, rng))
    assert all(v == "SUCCESS" for v in result.values()), result


# ---- one op (and one kernel) per pass --------------------------------------------------------------


class OpCounter(TorchDispatchMode):
    """Records the ganfast ops dispatched below autograd."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace in ("ganfast", "ganfast_triton"):
            self.ops.append(func.name())
        return func(*args, **(kwargs or {}))


ONE_OP_CASES = {
    "gan_d_loss-nonsaturating": (lambda r, f, t: ops.gan_d_loss(r, f, "nonsaturating", 0.9, 0.0), "gan_d_loss"),
    "gan_d_loss-hinge": (lambda r, f, t: ops.gan_d_loss(r, f, "hinge"), "gan_d_loss"),
    "gan_d_loss-least_squares": (lambda r, f, t: ops.gan_d_loss(r, f, "least_squares"), "gan_d_loss"),
    "gan_g_loss-nonsaturating": (lambda r, f, t: ops.gan_g_loss(f, "nonsaturating"), "gan_g_loss"),
    "bce_with_logits": (lambda r, f, t: ops.bce_with_logits(f, t, pos_weight=t[0]), "bce_with_logits"),
    "binary_cross_entropy": (lambda r, f, t: ops.binary_cross_entropy(t, t.detach(), reduction="sum"),
                             "binary_cross_entropy"),
}


def _one_op_inputs(device, gen):
    real = randn((16,), torch.float32, device, gen, requires_grad=True)
    fake = randn((4, 6), torch.float32, device, gen, requires_grad=True)
    target = rand((4, 6), torch.float32, device, gen, 0.1, 0.9)
    return real, fake, target


@pytest.mark.parametrize("case", ONE_OP_CASES, ids=str)
def test_one_op_forward_one_op_backward(kernel_impl, case, rng):
    """The discriminator loss's real and fake halves are one op forward and one backward; so is
    every other loss."""
    name, device = kernel_impl
    fn, op_name = ONE_OP_CASES[case]
    real, fake, target = _one_op_inputs(device, rng)
    if case == "binary_cross_entropy":
        target.requires_grad_()
    namespace = "ganfast_triton" if name == "triton" else "ganfast"
    with OpCounter() as forward:
        loss = fn(real, fake, target)
    with OpCounter() as backward:
        loss.backward()
    assert forward.ops == [f"{namespace}::{op_name}"]
    expected_backward = f"{namespace}::{op_name}_backward"
    assert backward.ops == [expected_backward], backward.ops


class TritonLaunchCounter:
    """Counts Triton kernel launches (interpreted or compiled) by kernel name."""

    def __init__(self, monkeypatch):
        from triton.runtime import interpreter, jit

        self.launches = []
        for cls in (jit.JITFunction, interpreter.InterpretedFunction):
            original = cls.run

            def run(fn, *args, _original=original, **kwargs):
                if not kwargs.get("warmup", False):
                    self.launches.append(getattr(fn, "__name__", repr(fn)))
                return _original(fn, *args, **kwargs)

            monkeypatch.setattr(cls, "run", run)


@pytest.mark.parametrize("case", ONE_OP_CASES, ids=str)
def test_triton_one_kernel_launch_per_pass(case, rng, monkeypatch):
    """ganfast.losses promises one kernel launch forward and one backward on the Triton backend
    (the real and fake halves of the discriminator loss in the same launch)."""
    device = implementation_device("triton")
    fn, _ = ONE_OP_CASES[case]
    with ganfast.use_backend("triton"):
        real, fake, target = _one_op_inputs(device, rng)
        if case == "binary_cross_entropy":
            target.requires_grad_()
        fn(real, fake, target).backward()  # warm-up: autotuning, if any, launches more
        real.grad = fake.grad = target.grad = None
        counter = TritonLaunchCounter(monkeypatch)
        loss = fn(real, fake, target)
        forward = list(counter.launches)
        counter.launches.clear()
        loss.backward()
        backward = list(counter.launches)
    assert len(forward) == 1, f"forward launched {forward}"
    assert len(backward) == 1, f"backward launched {backward}"


# ---- modules ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_module_is_a_drop_in(impl, weighted, reduction, rng):
    _, device = impl
    x = randn((6, 4), torch.float32, device, rng, scale=3.0, requires_grad=True)
    t = rand((6, 4), torch.float32, device, rng)
    kwargs = {}
    if weighted:
        kwargs = {"weight": rand((6, 1), torch.float32, device, rng, 0.5, 2.0),
                  "pos_weight": rand((4,), torch.float32, device, rng, 0.5, 3.0)}
    ours = L.BCEWithLogitsLoss(reduction=reduction, **kwargs)
    theirs = torch.nn.BCEWithLogitsLoss(reduction=reduction, **kwargs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for k, v in theirs.state_dict().items():
        assert_close(ours.state_dict()[k], v, name=k)
    assert dict(ours.named_buffers()).keys() == dict(theirs.named_buffers()).keys()
    check_against_oracle(ours, lambda x, t: theirs.double()(x, t), [x, t], rng, name="BCEWithLogitsLoss")
    theirs.float()
    if weighted:
        fresh = L.BCEWithLogitsLoss(reduction=reduction, weight=torch.zeros_like(kwargs["weight"]),
                                    pos_weight=torch.zeros_like(kwargs["pos_weight"]))
        fresh.load_state_dict(theirs.state_dict())
        assert_close(fresh(x, t), theirs(x, t), name="after load_state_dict")
        assert ours.double().weight.dtype == torch.float64 and ours.pos_weight.dtype == torch.float64
    assert repr(reduction) in repr(ours)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_module_is_a_drop_in(impl, weighted, reduction, rng):
    _, device = impl
    p = rand((6, 4), torch.float32, device, rng, 0.02, 0.98, requires_grad=True)
    t = rand((6, 4), torch.float32, device, rng)
    kwargs = {"weight": rand((4,), torch.float32, device, rng, 0.5, 2.0)} if weighted else {}
    ours = L.BCELoss(reduction=reduction, **kwargs)
    theirs = torch.nn.BCELoss(reduction=reduction, **kwargs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for k, v in theirs.state_dict().items():
        assert_close(ours.state_dict()[k], v, name=k)
    check_against_oracle(ours, lambda p, t: theirs.double()(p, t), [p, t], rng, name="BCELoss")
    if weighted:
        fresh = L.BCELoss(reduction=reduction, weight=torch.zeros(4, device=device))
        fresh.load_state_dict(theirs.float().state_dict())
        assert_close(fresh(p, t), theirs(p, t), name="after load_state_dict")


@pytest.mark.parametrize("case", D_CASES, ids=D_IDS)
def test_gan_loss_modules(impl, case, rng):
    _, device = impl
    kind, (a, b) = case
    xr = randn((8, 1), torch.float32, device, rng, scale=2.0, requires_grad=True)
    xf = randn((5,), torch.float32, device, rng, scale=2.0, requires_grad=True)
    d = L.DiscriminatorLoss(kind, real_label=a, fake_label=b)
    g = L.GeneratorLoss(kind)
    check_against_oracle(d, lambda r, f: d_formula(kind, r, f, a, b), [xr, xf], rng, name=f"DiscriminatorLoss({kind})")
    check_against_oracle(g, lambda f: g_formula(kind, f), [xf], rng, name=f"GeneratorLoss({kind})")
    assert f"kind={kind!r}" in repr(d) and f"kind={kind!r}" in repr(g)
    assert list(d.state_dict()) == [] and list(g.state_dict()) == []


# ---- the Triton ticket counter ------------------------------------------------------------------


def test_triton_ticket_counter_cached_and_reset(rng):
    """Reductions over several programs take tickets on one cached counter buffer that the last
    program puts back to 0: no zeroed counter is made per call, a second call on the same buffer is
    right (a counter left taken would leave its result unwritten), and the counter reads 0 after
    each call (the interpreter runs programs one after another, so this is checked explicitly)."""
    device = torch.device(implementation_device("triton"))
    from ganfast.triton import _common
    from ganfast.triton import losses as triton_losses

    real = randn((3000,), torch.float64, device, rng, scale=2.0)  # 3 programs of BLOCK elements
    fake = randn((2100,), torch.float64, device, rng, scale=2.0)
    calls = [
        (lambda: triton_losses.gan_d_loss(real, fake, "nonsaturating", 0.9, 0.1),
         d_formula("nonsaturating", real, fake, 0.9, 0.1)),
        (lambda: triton_losses.gan_g_loss(fake, "minimax"), g_formula("minimax", fake)),
        (lambda: triton_losses.bce_with_logits(real, torch.sigmoid(real.flip(0)), None, None, "sum"),
         F.binary_cross_entropy_with_logits(real, torch.sigmoid(real.flip(0)), reduction="sum")),
    ]
    buffer = _common.counters(device)
    poison = torch.are_deterministic_algorithms_enabled()
    for call, expected in calls:
        for repeat in range(2):
            torch.use_deterministic_algorithms(True)  # the 0-dim result NaN-filled until written
            try:
                got = call()
            finally:
                torch.use_deterministic_algorithms(poison)
            assert_close(got, expected, name=f"call {repeat + 1}")
            assert _common.counters(device) is buffer, "the counter buffer must be reused"
            assert not buffer.any(), f"counter left at {buffer.nonzero().flatten().tolist()}"


def test_triton_ticket_counter_dropped_after_failed_launch():
    """A launch stopped part way (e.g. an interrupted interpreter run) may leave a ticket taken:
    its counter buffer is dropped so the next launch starts from 0."""
    from ganfast.triton import _common

    device = torch.device("cpu")
    stale = _common.counters(device)
    stale[0] = 2
    with pytest.raises(KeyboardInterrupt):
        with _common._Launch(device):
            raise KeyboardInterrupt
    fresh = _common.counters(device)
    assert fresh is not stale and not fresh.any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_triton_ticket_counter_per_stream():
    """Kernels on two streams may run at once: each stream has its own counter buffer."""
    from ganfast.triton import _common

    device = torch.device("cuda", torch.cuda.current_device())
    first = _common.counters(device)
    side = torch.cuda.Stream(device)
    with torch.cuda.stream(side):
        second = _common.counters(device)
    assert first.data_ptr() != second.data_ptr()
    assert _common.counters(device) is first
