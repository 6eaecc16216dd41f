"""The spectral_norm op family and ganfast.nn.spectral_norm, every implementation present (reference,
cpu, triton, cuda, the emulated CUDA kernels).

The oracle is torch's own parametrization (torch.nn.utils.parametrizations.spectral_norm) in float64:
the op's output, the u and v it leaves in place and its gradient (random upstream gradient) against
the same steps written here with torch.mv / F.normalize, over odd shapes, every `dim`, training and
eval, several power steps; lower precisions; gradcheck; opcheck; one op per pass; the double-backward
error; every bad input's error. Then the module: the same state_dict keys and, with the same seed, the
same u and v as torch's; state_dicts loaded both ways and training continued with Adam, compared step
by step; ConvTranspose (dim 1), 1-D weights, eval; the R1 penalty on a spectrally normalised critic
(first order through the normalisation) against torch's gradients. Shapes are small.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import ganfast
from conftest import assert_close, family_fixtures, implementation_device, randn
from ganfast import ops
from ganfast.ops.spectral_norm import spectral_norm_with_cache

impl, kernel_impl = family_fixtures("spectral_norm")


def torch_steps(weight, u, v, dim, n, eps, training):
    """torch's _SpectralNorm.forward, written out (u, v updated in place): (out, sigma, u used, v used)."""
    W = weight.movedim(dim, 0).flatten(1)
    if training:
        with torch.no_grad():
            for _ in range(n):
                u.copy_(F.normalize(torch.mv(W, v), dim=0, eps=eps))
                v.copy_(F.normalize(torch.mv(W.t(), u), dim=0, eps=eps))
    uc, vc = u.clone(), v.clone()
    sigma = torch.dot(uc, torch.mv(W, vc))
    return weight / sigma, sigma, uc, vc


def unit(n, dtype, device, gen):
    return F.normalize(randn((n,), torch.float64, gen=gen), dim=0).to(dtype=dtype, device=device)


# (weight shape, dim): conv (out, in, k, k) with dim 0, ConvTranspose (in, out, k, k) with dim 1, the
# last dim, odd sizes, a single row / column, more rows than columns, rows longer than one tile
CASES = {
    "linear": ((7, 5), 0),
    "conv3x3": ((6, 3, 3, 3), 0),
    "conv-transpose": ((4, 5, 3, 2), 1),
    "last-dim": ((3, 4, 5), 2),
    "negative-dim": ((3, 4, 5), -2),
    "one-row": ((1, 9), 0),
    "one-column": ((9, 1), 0),
    "tall": ((37, 3), 0),
    "wide-rows": ((5, 300), 0),
    "many-rows": ((70, 33), 0),
}


