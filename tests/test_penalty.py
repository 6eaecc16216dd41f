"""The penalty op family (interpolate, penalty_from_grad, gradient_penalty), every implementation
present (reference, cpu, triton, cuda), against float64 torch formulas written here independently
of ganfast/reference (and against the reference where the formula is torch autograd of it):
values, first and second derivatives (gradcheck / gradgradcheck), the third derivative (right or a
clear error), layouts, edge cases, errors, opcheck, and whole WGAN-GP / R1 discriminator steps
compared with the same step in plain eager PyTorch.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ganfast
import ganfast.losses as L
import ganfast.penalty as P
from conftest import GPU, assert_close, cpp_family_registered, family_fixtures, randn
from ganfast import ops

impl, kernel_impl = family_fixtures("penalty")
# gradient_penalty's tests run a discriminator built with ganfast.nn.LeakyReLU: both families.
gp_impl, _gp_kernel_impl = family_fixtures("penalty", "bias_act", names=("gp_impl", "gp_kernel_impl"))

KINDS = ("wgan-gp", "one-sided", "r1", "r2")
SHAPES = [(1, 3, 4, 4), (3, 5, 7), (5,), (2, 3, 2, 3), (4, 1)]
FLOATS = [torch.float32, torch.float64]


# ---- float64 formulas, written from the definitions --------------------------------------------


def interp_formula(real, fake, eps):
    e = eps.reshape((-1,) + (1,) * (real.dim() - 1))
    return e * real + (1 - e) * fake


def penalty_formula(g, kind, center=1.0):
    n = g.reshape(g.shape[0], -1).norm(dim=1)
    if kind == "wgan-gp":
        return ((n - center) ** 2).mean()
    if kind == "one-sided":
        return (F.relu(n - center) ** 2).mean()
    return (g.reshape(g.shape[0], -1) ** 2).sum(dim=1).mean()  # r1, r2: ||g||^2


def _f64(t):
    return t.detach().to(torch.float64).requires_grad_(t.requires_grad)


def _away_from_kinks(g, kind, center):
    """Scales samples so no norm sits within 0.1 of the center (one-sided's kink)."""
    if kind != "one-sided":
        return g
    with torch.no_grad():
        n = g.reshape(g.shape[0], -1).norm(dim=1)
        bad = (n - center).abs() < 0.1
        g[bad] *= 2.0
    return g


def compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---- interpolate -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_interpolate_matches_formula(impl, dtype, shape, rng):
    _, device = impl
    real = randn(shape, dtype, device, rng, requires_grad=True)
    fake = randn(shape, dtype, device, rng, requires_grad=True)
    eps = torch.rand(shape[0], generator=rng, dtype=torch.float64).to(dtype=dtype, device=device)
    out = P.interpolate(real, fake, eps)
    assert out.dtype == dtype and out.shape == real.shape
    up = randn(shape, dtype, device, rng)
    gr, gf = torch.autograd.grad(out, (real, fake), up)
    r64, f64 = _f64(real), _f64(fake)
    out64 = interp_formula(r64, f64, eps.double())
    gr64, gf64 = torch.autograd.grad(out64, (r64, f64), up.double())
    assert_close(out, out64.to(dtype), name="interpolate")
    assert_close(gr, gr64.to(dtype), name="d/d real")
    assert_close(gf, gf64.to(dtype), name="d/d fake")
    # and the float64 reference
    assert_close(out, ganfast.reference.penalty.interpolate(r64, f64, eps.double()).to(dtype),
                 name="interpolate vs reference")


def test_interpolate_eps_shapes_and_generator(impl, rng):
    _, device = impl
    real, fake = randn((3, 2, 4, 5), device=device, gen=rng), randn((3, 2, 4, 5), device=device, gen=rng)
    eps = torch.rand(3, generator=rng).to(device)
    expected = interp_formula(real.double(), fake.double(), eps.double()).float()
    assert_close(P.interpolate(real, fake, eps), expected, name="eps (B,)")
    assert_close(P.interpolate(real, fake, eps.reshape(3, 1, 1, 1)), expected, name="eps (B,1,1,1)")
    # eps=None: drawn with torch.rand(B) from the given generator, on the generator's device (a CPU
    # generator, and on a GPU also a CUDA one): compared with what that generator's twin draws there
    for gen_device in sorted({"cpu", device}):
        g1, g2 = (torch.Generator(gen_device).manual_seed(7) for _ in range(2))
        out = P.interpolate(real, fake, generator=g1)
        drawn = torch.rand(3, generator=g2, device=gen_device)
        assert out.device == real.device
        assert_close(out, interp_formula(real.double(), fake.double(), drawn.double().to(device)).float(),
                     name=f"eps=None, generator on {gen_device}")
    # a fresh draw differs from the last one (with overwhelming probability)
    o1, o2 = P.interpolate(real, fake), P.interpolate(real, fake)
    assert not torch.equal(o1, o2), "eps=None must draw a fresh eps per call"


@pytest.mark.parametrize("device", ["meta"] + (["cuda"] if GPU else []))
def test_interpolate_generator_on_another_device(device, rng):
    """A CPU generator with samples on another device: eps is drawn on the CPU from that generator
    and moved (torch.rand refuses a CPU generator for CUDA tensors; for meta tensors it would
    silently ignore the generator, which is how this shows on a GPU-less machine)."""
    real = torch.randn((3, 2, 5), generator=rng, dtype=torch.float64).float().to(device)
    fake = torch.randn((3, 2, 5), generator=rng, dtype=torch.float64).float().to(device)
    g, twin = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    out = P.interpolate(real, fake, generator=g)
    drawn = torch.rand(3, generator=twin)
    assert out.device == real.device and out.shape == real.shape
    assert torch.equal(g.get_state(), twin.get_state()), "eps was not drawn from the given generator"
    if device != "meta":
        assert_close(out.cpu(), interp_formula(real.cpu().double(), fake.cpu().double(), drawn.double()).float(),
                     name=f"eps from a CPU generator, samples on {device}")
    if device == "cuda":  # and the other way round: a CUDA generator, CPU samples
        gc, twinc = (torch.Generator("cuda").manual_seed(5) for _ in range(2))
        out = P.interpolate(real.cpu(), fake.cpu(), generator=gc)
        drawn = torch.rand(3, generator=twinc, device="cuda").cpu()
        assert out.device.type == "cpu"
        assert_close(out, interp_formula(real.cpu().double(), fake.cpu().double(), drawn.double()).float(),
                     name="eps from a CUDA generator, CPU samples")


def test_interpolate_eps_extremes_and_batch_one(impl, rng):
    _, device = impl
    real, fake = randn((1, 3, 3), device=device, gen=rng), randn((1, 3, 3), device=device, gen=rng)
    assert_close(P.interpolate(real, fake, torch.ones(1, device=device)), real, name="eps=1")
    assert_close(P.interpolate(real, fake, torch.zeros(1, device=device)), fake, name="eps=0")


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced", "fake_other_layout"])
def test_interpolate_layouts(impl, layout, rng):
    name, device = impl
    real = randn((3, 4, 5, 6), torch.float64, device, rng)
    fake = randn((3, 4, 5, 6), torch.float64, device, rng)
    if layout == "channels_last":
        real, fake = real.to(memory_format=torch.channels_last), fake.to(memory_format=torch.channels_last)
    elif layout == "transposed":
        real, fake = real.transpose(2, 3).contiguous().transpose(2, 3), fake.transpose(0, 1).contiguous().transpose(0, 1)
    elif layout == "sliced":
        real = randn((3, 8, 5, 6), torch.float64, device, rng)[:, ::2]
        fake = randn((3, 4, 5, 12), torch.float64, device, rng)[..., 1::2]
    else:
        fake = fake.to(memory_format=torch.channels_last)
    real.requires_grad_(True)
    fake.requires_grad_(True)
    eps = torch.rand(3, generator=rng, dtype=torch.float64).to(device)
    out = P.interpolate(real, fake, eps)
    assert_close(out, interp_formula(real, fake, eps), name=f"interpolate {layout}")
    if layout == "channels_last" and name != "reference":
        assert out.is_contiguous(memory_format=torch.channels_last), "interpolate must keep channels_last"
    up = randn(out.shape, torch.float64, device, rng).to(memory_format=torch.channels_last)
    gr, gf = torch.autograd.grad(out, (real, fake), up)
    e = eps.reshape(3, 1, 1, 1)
    assert_close(gr, e * up, name="d/d real")
    assert_close(gf, (1 - e) * up, name="d/d fake")


def test_interpolate_gradcheck_gradgradcheck(impl, rng):
    _, device = impl
    real = randn((2, 3, 2), torch.float64, device, rng, requires_grad=True)
    fake = randn((2, 3, 2), torch.float64, device, rng, requires_grad=True)
    eps = torch.rand(2, generator=rng, dtype=torch.float64).to(device)
    fn = lambda r, f: P.interpolate(r, f, eps)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (real, fake))
    assert torch.autograd.gradgradcheck(fn, (real, fake))