def check_against_torch(weight, dim, n, training, gen, name, eps=1e-12):
    dtype, device = weight.dtype, weight.device
    nd = weight.dim()
    d = dim + nd if dim < 0 else dim
    h = weight.shape[d]
    u0, v0 = unit(h, dtype, device, gen), unit(weight.numel() // h, dtype, device, gen)
    u, v = u0.clone(), v0.clone()
    out, cache = spectral_norm_with_cache(weight, u, v, dim, n, eps, training)
    assert out.shape == weight.shape and out.dtype == dtype
    assert cache.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    up = randn(out.shape, dtype, device, gen)
    (grad,) = torch.autograd.grad(out, weight, up)
    w64 = weight.detach().double().requires_grad_()
    u64, v64 = u0.double(), v0.double()
    out64, sigma64, uc64, vc64 = torch_steps(w64, u64, v64, d, n, eps, training)
    (grad64,) = torch.autograd.grad(out64, w64, up.double())
    assert_close(out, out64, name=f"{name}: out")
    assert_close(u, u64, name=f"{name}: u updated in place")
    assert_close(v, v64, name=f"{name}: v updated in place")
    assert_close(cache, torch.cat([sigma64.reshape(1), uc64, vc64]), check_dtype=False, name=f"{name}: cache")
    assert_close(grad, grad64, name=f"{name}: gradient")
    if not training:
        assert torch.equal(u, u0) and torch.equal(v, v0), "eval must not touch u and v"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_matches_torch_float64(impl, case, training, rng):
    _, device = impl
    shape, dim = CASES[case]
    w = randn(shape, torch.float64, device, rng, requires_grad=True)
    check_against_torch(w, dim, 1, training, rng, case)


@pytest.mark.parametrize("n", [2, 5])
def test_several_power_steps(impl, n, rng):
    _, device = impl
    w = randn((6, 4, 3), torch.float64, device, rng, requires_grad=True)
    check_against_torch(w, 1, n, True, rng, f"n={n}")


def test_large_eps_clamps_the_norms(impl, rng):
    """eps above ||W v||: normalize divides by eps, sigma = ||t||^2 / eps, as torch."""
    _, device = impl
    w = randn((5, 4), torch.float64, device, rng, scale=1e-3, requires_grad=True)
    check_against_torch(w, 0, 2, True, rng, "eps", eps=0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_lower_precisions(impl, dtype, rng):
    """float32 and half precision (accumulated in float32), against float64 with the dtype's tolerance;
    u and v are stored in their dtype, so the comparison of the steps that follow is loose."""
    _, device = impl
    w = randn((8, 3, 3, 3), dtype, device, rng, requires_grad=True)
    u0, v0 = unit(8, dtype, device, rng), unit(27, dtype, device, rng)
    u, v = u0.clone(), v0.clone()
    out = ops.spectral_norm(w, u, v, 0, 1, 1e-12, True)
    up = randn(out.shape, dtype, device, rng)
    (grad,) = torch.autograd.grad(out, w, up)
    w64 = w.detach().double().requires_grad_()
    out64, *_ = torch_steps(w64, u0.double(), v0.double(), 0, 1, 1e-12, True)
    (grad64,) = torch.autograd.grad(out64, w64, up.double())
    tol = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 5e-2}[dtype]
    assert out.dtype == dtype and grad.dtype == dtype and u.dtype == dtype
    scale = out64.abs().max().item()
    assert_close(out, out64, atol=tol * scale, rtol=tol, check_dtype=False, name=f"{dtype}: out")
    assert_close(grad, grad64, atol=tol * grad64.abs().max().item(), rtol=tol, check_dtype=False,
                 name=f"{dtype}: gradient")


def test_noncontiguous_weight(impl, rng):
    _, device = impl
    w = randn((5, 7), torch.float64, device, rng).t().requires_grad_()  # (7, 5), strides (1, 7)
    check_against_torch(w, 0, 1, True, rng, "transposed weight")


def test_gradcheck(impl, rng):
    """gradcheck in eval (u, v fixed: in training they would move with every evaluation, and torch's
    derivative, like ours, holds them constant)."""
    _, device = impl
    for shape, dim in (((4, 3, 2), 0), ((3, 4, 2), 1)):
        w = randn(shape, torch.float64, device, rng, requires_grad=True)
        u, v = unit(shape[dim], torch.float64, device, rng), unit(w.numel() // shape[dim], torch.float64, device, rng)
        fn = lambda w: ops.spectral_norm(w, u, v, dim, 1, 1e-12, False)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (w,), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_reference_gradgradcheck(rng):
    """The reference is differentiable to every order (it is the fallback elsewhere)."""
    w = randn((4, 3), torch.float64, gen=rng, requires_grad=True)
    u, v = unit(4, torch.float64, "cpu", rng), unit(3, torch.float64, "cpu", rng)
    with ganfast.use_backend("reference"):
        assert torch.autograd.gradgradcheck(lambda w: ops.spectral_norm(w, u, v, 0, 1, 1e-12, False), (w,))


def test_second_derivative_raises_naming_the_op(kernel_impl, rng):
    _, device = kernel_impl
    w = randn((4, 3), torch.float64, device, rng, requires_grad=True)
    u, v = unit(4, torch.float64, device, rng), unit(3, torch.float64, device, rng)
    out = ops.spectral_norm(w, u, v, 0, 1, 1e-12, True)
    (g,) = torch.autograd.grad((out * out).sum(), w, create_graph=True)
    with pytest.raises(RuntimeError, match=r"spectral_norm_backward.*not implemented"):
        second = torch.autograd.grad((g * g).sum(), w)
        pytest.fail(f"double backward returned {second}")  # pragma: no cover


def test_backward_after_a_second_forward_uses_its_own_u_v(impl, rng):
    """D(real) then D(fake) in training: the second forward moves u and v; the first forward's gradient
    still uses the u, v it was computed with (torch clones them for this)."""
    _, device = impl
    w = randn((6, 5), torch.float64, device, rng, requires_grad=True)
    u, v = unit(6, torch.float64, device, rng), unit(5, torch.float64, device, rng)
    u64, v64 = u.clone(), v.clone()
    up1, up2 = randn((6, 5), torch.float64, device, rng), randn((6, 5), torch.float64, device, rng)
    loss = (ops.spectral_norm(w, u, v, 0, 1, 1e-12, True) * up1).sum()
    loss = loss + (ops.spectral_norm(w, u, v, 0, 1, 1e-12, True) * up2).sum()
    loss.backward()
    w64 = w.detach().clone().requires_grad_()
    ref = (torch_steps(w64, u64, v64, 0, 1, 1e-12, True)[0] * up1).sum()
    ref = ref + (torch_steps(w64, u64, v64, 0, 1, 1e-12, True)[0] * up2).sum()
    ref.backward()
    assert_close(w.grad, w64.grad, name="gradient of two forwards")
    assert_close(u, u64, name="u after two forwards")


# ---- bad inputs --------------------------------------------------------------------------------


def _bad_inputs(device):
    f, d = torch.float32, torch.float64
    w = torch.ones((4, 3), device=device)
    u, v = torch.ones(4, device=device), torch.ones(3, device=device)
    return {
        "1-d-weight": ((torch.ones(4, device=device), u, u.clone(), 0, 1, 1e-12, True), ValueError,
                       r"weight must have at least 2 dimensions"),
        "empty-weight": ((torch.ones((0, 3), device=device), torch.ones(0, device=device), v, 0, 1, 1e-12, True),
                         ValueError, r"weight must have at least one element"),
        "dim-out-of-range": ((w, u, v, 2, 1, 1e-12, True), IndexError,
                             r"Dimension out of range \(expected to be in range of \[-2, 1\] but got 2\)"),
        "zero-iterations": ((w, u, v, 0, 0, 1e-12, True), ValueError,
                            r"Expected n_power_iterations to be positive, but got n_power_iterations=0"),
        "zero-eps": ((w, u, v, 0, 1, 0.0, True), ValueError, r"eps must be positive and finite; got 0"),
        "negative-eps": ((w, u, v, 0, 1, -1.0, True), ValueError, r"eps must be positive and finite; got -1"),
        "u-wrong-size": ((w, torch.ones(3, device=device), v, 0, 1, 1e-12, True), ValueError,
                         r"u must have shape \(4,\); got \[3\]"),
        "v-wrong-size": ((w, u, torch.ones(4, device=device), 0, 1, 1e-12, True), ValueError,
                         r"v must have shape \(3,\); got \[4\]"),
        "u-wrong-dtype": ((w, u.to(d), v, 0, 1, 1e-12, True), TypeError, r"u must have weight's dtype \(Float\); "
                          r"got Double"),
        "v-noncontiguous": ((w, u, torch.ones(6, device=device)[::2], 0, 1, 1e-12, True), ValueError,
                            r"v must be contiguous"),
        "integer-weight": ((w.long(), u, v, 0, 1, 1e-12, True), TypeError,
                           r"weight must be a floating-point tensor; got Long"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs("cpu")))
def test_bad_input_raises_naming_the_argument(impl, case):
    _, device = impl
    args, exc, msg = _bad_inputs(device)[case]
    with pytest.raises(exc, match=r"ganfast::spectral_norm: " + msg):
        ops.spectral_norm(*args)


def test_bad_backward_inputs(kernel_impl):
    name, device = kernel_impl
    ns = torch.ops.ganfast_triton if name == "triton" else torch.ops.ganfast
    w = torch.ones((4, 3), device=device)
    cache = torch.ones(8, device=device)
    with pytest.raises(ValueError, match=r"cache must have shape \(8,\) = \(1 \+ h \+ w,\).*got \[7\]"):
        ns.spectral_norm_backward(w, w, cache[:7], 0)
    with pytest.raises(TypeError, match=r"cache must be Float for Float weight; got Double"):
        ns.spectral_norm_backward(w, w, cache.double(), 0)
    with pytest.raises(ValueError, match=r"grad_output size \(\[3, 4\]\) must be the same as weight size"):
        ns.spectral_norm_backward(w.t().contiguous(), w, cache, 0)


def test_buffers_that_require_grad_are_refused(impl):
    _, device = impl
    w = torch.ones((4, 3), device=device)
    with pytest.raises(RuntimeError, match="u and v are the power method's state"):
        ops.spectral_norm(w, torch.ones(4, device=device, requires_grad=True), torch.ones(3, device=device))


# ---- opcheck and the ops per pass -----------------------------------------------------------------


def _opcheck_args(case, device, gen):
    f64 = torch.float64
    w = randn((5, 3, 2), f64, device, gen)
    u, v = unit(5, f64, device, gen), unit(6, f64, device, gen)
    cache = torch.cat([torch.ones(1, dtype=f64), unit(5, f64, "cpu", gen), unit(6, f64, "cpu", gen)]).to(device)
    return {
        "spectral_norm-train": (w.clone().requires_grad_(), u, v, 0, 2, 1e-12, True),
        "spectral_norm-eval": (w.clone().requires_grad_(), u, v, 0, 1, 1e-12, False),
        "spectral_norm-dim1": (randn((3, 4, 2), f64, device, gen, requires_grad=True), unit(4, f64, device, gen),
                               unit(6, f64, device, gen), 1, 1, 1e-12, True),
        "spectral_norm_backward": (randn((5, 3, 2), f64, device, gen), w, cache, 0),
    }[case]


OPCHECK_CASES = ["spectral_norm-train", "spectral_norm-eval", "spectral_norm-dim1", "spectral_norm_backward"]


@pytest.mark.parametrize("case", OPCHECK_CASES)
@pytest.mark.parametrize("which", ["cpu", "triton", "cuda"])
def test_opcheck(which, case, rng):
    device = implementation_device(which, "spectral_norm")
    namespace = torch.ops.ganfast_triton if which == "triton" else torch.ops.ganfast
    op = getattr(namespace, case.split("-")[0]).default
    args = _opcheck_args(case, device, rng)
    # the mutating triton op has no autograd formula of its own (its autograd.Function carries it)
    tests = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic") if which == "triton" else None
    if which == "triton" and case != "spectral_norm_backward":
        args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    result = torch.library.opcheck(op, args, test_utils=tests) if tests else torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


class OpCounter(TorchDispatchMode):
    """Records the ganfast ops dispatched below autograd."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace in ("ganfast", "ganfast_triton"):
            self.ops.append(func.name())
        return func(*args, **(kwargs or {}))


def test_one_op_forward_one_op_backward(kernel_impl, rng):
    name, device = kernel_impl
    conv = ganfast.nn.spectral_norm(nn.Conv2d(3, 4, 3)).to(device)
    ns = "ganfast_triton" if name == "triton" else "ganfast"
    with OpCounter() as forward:
        w = conv.weight
    with OpCounter() as backward:
        (w * randn(w.shape, torch.float32, device, rng)).sum().backward()
    assert forward.ops == [f"{ns}::spectral_norm"]
    assert backward.ops == [f"{ns}::spectral_norm_backward"]
    assert conv.parametrizations.weight.original.grad is not None


# ---- the module: a drop-in for torch's parametrization -------------------------------------------


def _pair(make, seed=0, **kw):
    """(torch's, ganfast's) spectrally normalised copies of one module, registered from one seed."""
    torch.manual_seed(seed)
    base = make()
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(seed + 1)
    torch.nn.utils.parametrizations.spectral_norm(a, **kw)
    a.next_draw = torch.randn(3)  # where the global RNG stands after the registration
    torch.manual_seed(seed + 1)
    ganfast.nn.spectral_norm(b, **kw)
    b.next_draw = torch.randn(3)
    return a, b


MODULES = {
    "linear": lambda: nn.Linear(7, 5),
    "conv": lambda: nn.Conv2d(3, 6, 3),
    "conv-transpose": lambda: nn.ConvTranspose2d(4, 3, 4, 2, 1),
    "embedding": lambda: nn.Embedding(10, 6),
}


@pytest.mark.parametrize("module", MODULES)
def test_same_keys_and_same_start_as_torch_with_one_seed(module):
    """The same state_dict keys; with the same seed the same u and v (registration draws them from the
    global RNG in torch's order and runs torch's 15 steps; then register_parametrization calls the
    forward once, one training power step, which is the fused op's: equal up to float32 rounding)."""
    a, b = _pair(MODULES[module])
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert {"parametrizations.weight.original", "parametrizations.weight.0._u",
            "parametrizations.weight.0._v"} <= set(sb)
    for k in sa:
        assert_close(sb[k], sa[k], atol=1e-6, rtol=1e-5, name=k)
    assert_close(b.weight, a.weight, name=f"{module}: normalised weight")
    assert torch.equal(a.next_draw, b.next_draw), "the registrations consumed different draws of the RNG"


def test_conv_transpose_defaults_to_dim_1():
    _, b = _pair(MODULES["conv-transpose"])
    assert b.parametrizations.weight[0].dim == 1
    assert b.parametrizations.weight[0]._u.shape == (3,)  # out channels
    assert b.parametrizations.weight[0]._v.shape == (4 * 4 * 4,)


def test_one_d_weight_is_normalized():
    m = nn.Linear(3, 4)
    ganfast.nn.spectral_norm(m, name="bias")
    assert_close(m.bias, F.normalize(m.parametrizations.bias.original, dim=0), name="1-D weight")
    assert not hasattr(m.parametrizations.bias[0], "_u")


def _train_and_compare(a, b, steps, x, name, train=True):
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-2, betas=(0.0, 0.9))
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2, betas=(0.0, 0.9))
    a.train(train)
    b.train(train)
    for step in range(steps):
        for m, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            (m(x) ** 2).mean().backward()
            opt.step()
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
            assert_close(vb, va, atol=2e-5, rtol=2e-5, name=f"{name}: step {step}: {k}")


def _net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.LeakyReLU(0.1), nn.Conv2d(8, 4, 3, stride=2),
                         nn.Flatten(), nn.Linear(4 * 3 * 3, 1))