def test_interpolate_backward_is_differentiable_any_order(impl, rng):
    """interpolate's backward is linear in its upstream gradient; its derivative is interpolate."""
    _, device = impl
    real = randn((3, 4), torch.float64, device, rng, requires_grad=True)
    fake = randn((3, 4), torch.float64, device, rng, requires_grad=True)
    eps = torch.rand(3, generator=rng, dtype=torch.float64).to(device)
    u = randn((3, 4), torch.float64, device, rng, requires_grad=True)
    out = P.interpolate(real, fake, eps)
    gr, gf = torch.autograd.grad(out, (real, fake), u, create_graph=True)
    a, b = randn((3, 4), torch.float64, device, rng), randn((3, 4), torch.float64, device, rng)
    (du,) = torch.autograd.grad((gr * a).sum() + (gf * b).sum(), u, create_graph=True)
    e = eps.reshape(3, 1)
    assert_close(du, e * a + (1 - e) * b, name="d(backward)/d u")
    # once more: du is linear in a... nothing depends on real/fake (second derivative 0)
    assert torch.autograd.gradcheck(lambda uu: torch.autograd.grad(P.interpolate(real, fake, eps), (real, fake), uu,
                                                                   create_graph=True), (u,))
    assert torch.autograd.gradgradcheck(lambda uu: torch.autograd.grad(P.interpolate(real, fake, eps), (real, fake),
                                                                       uu, create_graph=True), (u,))


def test_interpolate_empty_batch(impl):
    _, device = impl
    real, fake = torch.randn(0, 3, device=device), torch.randn(0, 3, device=device)
    out = P.interpolate(real, fake, torch.rand(0, device=device))
    assert out.shape == (0, 3)


# ---- penalty_from_grad -------------------------------------------------------------------------


@pytest.mark.parametrize("kind,center", [("wgan-gp", 1.0), ("wgan-gp", 0.5), ("one-sided", 1.0), ("r1", 1.0),
                                         ("r2", 1.0)])
@pytest.mark.parametrize("shape", [(1, 3, 4, 4), (3, 5, 7), (5,)], ids=str)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_penalty_matches_formula(impl, dtype, shape, kind, center, rng):
    _, device = impl
    g = _away_from_kinks(randn(shape, dtype, device, rng, scale=0.5), kind, center).requires_grad_(True)
    penalty, norms = ops.penalty_from_grad(g, kind, center)
    assert penalty.shape == () and penalty.dtype == dtype
    assert norms.shape == (shape[0],) and norms.dtype == compute_dtype(dtype)
    assert not norms.requires_grad
    g64 = _f64(g)
    p64 = penalty_formula(g64, kind, center)
    assert_close(penalty, p64.to(dtype), name=f"{kind} penalty")
    assert_close(norms, g64.detach().reshape(shape[0], -1).norm(dim=1).to(norms.dtype), name="norms")
    assert_close(P.penalty_from_grad(g, kind, center), p64.to(dtype), name="ganfast.penalty.penalty_from_grad")
    # first derivative with a random upstream value, second via a random direction
    up = randn((), dtype, device, rng, requires_grad=True)
    (d1,) = torch.autograd.grad(penalty, g, up, create_graph=True)
    up64 = _f64(up)
    (d1_64,) = torch.autograd.grad(p64, g64, up64, create_graph=True)
    assert_close(d1, d1_64.to(dtype), name=f"{kind} d/d grad")
    v = randn(shape, dtype, device, rng)
    d2 = torch.autograd.grad((d1 * v).sum(), (g, up))
    d2_64 = torch.autograd.grad((d1_64 * v.double()).sum(), (g64, up64))
    atol = 1e-5 if dtype == torch.float32 else None
    assert_close(d2[0], d2_64[0].to(dtype), atol=atol, name=f"{kind} second derivative w.r.t. grad")
    assert_close(d2[1], d2_64[1].to(dtype), atol=atol, name=f"{kind} second derivative w.r.t. grad_output")