def _sn_net(sn, seed):
    torch.manual_seed(seed)
    net = _net()
    for m in net:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            sn(m)
    return net


@pytest.mark.parametrize("direction", ["torch-to-ganfast", "ganfast-to-torch"])
def test_state_dict_loads_both_ways_and_training_continues_alike(impl, direction):
    name, device = impl
    if device != "cpu":
        pytest.skip("compared on CPU tensors")
    torch_sn, ours = torch.nn.utils.parametrizations.spectral_norm, ganfast.nn.spectral_norm
    src_sn, dst_sn = (torch_sn, ours) if direction == "torch-to-ganfast" else (ours, torch_sn)
    src = _sn_net(src_sn, 0)
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    _train_and_compare(src, copy.deepcopy(src), 1, x, "warm-up")  # a trained state, u and v moved
    dst = _sn_net(dst_sn, 1)  # other initial values: everything must come from the state_dict
    dst.load_state_dict(src.state_dict())
    if direction == "torch-to-ganfast":
        _train_and_compare(src, dst, 4, x, direction)
    else:
        _train_and_compare(dst, src, 4, x, direction)
    _train_and_compare(src, dst, 1, x, direction + " eval", train=False)


def test_r1_penalty_through_a_spectrally_normalised_critic(impl):
    """R1 needs first order through the normalisation only: grad of D(x) w.r.t. x with create_graph,
    then the penalty's backward into the parameters, equal to torch's parametrization's."""
    name, device = impl
    if device != "cpu":
        pytest.skip("compared on CPU tensors")
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(5), requires_grad=True)
    grads = []
    for sn in (torch.nn.utils.parametrizations.spectral_norm, ganfast.nn.spectral_norm):
        net = _sn_net(sn, 7)
        (g,) = torch.autograd.grad(net(x).sum(), x, create_graph=True)
        penalty = g.pow(2).flatten(1).sum(1).mean()
        penalty.backward()
        grads.append([p.grad for p in net.parameters()])
    assert sum(g is not None for g in grads[1]) >= 3  # every weight at least
    for i, (ga, gb) in enumerate(zip(*grads)):
        assert (ga is None) == (gb is None), i
        if ga is not None:
            assert_close(gb, ga, atol=1e-5, rtol=1e-4, name=f"R1 gradient of parameter {i}")


def test_module_errors():
    with pytest.raises(ValueError, match=r"has no parameter or buffer with name 'kernel'"):
        ganfast.nn.spectral_norm(nn.Linear(3, 4), name="kernel")
    with pytest.raises(ValueError, match=r"Expected n_power_iterations to be positive, but got n_power_iterations=0"):
        ganfast.nn.spectral_norm(nn.Linear(3, 4), n_power_iterations=0)
    with pytest.raises(IndexError, match=r"Dimension out of range \(expected to be in range of \[-2, 1\] but got 2\)"):
        ganfast.nn.spectral_norm(nn.Linear(3, 4), dim=2)
    with pytest.raises(ValueError, match=r"eps must be positive"):
        ganfast.nn.spectral_norm(nn.Linear(3, 4), eps=0.0)
    with pytest.raises(ValueError, match=r"the weight has no elements"):
        ganfast.nn.spectral_norm(nn.Linear(0, 4))