@pytest.mark.parametrize("kind", KINDS)
def test_penalty_gradcheck_gradgradcheck(impl, kind, rng):
    name, device = impl
    fast = name == "triton" and device == "cpu"  # the interpreter: random projections, fewer launches
    g = _away_from_kinks(randn((3, 2, 2), torch.float64, device, rng, scale=0.6), kind, 1.0).requires_grad_(True)
    fn = lambda t: ops.penalty_from_grad(t, kind, 1.0)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (g,), fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, (g,), fast_mode=fast)  # w.r.t. grad and the upstream gradient


@pytest.mark.parametrize("kind", KINDS)
def test_penalty_third_derivative_right_or_error(impl, kind, rng):
    """Third order: either torch's third derivative of the formula, or a clear RuntimeError."""
    name, device = impl
    g = _away_from_kinks(randn((2, 3), torch.float64, device, rng, scale=0.7), kind, 1.0).requires_grad_(True)
    v, w = randn((2, 3), torch.float64, device, rng), randn((2, 3), torch.float64, device, rng)

    def third(fn, t):
        (d1,) = torch.autograd.grad(fn(t), t, create_graph=True)
        (d2,) = torch.autograd.grad((d1 * v).sum(), t, create_graph=True)
        if not d2.requires_grad:  # r1 / r2: the second derivative 2v is constant
            return torch.zeros_like(t)
        (d3,) = torch.autograd.grad((d2 * w).sum(), t, allow_unused=True)
        return torch.zeros_like(t) if d3 is None else d3

    g64 = g.detach().clone().requires_grad_(True)
    expected = third(lambda t: penalty_formula(t, kind), g64)
    try:
        got = third(lambda t: ops.penalty_from_grad(t, kind, 1.0)[0], g)
    except RuntimeError as exc:
        assert name != "reference", f"the reference must have every derivative: {exc}"
        msg = str(exc)
        assert ("penalty_from_grad_double_backward" in msg or "not implemented" in msg.lower()
                or "derivative" in msg.lower()), f"unclear third-order error: {msg}"
        return
    assert_close(got, expected, name=f"{kind} third derivative")


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced", "expanded"])
@pytest.mark.parametrize("kind", ["wgan-gp", "r1"])
def test_penalty_layouts(impl, kind, layout, rng):
    name, device = impl
    base = randn((3, 4, 5, 6), torch.float64, device, rng, scale=0.3)
    if layout == "channels_last":
        g = base.to(memory_format=torch.channels_last)
    elif layout == "transposed":
        g = base.transpose(1, 3)
    elif layout == "sliced":
        g = randn((3, 4, 10, 6), torch.float64, device, rng, scale=0.3)[:, :, ::2]
    else:
        g = randn((3, 1, 5, 6), torch.float64, device, rng, scale=0.3).expand(3, 4, 5, 6)
    g = g.requires_grad_(True) if g.is_leaf else g.detach().requires_grad_(True)
    penalty, norms = ops.penalty_from_grad(g, kind, 1.0)
    g64 = g.detach().contiguous().requires_grad_(True)
    p64 = penalty_formula(g64, kind)
    assert_close(penalty, p64, name=f"{layout} penalty")
    (d1,) = torch.autograd.grad(penalty, g, create_graph=True)
    (d1_64,) = torch.autograd.grad(p64, g64, create_graph=True)
    assert_close(d1, d1_64, name=f"{layout} gradient")
    v = randn(g.shape, torch.float64, device, rng).to(memory_format=torch.channels_last)
    (d2,) = torch.autograd.grad((d1 * v).sum(), g)
    (d2_64,) = torch.autograd.grad((d1_64 * v).sum(), g64)
    assert_close(d2, d2_64, name=f"{layout} second derivative")
    if layout == "channels_last" and name != "reference":
        assert d1.is_contiguous(memory_format=torch.channels_last), "the backward must keep channels_last"


def test_penalty_broadcast_grad_grad(impl, rng):
    """The double backward's upstream gradient may be an expanded tensor (as from .sum())."""
    _, device = impl
    g = randn((3, 4), torch.float64, device, rng, requires_grad=True)
    (d1,) = torch.autograd.grad(ops.penalty_from_grad(g, "wgan-gp", 1.0)[0], g, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), g)
    g64 = g.detach().requires_grad_(True)
    (e1,) = torch.autograd.grad(penalty_formula(g64, "wgan-gp"), g64, create_graph=True)
    (e2,) = torch.autograd.grad(e1.sum(), g64)
    assert_close(d2, e2, name="second derivative with an expanded upstream")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_penalty_empty_batch_is_nan(impl, kind, dtype):
    _, device = impl
    g = torch.zeros(0, 3, 2, dtype=dtype, device=device, requires_grad=True)
    penalty, norms = ops.penalty_from_grad(g, kind, 1.0)
    assert penalty.shape == () and penalty.dtype == dtype and torch.isnan(penalty).item()
    assert norms.shape == (0,) and norms.dtype == compute_dtype(dtype)
    (d,) = torch.autograd.grad(penalty, g)
    assert d.shape == (0, 3, 2)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_penalty_zero_norm_samples(impl, kind, dtype, rng):
    """A sample whose gradient is 0: norm 0, first and second derivative 0 there (torch's norm)."""
    _, device = impl
    g = randn((3, 5), dtype, device, rng)
    g[1] = 0
    g.requires_grad_(True)
    penalty, norms = ops.penalty_from_grad(g, kind, 1.0)
    assert norms[1].item() == 0.0
    g64 = _f64(g)
    p64 = penalty_formula(g64, kind)
    assert_close(penalty, p64.to(dtype), name="penalty with a zero sample")
    (d1,) = torch.autograd.grad(penalty, g, create_graph=True)
    (d1_64,) = torch.autograd.grad(p64, g64, create_graph=True)
    assert torch.isfinite(d1).all(), f"non-finite gradient at a zero-norm sample: {d1}"
    assert (d1[1] == 0).all(), "the gradient at a zero-norm sample must be 0 (torch's norm subgradient)"
    assert_close(d1, d1_64.to(dtype), name="gradient with a zero sample")
    v = randn((3, 5), dtype, device, rng)
    (d2,) = torch.autograd.grad((d1 * v).sum(), g)
    assert torch.isfinite(d2).all(), f"non-finite second derivative at a zero-norm sample: {d2}"
    assert (d2[1] == 0).all() or kind in ("r1", "r2"), "second derivative at a zero-norm sample"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_penalty_half_precision(impl, dtype, rng):
    _, device = impl
    g = randn((4, 3, 8), dtype, device, rng, scale=0.2, requires_grad=True)
    penalty, norms = ops.penalty_from_grad(g, "wgan-gp", 1.0)
    assert penalty.dtype == dtype and norms.dtype == torch.float32
    g64 = _f64(g)
    p64 = penalty_formula(g64, "wgan-gp")
    assert_close(norms, g64.detach().reshape(4, -1).norm(dim=1).float(), atol=1e-5, rtol=1e-5, name="half norms")
    assert_close(penalty, p64.to(dtype), name="half penalty")
    (d,) = torch.autograd.grad(penalty, g)
    (d64,) = torch.autograd.grad(p64, g64)
    assert d.dtype == dtype
    assert_close(d, d64.to(dtype), atol=1e-4, name="half gradient")


def test_penalty_float32_many_elements(impl, rng):
    """A sample larger than one block: the per-sample sum crosses blocks / threads."""
    _, device = impl
    g = randn((3, 70000), torch.float32, device, rng, scale=0.01, requires_grad=True)
    penalty, norms = ops.penalty_from_grad(g, "wgan-gp", 1.0)
    n64 = g.detach().double().norm(dim=1)
    assert_close(norms, n64.float(), atol=1e-6, rtol=1e-5, name="norms of long samples")
    assert_close(penalty, ((n64 - 1) ** 2).mean().float(), name="penalty of long samples")


def test_penalty_deterministic(impl, rng):
    _, device = impl
    g = randn((5, 3000), torch.float32, device, rng)
    a = ops.penalty_from_grad(g, "wgan-gp", 1.0)
    b = ops.penalty_from_grad(g, "wgan-gp", 1.0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), "penalty_from_grad must be deterministic"


# ---- gradient_penalty: whole discriminator steps against eager PyTorch -------------------------


class SmallD(nn.Module):
    """A DCGAN-style discriminator: strided convs, LeakyReLU(0.2), a linear head."""

    def __init__(self, channels, size, act_cls, squeeze=True, n_classes=0):
        super().__init__()
        self.c1 = nn.Conv2d(channels, 4, 3, stride=2, padding=1)
        self.a1 = act_cls(0.2)
        self.c2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.a2 = act_cls(0.2)
        s = (size + 1) // 2
        s = (s + 1) // 2
        self.head = nn.Linear(6 * s * s, 1)
        self.embed = nn.Embedding(n_classes, 6 * s * s) if n_classes else None
        self.squeeze = squeeze

    def forward(self, x, labels=None):
        h = self.a2(self.c2(self.a1(self.c1(x)))).flatten(1)
        out = self.head(h)
        if self.embed is not None:
            out = out + (self.embed(labels) * h).sum(dim=1, keepdim=True)
        return out.squeeze(1) if self.squeeze else out


def make_discriminators(seed, channels, size, **kw):
    torch.manual_seed(seed)
    d_eager = SmallD(channels, size, nn.LeakyReLU, **kw).double()
    d_fast = copy.deepcopy(d_eager)
    d_fast.a1, d_fast.a2 = ganfast.nn.LeakyReLU(0.2), ganfast.nn.LeakyReLU(0.2)
    return d_eager, d_fast


def eager_gp(D, x, kind, weight, center=1.0):
    x = x.detach().requires_grad_(True)
    out = D(x)
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    n = g.flatten(1).norm(dim=1)
    if kind == "wgan-gp":
        p = ((n - center) ** 2).mean()
    elif kind == "one-sided":
        p = (F.relu(n - center) ** 2).mean()
    else:
        p = g.pow(2).flatten(1).sum(1).mean()
    return weight * p


def compare_steps(d_eager, d_fast, loss_eager, loss_fast, what):
    assert_close(loss_fast, loss_eager, name=f"{what}: loss")
    pe, pf = list(d_eager.parameters()), list(d_fast.parameters())
    ge = torch.autograd.grad(loss_eager, pe, allow_unused=True, materialize_grads=True)
    gf = torch.autograd.grad(loss_fast, pf, allow_unused=True, materialize_grads=True)
    for (pname, _), a, b in zip(d_eager.named_parameters(), gf, ge):
        assert_close(a, b, atol=1e-9, rtol=1e-8, name=f"{what}: gradient of {pname}")


@pytest.mark.parametrize("kind,seed,batch,channels,size,squeeze", [
    ("wgan-gp", 0, 4, 3, 8, True), ("wgan-gp", 1, 1, 2, 5, False), ("wgan-gp", 2, 3, 1, 7, True),
    ("one-sided", 3, 2, 2, 6, False)])
def test_wgan_gp_discriminator_step(gp_impl, kind, seed, batch, channels, size, squeeze):
    _, device = gp_impl
    d_eager, d_fast = make_discriminators(seed, channels, size, squeeze=squeeze)
    gen = torch.Generator().manual_seed(seed + 100)
    real = randn((batch, channels, size, size), torch.float64, gen=gen)
    fake = randn((batch, channels, size, size), torch.float64, gen=gen)
    eps = torch.rand(batch, generator=gen, dtype=torch.float64)
    loss_fast = (L.discriminator_loss(d_fast(real), d_fast(fake), kind="wasserstein")
                 + P.gradient_penalty(d_fast, real, fake, kind=kind, weight=10.0, eps=eps))
    x_hat = eps.view(-1, 1, 1, 1) * real + (1 - eps.view(-1, 1, 1, 1)) * fake
    loss_eager = d_eager(fake).mean() - d_eager(real).mean() + eager_gp(d_eager, x_hat, kind, 10.0)
    compare_steps(d_eager, d_fast, loss_eager, loss_fast, f"{kind} step")


@pytest.mark.parametrize("kind", ["r1", "r2"])
@pytest.mark.parametrize("seed,batch,size", [(3, 4, 8), (4, 2, 6)])
def test_r1_r2_discriminator_step(gp_impl, kind, seed, batch, size):
    _, device = gp_impl
    d_eager, d_fast = make_discriminators(seed, 3, size)
    gen = torch.Generator().manual_seed(seed)
    real = randn((batch, 3, size, size), torch.float64, gen=gen)
    fake = randn((batch, 3, size, size), torch.float64, gen=gen)
    gamma = 5.0
    loss_fast = (L.discriminator_loss(d_fast(real), d_fast(fake), kind="nonsaturating")
                 + P.gradient_penalty(d_fast, real, fake, kind=kind, weight=gamma / 2))
    loss_eager = (F.softplus(-d_eager(real)).mean() + F.softplus(d_eager(fake)).mean()
                  + eager_gp(d_eager, real if kind == "r1" else fake, kind, gamma / 2))
    compare_steps(d_eager, d_fast, loss_eager, loss_fast, f"{kind} step")
    if kind == "r1":  # fake is not needed
        assert_close(P.gradient_penalty(d_fast, real, kind="r1", weight=1.0).detach(),
                     eager_gp(d_eager, real, "r1", 1.0).detach(), name="r1 without fake")


def test_gradient_penalty_lambda_closing_over_labels(gp_impl):
    d_eager, d_fast = make_discriminators(5, 2, 6, n_classes=3)
    gen = torch.Generator().manual_seed(5)
    real, fake = randn((4, 2, 6, 6), torch.float64, gen=gen), randn((4, 2, 6, 6), torch.float64, gen=gen)
    labels = torch.tensor([0, 2, 1, 2])
    eps = torch.rand(4, generator=gen, dtype=torch.float64)
    loss_fast = P.gradient_penalty(lambda x: d_fast(x, labels), real, fake, eps=eps)
    x_hat = interp_formula(real, fake, eps)
    loss_eager = eager_gp(lambda x: d_eager(x, labels), x_hat, "wgan-gp", 10.0)
    compare_steps(d_eager, d_fast, loss_eager, loss_fast, "conditional D")


def test_gradient_penalty_channels_last(gp_impl):
    d_eager, d_fast = make_discriminators(6, 3, 8)
    d_fast = d_fast.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(6)
    real = randn((3, 3, 8, 8), torch.float64, gen=gen).to(memory_format=torch.channels_last)
    fake = randn((3, 3, 8, 8), torch.float64, gen=gen).to(memory_format=torch.channels_last)
    eps = torch.rand(3, generator=gen, dtype=torch.float64)
    loss_fast = P.gradient_penalty(d_fast, real, fake, eps=eps, weight=10.0)
    loss_eager = eager_gp(d_eager, interp_formula(real, fake, eps).contiguous(), "wgan-gp", 10.0)
    compare_steps(d_eager, d_fast, loss_eager, loss_fast, "channels_last")


def test_gradient_penalty_detaches_inputs(gp_impl):
    """real and fake are detached: only D's parameters receive the penalty's gradient."""
    _, d_fast = make_discriminators(7, 2, 4)
    real = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    fake = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    P.gradient_penalty(d_fast, real, fake).backward()
    assert real.grad is None and fake.grad is None
    assert all(p.grad is not None for p in d_fast.parameters() if p.dim() > 1), "D's weights get the penalty's gradient"


# ---- opcheck -----------------------------------------------------------------------------------


def _penalty_op_args(rng):
    g = randn((3, 2, 4), torch.float64, gen=rng)
    real, fake = randn((3, 2, 4), torch.float64, gen=rng), randn((3, 2, 4), torch.float64, gen=rng)
    eps = torch.rand(3, generator=rng, dtype=torch.float64)
    norms = g.reshape(3, -1).norm(dim=1)
    go = torch.tensor(0.7, dtype=torch.float64)
    gg = randn((3, 2, 4), torch.float64, gen=rng)
    rg = lambda t: t.clone().requires_grad_(True)  # noqa: E731
    return [
        ("interpolate", (rg(real), rg(fake), eps)),
        ("interpolate_backward", (rg(g), eps)),
        ("penalty_from_grad", (rg(g), "wgan-gp", 1.0)),
        ("penalty_from_grad", (rg(g), "r1", 1.0)),
        ("penalty_from_grad_backward", (rg(go), rg(g), norms, "one-sided", 0.5)),
        ("penalty_from_grad_double_backward", (gg, go, g, norms, "wgan-gp", 1.0)),
    ]


OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


@pytest.mark.parametrize("index", range(6))
def test_opcheck_cpp_ops(index, rng):
    if not cpp_family_registered("penalty", "CPU"):
        pytest.skip("ganfast::penalty_from_grad has no CPU kernel in this build")
    name, args = _penalty_op_args(rng)[index]
    torch.library.opcheck(getattr(torch.ops.ganfast, name).default, args, test_utils=OPCHECK_TESTS)


@pytest.mark.parametrize("index", range(6))
def test_opcheck_triton_ops(index, rng):
    from conftest import implementation_device
    implementation_device("triton", "penalty")
    name, args = _penalty_op_args(rng)[index]
    with ganfast.use_backend("triton"):
        torch.library.opcheck(getattr(torch.ops.ganfast_triton, name).default, args, test_utils=OPCHECK_TESTS)


# ---- errors ------------------------------------------------------------------------------------


def test_error_grad_without_batch_dim(impl):
    _, device = impl
    with pytest.raises(ValueError, match="grad must have a batch dimension"):
        ops.penalty_from_grad(torch.tensor(1.0, device=device), "wgan-gp", 1.0)


def test_error_integer_tensors(impl):
    _, device = impl
    with pytest.raises(TypeError, match="grad must be a floating-point tensor"):
        ops.penalty_from_grad(torch.ones(2, 3, dtype=torch.int64, device=device), "wgan-gp", 1.0)
    ints = torch.ones(2, 3, dtype=torch.int32, device=device)
    with pytest.raises(TypeError, match="real"):
        P.interpolate(ints, ints.float())
    with pytest.raises(TypeError, match="real"):
        ops.interpolate(ints, ints.float(), torch.rand(2, device=device))
    with pytest.raises(TypeError, match="fake"):
        ops.interpolate(ints.float(), ints, torch.rand(2, device=device))


def test_error_real_fake_shapes(impl):
    _, device = impl
    a, b = torch.randn(2, 3, device=device), torch.randn(2, 4, device=device)
    with pytest.raises(ValueError, match="real and fake must have the same shape"):
        P.interpolate(a, b)
    with pytest.raises(ValueError, match="real and fake must have the same shape"):
        ops.interpolate(a, b, torch.rand(2, device=device))
    with pytest.raises(ValueError, match="real and fake must have the same shape"):
        P.gradient_penalty(lambda x: x.sum(1), a, b)
    with pytest.raises(ValueError, match="eps must have shape"):
        ops.interpolate(a, a, torch.rand(3, device=device))
    with pytest.raises(TypeError, match="same dtype"):
        ops.interpolate(a, a.double(), torch.rand(2, device=device))


def test_error_unknown_kind(impl):
    _, device = impl
    g = torch.randn(2, 3, device=device)
    with pytest.raises(ValueError, match="kind must be one of"):
        ops.penalty_from_grad(g, "wgan", 1.0)
    with pytest.raises(ValueError, match="kind must be one of"):
        P.penalty_from_grad(g, "r3")
    with pytest.raises(ValueError, match="kind must be one of"):
        P.gradient_penalty(lambda x: x.sum(1), g, g, kind="gp")


def test_error_discriminator_output(gp_impl):
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="does not depend on its input"):
        P.gradient_penalty(lambda t: torch.zeros(3), x, x)
    w = torch.randn(4, requires_grad=True)
    with pytest.raises(ValueError, match="does not depend on its input"):
        P.gradient_penalty(lambda t: torch.ones(3) * w.sum(), x, x, kind="r1")
    with pytest.raises(ValueError, match=r"shape \(B,\) or \(B, 1\)"):
        P.gradient_penalty(lambda t: t, x, x)
    with pytest.raises(TypeError, match="must return a tensor"):
        P.gradient_penalty(lambda t: 1.0, x, x)
    with pytest.raises(ValueError, match="needs fake samples"):
        P.gradient_penalty(lambda t: t.sum(1), x, kind="wgan-gp")
    with pytest.raises(ValueError, match="batch dimension"):
        P.gradient_penalty(lambda t: t, torch.tensor(1.0), torch.tensor(1.0))


@pytest.mark.parametrize("shape", [(2, 2048), (600, 4)], ids=["split-samples", "sample-groups"])
def test_triton_penalty_reduce_counter_reset(shape, rng):
    """The reduction's ticket counter is a cached buffer the last program resets: two calls in a
    row (the second on the same counter) both right, the counter 0 after each, for both final sums
    (samples split over programs; groups of samples per program)."""
    from conftest import implementation_device
    from ganfast.triton import _common
    from ganfast.triton import penalty as triton_penalty

    device = torch.device(implementation_device("triton", "penalty"))
    rb, cb, iters, splits, pk, programs = triton_penalty.reduce_partition(*shape)
    assert programs > 1 and (splits > 1) == (shape[1] >= 1024)
    g = randn(shape, torch.float64, device, rng)
    for _ in range(2):
        penalty, norms = triton_penalty.penalty_from_grad(g, "wgan-gp", 1.0)
        assert_close(penalty, penalty_formula(g, "wgan-gp"), name="penalty")
        assert_close(norms, g.norm(dim=1), name="norms")
        assert not _common.counters(device).any(), "ticket counter not reset"
