"""The bias_act op family, every implementation present (reference, cpu, triton, cuda), against
torch's own activations written here independently of ganfast/reference (and against the float64
reference): every activation with and without bias, along dim 1 and another dim, gain, clamp,
alpha; first and second derivatives (gradcheck / gradgradcheck), the third for smooth
activations, every order for the piecewise-linear ones, a clear error past the implemented order;
what the backward saves; ganfast.nn.LeakyReLU / BiasAct; opcheck; errors.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ganfast
from conftest import assert_close, cpp_family_registered, family_fixtures, implementation_device, randn
from ganfast import ops
from ganfast.reference import bias_act as reference

impl, kernel_impl = family_fixtures("bias_act")

ACTS = ("linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish")
SMOOTH = ("tanh", "sigmoid", "elu", "selu", "softplus", "swish")
PIECEWISE = ("linear", "relu", "lrelu")
ALPHA = {"lrelu": 0.2, "elu": 1.0}


def torch_act(act, v, alpha):
    """torch's activation, written from torch.nn.functional."""
    return {
        "linear": lambda: v,
        "relu": lambda: F.relu(v),
        "lrelu": lambda: F.leaky_relu(v, alpha),
        "tanh": lambda: torch.tanh(v),
        "sigmoid": lambda: torch.sigmoid(v),
        "elu": lambda: F.elu(v, alpha),
        "selu": lambda: F.selu(v),
        "softplus": lambda: F.softplus(v, beta=1.0, threshold=1000.0),
        "swish": lambda: F.silu(v),
    }[act]()


def formula(x, b, dim, act, alpha, gain, clamp):
    v = x if b is None else x + b.reshape([-1 if d == dim % x.dim() else 1 for d in range(x.dim())])
    y = torch_act(act, v, alpha) * gain
    return y.clamp(-clamp, clamp) if clamp is not None and clamp >= 0 else y


def _f64(t):
    return None if t is None else t.detach().to(torch.float64).requires_grad_(t.requires_grad)


# (shape, dim, with bias, gain, clamp, alpha-or-None)
CASES = [
    ((3, 4, 5), 1, True, 1.0, None, None),
    ((3, 4, 5), 1, False, 1.0, None, None),
    ((2, 3, 4, 5), -1, True, 1.7, None, None),
    ((6, 7), 0, True, 1.0, 0.4, None),
    ((2, 5, 3, 3), 1, True, math.sqrt(2), 0.5, 0.05),
    ((1000,), 0, True, 0.5, None, None),
]
CASE_IDS = ["dim1-bias", "dim1-nobias", "dimlast-gain", "dim0-clamp", "4d-gain-clamp-alpha", "1d-long"]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_bias_act_matches_torch(impl, dtype, act, case, rng):
    _, device = impl
    shape, dim, with_b, gain, clamp, alpha = case
    alpha = ALPHA.get(act, 0.0) if alpha is None else alpha
    x = randn(shape, dtype, device, rng, scale=2.0, requires_grad=True)
    b = randn((shape[dim],), dtype, device, rng, requires_grad=True) if with_b else None
    y = ops.bias_act(x, b, dim, act, alpha, gain, clamp)
    assert y.dtype == dtype and y.shape == x.shape
    up = randn(shape, dtype, device, rng)
    inputs = [t for t in (x, b) if t is not None]
    grads = torch.autograd.grad(y, inputs, up)
    x64, b64 = _f64(x), _f64(b)
    y64 = formula(x64, b64, dim, act, alpha, gain, clamp)
    inputs64 = [t for t in (x64, b64) if t is not None]
    grads64 = torch.autograd.grad(y64, inputs64, up.double())
    assert_close(y, y64.to(dtype), name=f"{act}: value")
    ref = reference.bias_act(x64, b64, dim, act, alpha, gain, -1.0 if clamp is None else clamp)
    assert_close(y, ref.to(dtype), name=f"{act}: value vs reference")
    for name, g, g64 in zip(("x", "b"), grads, grads64):
        atol = 2e-5 if dtype == torch.float32 and name == "b" else None
        assert_close(g, g64.to(dtype), atol=atol, name=f"{act}: gradient w.r.t. {name}")


@pytest.mark.parametrize("act", ACTS)
def test_bias_act_defaults(impl, act, rng):
    """alpha, gain, clamp None: lrelu 0.2, elu 1.0; gain sqrt(2) for relu, lrelu, swish."""
    _, device = impl
    x = randn((3, 4), torch.float64, device, rng)
    gain = math.sqrt(2) if act in ("relu", "lrelu", "swish") else 1.0
    assert_close(ops.bias_act(x, act=act), formula(x, None, 1, act, ALPHA.get(act, 0.0), gain, None),
                 name=f"{act} defaults")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("act", ["lrelu", "swish"])
def test_bias_act_half(impl, act, dtype, rng):
    _, device = impl
    x = randn((4, 8, 3), dtype, device, rng, requires_grad=True)
    b = randn((8,), dtype, device, rng, requires_grad=True)
    y = ops.bias_act(x, b, 1, act, 0.2, 1.0, None)
    assert y.dtype == dtype
    y64 = formula(_f64(x), _f64(b), 1, act, 0.2, 1.0, None)
    assert_close(y, y64.to(dtype), name="half value")
    gx, gb = torch.autograd.grad(y, (x, b), torch.ones_like(y))
    assert gx.dtype == dtype and gb.dtype == dtype


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "empty"])
def test_bias_act_layouts(impl, layout, rng):
    name, device = impl
    if layout == "empty":
        x = torch.randn(0, 3, 2, device=device, requires_grad=True)
    else:
        x = randn((2, 3, 4, 5), torch.float64, device, rng)
        x = x.to(memory_format=torch.channels_last) if layout == "channels_last" else x.transpose(2, 3)
        x.requires_grad_(True)
    b = randn((3,), torch.float64 if layout != "empty" else torch.float32, device, rng, requires_grad=True)
    for act in ("lrelu", "swish"):
        y = ops.bias_act(x, b, 1, act, 0.2, 1.0, None)
        assert_close(y, formula(x, b, 1, act, 0.2, 1.0, None), name=f"{layout} {act}")
        if layout == "channels_last" and name != "reference":
            assert y.is_contiguous(memory_format=torch.channels_last), "bias_act must keep channels_last"
        up = torch.ones_like(y) if layout == "empty" else randn(y.shape, y.dtype, device, rng).transpose(0, 1).contiguous().transpose(0, 1)
        gx, gb = torch.autograd.grad(y, (x, b), up)
        x64, b64 = _f64(x), _f64(b)
        ex, eb = torch.autograd.grad(formula(x64, b64, 1, act, 0.2, 1.0, None), (x64, b64), up.double())
        assert_close(gx, ex.to(gx.dtype), name=f"{layout} {act} d/dx")
        assert_close(gb, eb.to(gb.dtype), name=f"{layout} {act} d/db")


@pytest.mark.parametrize("with_b", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("act", ACTS)
def test_bias_act_gradcheck_gradgradcheck(impl, act, with_b, rng):
    name, device = impl
    fast = name == "triton" and device == "cpu"  # the interpreter: random projections, fewer launches
    x = randn((2, 3, 2), torch.float64, device, rng, requires_grad=True)
    with torch.no_grad():  # keep away from relu / lrelu's kink at 0
        x += 0.1 * torch.sign(x)
    b = torch.tensor([0.01, -0.02, 0.03], dtype=torch.float64, device=device, requires_grad=True)
    alpha = ALPHA.get(act, 0.0)
    if with_b:
        fn, args = (lambda x, b: ops.bias_act(x, b, 1, act, alpha, 1.3, None)), (x, b)
    else:
        fn, args = (lambda x: ops.bias_act(x, None, 1, act, alpha, 1.3, None)), (x,)
    assert torch.autograd.gradcheck(fn, args, fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, args, fast_mode=fast)


def _derivatives(fn, x, b, dirs, order):
    """The order-th derivative of fn(x, b) along random directions, w.r.t. (x, b); a tensor that
    does not require grad along the way is a zero derivative."""
    inputs = [t for t in (x, b) if t is not None]
    out = fn(x, b)
    results = None
    for k in range(order):
        if not out.requires_grad:
            return [torch.zeros_like(t) for t in inputs]
        results = torch.autograd.grad((out * dirs[k]).sum(), inputs, create_graph=k + 1 < order,
                                      allow_unused=True, materialize_grads=True)
        out = results[0]
    return list(results)


@pytest.mark.parametrize("with_b", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("act", SMOOTH)
def test_bias_act_third_derivative_smooth(impl, act, with_b, rng):
    _, device = impl
    x = randn((2, 3), torch.float64, device, rng, requires_grad=True)
    b = randn((3,), torch.float64, device, rng, requires_grad=True) if with_b else None
    dirs = [randn((2, 3), torch.float64, device, rng) for _ in range(3)]
    alpha = ALPHA.get(act, 0.0)
    got = _derivatives(lambda x, b: ops.bias_act(x, b, 1, act, alpha, 1.3, 2.5), x, b, dirs, 3)
    expected = _derivatives(lambda x, b: formula(x, b, 1, act, alpha, 1.3, 2.5), _f64(x), _f64(b), dirs, 3)
    for name, g, e in zip(("x", "b"), got, expected):
        assert_close(g, e, atol=1e-9, rtol=1e-8, name=f"{act}: third derivative w.r.t. {name}")


@pytest.mark.parametrize("act", ACTS)
def test_bias_act_derivatives_at_zero_match_torch(impl, act, rng):
    """At exactly x + b = 0 (a kink for relu, lrelu, elu and selu) every implemented order matches
    torch's autograd: elu'(0) = alpha but elu''(0) = 0, relu'(0) = 0. x from y as well (no bias)."""
    _, device = impl
    x = torch.tensor([[0.0, -0.5, 0.0], [0.7, 0.0, -1.2]], dtype=torch.float64, device=device, requires_grad=True)
    dirs = [randn((2, 3), torch.float64, device, rng) for _ in range(3)]
    alpha = ALPHA.get(act, 0.0)
    orders = (1, 2, 3) if act in SMOOTH else (1, 2)
    for order in orders:
        got = _derivatives(lambda x, b: ops.bias_act(x, b, 1, act, alpha, 1.0, None), x, None, dirs, order)
        expected = _derivatives(lambda x, b: formula(x, b, 1, act, alpha, 1.0, None), _f64(x), None, dirs, order)
        assert_close(got[0], expected[0], atol=1e-12, rtol=1e-10, name=f"{act}: order {order} at 0")


@pytest.mark.parametrize("act", SMOOTH)
def test_bias_act_fourth_derivative_smooth_is_an_error(impl, act, rng):
    name, device = impl
    x = randn((2, 3), torch.float64, device, rng, requires_grad=True)
    dirs = [randn((2, 3), torch.float64, device, rng) for _ in range(4)]
    alpha = ALPHA.get(act, 0.0)
    fn = lambda x, b: ops.bias_act(x, b, 1, act, alpha, 1.0, None)  # noqa: E731
    if name == "reference":  # torch's autograd: every order
        got = _derivatives(fn, x, None, dirs, 4)
        expected = _derivatives(lambda x, b: formula(x, b, 1, act, alpha, 1.0, None), _f64(x), None, dirs, 4)
        assert_close(got[0], expected[0], name=f"{act}: fourth derivative")
        return
    with pytest.raises(RuntimeError, match=r"derivatives of order 4 of act '" + act + "' are not implemented"):
        _derivatives(fn, x, None, dirs, 4)


@pytest.mark.parametrize("with_b", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("act", PIECEWISE)
def test_bias_act_piecewise_every_order(impl, act, with_b, rng):
    """linear, relu, lrelu: every derivative past the first is 0 (fourth order included), and the
    chain through the upstream gradients is exact to any order."""
    _, device = impl
    x = randn((2, 3), torch.float64, device, rng, requires_grad=True)
    b = randn((3,), torch.float64, device, rng, requires_grad=True) if with_b else None
    dirs = [randn((2, 3), torch.float64, device, rng) for _ in range(4)]
    fn = lambda x, b: ops.bias_act(x, b, 1, act, 0.2, 1.4, None)  # noqa: E731
    for order in (2, 3, 4):
        for g in _derivatives(fn, x, b, dirs, order):
            assert (g == 0).all(), f"{act}: derivative of order {order} must be 0"
    # d/du of the backward is f'(x): linear in the upstream gradient, to any order
    v = x.detach() if b is None else (x + b).detach()
    neg = {"linear": 1.0, "relu": 0.0, "lrelu": 0.2}[act]
    slope = 1.4 * torch.where(v > 0, torch.ones_like(v), torch.full_like(v, neg))
    u = randn((2, 3), torch.float64, device, rng, requires_grad=True)
    (gx,) = torch.autograd.grad(fn(x, b), x, u, create_graph=True)
    assert_close(gx, u * slope, name="first derivative")
    w = randn((2, 3), torch.float64, device, rng, requires_grad=True)
    (gu,) = torch.autograd.grad(gx, u, w, create_graph=True)
    assert_close(gu, w * slope, name="d(backward)/du")
    z = randn((2, 3), torch.float64, device, rng)
    (gw,) = torch.autograd.grad(gu, w, z)
    assert_close(gw, z * slope, name="d(d(backward)/du)/dw")


@pytest.mark.parametrize("act", ACTS)
def test_backward_saves_only_what_it_needs(kernel_impl, act, rng):
    """relu, lrelu (alpha >= 0) and linear keep y alone; the others keep x as well."""
    _, device = kernel_impl
    x = randn((2, 3, 4), torch.float32, device, rng, requires_grad=True)
    b = randn((3,), torch.float32, device, rng, requires_grad=True)
    packed = []

    def pack(t):
        packed.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = ops.bias_act(x, b, 1, act, ALPHA.get(act, 0.0), 1.0, None)
    ptrs = {t.data_ptr() for t in packed}
    if act in PIECEWISE:
        assert len(packed) == 1 and ptrs == {y.data_ptr()}, \
            f"{act}: the backward must save y alone; saved {[tuple(t.shape) for t in packed]}"
    else:
        assert x.data_ptr() in ptrs, f"{act}: the backward must save x"
    (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    x64 = _f64(x)
    (ex,) = torch.autograd.grad(formula(x64, b.double(), 1, act, ALPHA.get(act, 0.0), 1.0, None), x64,
                                torch.ones_like(x64))
    assert_close(gx, ex.float(), name="gradient after saving")


def test_lrelu_negative_alpha_keeps_x(kernel_impl, rng):
    """With alpha < 0 lrelu's y does not tell the sign of x: x is kept and the gradient is right."""
    _, device = kernel_impl
    x = randn((3, 4), torch.float64, device, rng, requires_grad=True)
    y = ops.bias_act(x, None, 1, "lrelu", -0.3, 1.0, None)
    (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert_close(gx, torch.where(x > 0, torch.ones_like(x), torch.full_like(x, -0.3)).detach(),
                 name="lrelu alpha<0 gradient")


# ---- modules -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(), (5,), (3, 4), (2, 3, 4, 5)], ids=str)
@pytest.mark.parametrize("slope", [0.01, 0.2])
def test_leaky_relu_drop_in(impl, slope, shape, rng):
    _, device = impl
    ours, theirs = ganfast.nn.LeakyReLU(slope), nn.LeakyReLU(slope)
    assert repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys() == set()
    x = randn(shape, torch.float32, device, rng, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y2 = ours(x), theirs(x2)
    assert_close(y, y2, atol=0, rtol=0, name="LeakyReLU value")
    up = randn(shape, torch.float32, device, rng)
    (g,) = torch.autograd.grad(y, x, up)
    (g2,) = torch.autograd.grad(y2, x2, up)
    assert_close(g, g2, atol=0, rtol=0, name="LeakyReLU gradient")
    assert repr(ganfast.nn.LeakyReLU()) == repr(nn.LeakyReLU())
    assert repr(ganfast.nn.LeakyReLU(0.2, inplace=True)) == repr(nn.LeakyReLU(0.2, inplace=True))
    inp = x.detach().clone()
    assert_close(ganfast.nn.LeakyReLU(slope, inplace=True)(inp), y2.detach(), name="inplace=True value")


@pytest.mark.parametrize("act", ["lrelu", "relu", "tanh"])
def test_double_backward_with_constant_upstream_gradient(impl, act, rng):
    """A constant upstream gradient (y.sum(), a frozen network above): the first derivative still
    depends on x, so it stays in the graph and backpropagating it gives x.grad as eager does
    (zeros for piecewise-linear activations), never an error or a None."""
    _, device = impl
    torch_act = {"lrelu": lambda v: F.leaky_relu(v, 0.2), "relu": F.relu, "tanh": torch.tanh}[act]
    x = randn((4, 3, 5, 5), torch.float64, device, rng, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ops.bias_act(x, None, 1, act, 0.2, 1.0).sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad(torch_act(x2).sum(), x2, create_graph=True)
    assert g.requires_grad and g2.requires_grad
    (g * g).sum().backward()
    (g2 * g2).sum().backward()
    assert x.grad is not None, "x.grad stayed None where eager gives a tensor"
    assert_close(x.grad, x2.grad, name="x.grad through the first derivative")


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_lrelu_double_backward_dispatches_no_more_than_eager(backend, rng):
    """Found by the benchmark's device-operation counter: the exact-zero gradient of the first
    derivative with respect to x went back through bias_act's forward node, one more
    bias_act_backward (on zeros) than eager's leaky_relu_backward chain. It now goes to x's edge
    directly; x.grad stays zeros, as eager's."""
    from ganfast.bench.dispatch import count_device_ops

    device = implementation_device(backend, "bias_act")
    x = randn((4, 3, 5, 5), torch.float32, device, rng, requires_grad=True)
    u = randn((4, 3, 5, 5), torch.float32, device, rng, requires_grad=True)
    x2, u2 = (t.detach().clone().requires_grad_(True) for t in (x, u))

    def step(act, x, u):
        (g,) = torch.autograd.grad(act(x), x, grad_outputs=u, create_graph=True)
        g.norm().backward()

    with ganfast.use_backend(backend):
        ours = count_device_ops(step, ganfast.nn.LeakyReLU(0.2), x, u)
    theirs = count_device_ops(step, nn.LeakyReLU(0.2), x2, u2)
    assert ours.by_op["ganfast::bias_act_backward"] == theirs.by_op["aten::leaky_relu_backward"] == 2, (
        ours.format_top(), theirs.format_top())
    assert ours.ops <= theirs.ops and ours.total_bytes <= theirs.total_bytes
    assert x.grad is not None and (x.grad == 0).all()
    assert_close(x.grad, x2.grad, name="x.grad (exact zeros)")
    assert_close(u.grad, u2.grad, name="u.grad")


def test_bias_act_module(impl, rng):
    _, device = impl
    m = ganfast.nn.BiasAct(4, act="lrelu", alpha=0.2, gain=1.0).to(device)
    assert list(m.state_dict()) == ["bias"] and m.bias.shape == (4,) and (m.bias == 0).all()
    assert "num_channels=4" in repr(m) and "act='lrelu'" in repr(m)
    with torch.no_grad():
        m.bias.copy_(torch.tensor([0.1, -0.2, 0.3, -0.4]))
    x = randn((2, 4, 3), torch.float32, device, rng, requires_grad=True)
    y = m(x)
    up = randn(y.shape, torch.float32, device, rng)
    gx, gb = torch.autograd.grad(y, (x, m.bias), up)
    x64, b64 = _f64(x), m.bias.detach().double().requires_grad_(True)
    y64 = formula(x64, b64, 1, "lrelu", 0.2, 1.0, None)
    ex, eb = torch.autograd.grad(y64, (x64, b64), up.double())
    assert_close(y, y64.float(), name="BiasAct value")
    assert_close(gx, ex.float(), name="BiasAct d/dx")
    assert_close(gb, eb.float(), atol=1e-5, name="BiasAct d/dbias")
    plain = ganfast.nn.BiasAct(None, act="tanh", dim=-1, clamp=0.5)
    assert list(plain.state_dict()) == [] and plain.bias is None
    xs = randn((3, 5), torch.float32, device, rng)
    assert_close(plain(xs), torch.tanh(xs).clamp(-0.5, 0.5), name="BiasAct without bias")


# ---- opcheck -----------------------------------------------------------------------------------

OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _bias_act_op_args(rng):
    x = randn((2, 3, 4), torch.float64, gen=rng)
    b = randn((3,), torch.float64, gen=rng)
    go = randn((2, 3, 4), torch.float64, gen=rng)
    y_l = reference.bias_act(x, b, 1, "lrelu", 0.2, 1.0, -1.0)
    y_s = reference.bias_act(x, b, 1, "swish", 0.0, 1.0, -1.0)
    rg = lambda t: t.clone().requires_grad_(True)  # noqa: E731
    return [
        ("bias_act", (rg(x), rg(b), 1, "lrelu", 0.2, 1.4, -1.0)),
        ("bias_act", (rg(x), None, -1, "swish", 0.0, 1.0, 0.5)),
        ("bias_act_backward", (rg(go), None, None, y_l, 1, "lrelu", 0.2, 1.0, -1.0, 1)),
        ("bias_act_backward", (rg(go), rg(x), rg(b), y_s, 1, "swish", 0.0, 1.0, -1.0, 2)),
    ]


@pytest.mark.parametrize("index", range(4))
def test_opcheck_cpp_ops(index, rng):
    if not cpp_family_registered("bias_act", "CPU"):
        pytest.skip("ganfast::bias_act has no CPU kernel in this build")
    name, args = _bias_act_op_args(rng)[index]
    torch.library.opcheck(getattr(torch.ops.ganfast, name).default, args, test_utils=OPCHECK_TESTS)


@pytest.mark.parametrize("index", range(4))
def test_opcheck_triton_ops(index, rng):
    from conftest import implementation_device
    implementation_device("triton", "bias_act")
    name, args = _bias_act_op_args(rng)[index]
    torch.library.opcheck(getattr(torch.ops.ganfast_triton, name).default, args, test_utils=OPCHECK_TESTS)


# ---- errors ------------------------------------------------------------------------------------


def test_errors(impl):
    _, device = impl
    x = torch.randn(2, 3, 4, device=device)
    with pytest.raises(ValueError, match="act must be one of"):
        ops.bias_act(x, None, 1, "gelu")
    with pytest.raises(ValueError, match="act must be one of"):
        ganfast.nn.BiasAct(3, act="gelu")
    with pytest.raises(ValueError, match=r"b must have shape \(3,\)"):
        ops.bias_act(x, torch.zeros(4, device=device), 1, "relu")
    with pytest.raises(ValueError, match=r"b must have shape \(3,\)"):
        ops.bias_act(x, torch.zeros(1, 3, device=device), 1, "relu")
    with pytest.raises(ValueError, match=r"dim must be in \[-3, 3\)"):
        ops.bias_act(x, torch.zeros(3, device=device), 3, "relu")
    with pytest.raises(ValueError, match=r"dim must be in \[-3, 3\)"):
        ops.bias_act(x, torch.zeros(3, device=device), -4, "relu")
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        ops.bias_act(torch.ones(2, 3, dtype=torch.int64, device=device), None, 1, "relu")
    with pytest.raises(TypeError, match="b must be a floating-point tensor"):
        ops.bias_act(x, torch.ones(3, dtype=torch.int32, device=device), 1, "relu")
    with pytest.raises(ValueError, match="clamp"):
        ops.bias_act(x, None, 1, "relu", clamp=-1.0)


def test_backward_op_errors(rng):
    """bias_act_backward's own checks (C++ op), when the CPU kernels are built."""
    if not cpp_family_registered("bias_act", "CPU"):
        pytest.skip("ganfast::bias_act has no CPU kernel in this build")
    x, y, go = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    op = torch.ops.ganfast.bias_act_backward
    with pytest.raises(ValueError, match="x is required"):
        op(go, None, None, y, 1, "swish", 0.0, 1.0, -1.0, 1)
    with pytest.raises(ValueError, match="order must be >= 1"):
        op(go, x, None, y, 1, "tanh", 0.0, 1.0, -1.0, 0)
    with pytest.raises(RuntimeError, match="order 4 of act 'tanh' are not implemented"):
        op(go, x, None, y, 1, "tanh", 0.0, 1.0, -1.0, 4)


# ---- the bias gradient in the backward's own pass (bias_act_backward_with_bias) -------------------


def _fused_ops(name):
    """(bias_act_backward, bias_act_backward_with_bias) of implementation `name`."""
    ns = torch.ops.ganfast_triton if name == "triton" else torch.ops.ganfast
    return ns.bias_act_backward.default, ns.bias_act_backward_with_bias.default


# (shape, dim, layout of y, act, x given, clamp): odd sizes, a channel count that is no multiple of
# any vector width, NCHW / channels_last / a layout the kernels copy, the 2-D (N, C) Linear case along
# dim 1 and the last dim, dim 0, y-only (lrelu, relu) and x + b (swish, tanh, elu) derivatives.
FUSED_CASES = [
    ((3, 5, 7, 9), 1, "nchw", "lrelu", False, None),
    ((3, 5, 7, 9), 1, "channels_last", "swish", True, None),
    ((3, 5, 7, 9), 1, "channels_last", "lrelu", False, 0.5),
    ((3, 5, 7, 9), 2, "transposed", "tanh", True, None),
    ((6, 13), 1, "nchw", "elu", True, 0.7),
    ((6, 13), -1, "nchw", "relu", False, None),
    ((13, 6), 0, "nchw", "swish", True, None),
]
FUSED_IDS = ["nchw-y", "cl-x", "cl-y-clamp", "transposed-x", "linear-x-clamp", "linear-dimlast-y", "dim0-x"]


def _fused_inputs(case, dtype, device, rng):
    shape, dim, layout, act, with_x, clamp = case
    alpha = ALPHA.get(act, 0.0)
    x = randn(shape, dtype, device, rng, scale=2.0)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        x = x.transpose(1, 3)  # y follows x's layout: one the kernels copy
    d = dim % x.dim()
    b = randn((x.shape[d],), dtype, device, rng)
    y = ops.bias_act(x, b, dim, act, alpha, 1.3, clamp)
    # a random upstream gradient, not contiguous
    go = randn(tuple(reversed(x.shape)), dtype, device, rng).permute(*reversed(range(x.dim())))
    args = (x if with_x else None, b, y, dim, act, alpha, 1.3, -1.0 if clamp is None else clamp)
    return go, args


@pytest.mark.parametrize("case", FUSED_CASES, ids=FUSED_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_backward_with_bias_matches_reference(kernel_impl, dtype, case, rng):
    """grad_input is bias_act_backward's (order 1) exactly, in its layout; grad_bias is its sum over
    every dim but dim, against the float64 reference."""
    name, device = kernel_impl
    backward, fused = _fused_ops(name)
    go, (x, b, y, dim, act, alpha, gain, clamp) = _fused_inputs(case, dtype, device, rng)
    gi, gb = fused(go, x, b, y, dim, act, alpha, gain, clamp)
    expected_gi = backward(go, x, b, y, dim, act, alpha, gain, clamp, 1)
    assert gi.dtype == dtype and gi.shape == y.shape and gi.stride() == expected_gi.stride()
    assert torch.equal(gi, expected_gi), "grad_input must be bias_act_backward's, bit for bit"
    f64 = [None if t is None else t.detach().double() for t in (go, x, b, y)]
    ref_gi, ref_gb = reference.bias_act_backward_with_bias(*f64, dim, act, alpha, gain, clamp)
    assert_close(gi, ref_gi.to(dtype), name="grad_input vs reference")
    assert gb.dtype == b.dtype and gb.shape == b.shape
    assert_close(gb, ref_gb.to(dtype), atol=2e-5 if dtype == torch.float32 else None, name="grad_bias vs reference")


def test_backward_with_bias_empty_and_dtypes(kernel_impl, rng):
    """N = 0: grad_bias zeros (b's shape and dtype); b's dtype wherever it differs from y's."""
    name, device = kernel_impl
    _, fused = _fused_ops(name)
    y = torch.empty(0, 5, 3, device=device)
    b = torch.ones(5, dtype=torch.float64, device=device)
    gi, gb = fused(torch.empty_like(y), None, b, y, 1, "lrelu", 0.2, 1.0, -1.0)
    assert gi.shape == y.shape and gb.dtype == torch.float64 and torch.equal(gb, torch.zeros_like(b))
    x = randn((4, 6, 5), torch.float16, device, rng)
    b = randn((6,), torch.float32, device, rng)
    y = ops.bias_act(x, b, 1, "swish", 0.0, 1.0, None)
    go = randn(y.shape, torch.float16, device, rng)
    gi, gb = fused(go, x, b, y, 1, "swish", 0.0, 1.0, -1.0)
    assert gb.dtype == torch.float32
    assert_close(gb, gi.double().sum((0, 2)), check_dtype=False, name="grad_bias of float16 grad_input, float32 b")


@pytest.mark.parametrize("act", ["lrelu", "swish"])  # b not kept (y-only derivative) / kept
def test_bias_grad_through_backward_is_fused(kernel_impl, act, rng):
    """A plain .backward() of bias_act: b.grad from bias_act_backward_with_bias (no aten::sum, no
    separate bias_act_backward), equal to the float64 formula's."""
    from ganfast.bench.dispatch import count_device_ops

    name, device = kernel_impl
    ns = "ganfast_triton" if name == "triton" else "ganfast"
    x = randn((4, 6, 3, 5), torch.float32, device, rng, requires_grad=True)
    b = randn((6,), torch.float32, device, rng, requires_grad=True)
    u = randn(x.shape, torch.float32, device, rng)
    alpha = ALPHA.get(act, 0.0)
    c = count_device_ops(lambda: ops.bias_act(x, b, 1, act, alpha, 1.2, None).backward(u))
    assert c.by_op.get(f"{ns}::bias_act_backward_with_bias") == 1, c.format_top()
    assert not [k for k in c.by_op if k.startswith("aten::sum")], c.format_top()
    assert f"{ns}::bias_act_backward" not in c.by_op, c.format_top()
    x64, b64 = _f64(x), _f64(b)
    ex, eb = torch.autograd.grad(formula(x64, b64, 1, act, alpha, 1.2, None), (x64, b64), u.double())
    assert_close(x.grad, ex.float(), name="x.grad")
    assert_close(b.grad, eb.float(), atol=2e-5, name="b.grad")


def test_bias_grad_create_graph_keeps_the_differentiable_path(kernel_impl, rng):
    """create_graph: bias_act_backward and a sum (differentiable), never the fused op; the second
    derivative through b's gradient matches the float64 formula's."""
    from ganfast.bench.dispatch import count_device_ops

    name, device = kernel_impl
    ns = "ganfast_triton" if name == "triton" else "ganfast"
    x = randn((3, 4, 5), torch.float64, device, rng, requires_grad=True)
    b = randn((4,), torch.float64, device, rng, requires_grad=True)
    u = randn(x.shape, torch.float64, device, rng)

    def first(fn, x, b):
        return torch.autograd.grad(fn(x, b), (x, b), u, create_graph=True)

    c = count_device_ops(first, lambda x, b: ops.bias_act(x, b, 1, "tanh", 0.0, 1.1, None), x, b)
    assert f"{ns}::bias_act_backward_with_bias" not in c.by_op, c.format_top()
    assert c.by_op[f"{ns}::bias_act_backward"] == 1 and c.by_op["aten::sum.dim_IntList"] == 1, c.format_top()
    x2, b2 = x.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    gx2, gb2 = first(lambda x, b: formula(x, b, 1, "tanh", 0.0, 1.1, None), x2, b2)
    gx, gb = c.result
    assert_close(gb, gb2, name="b gradient under create_graph")
    (gb.square().sum() + gx.square().sum()).backward()
    (gb2.square().sum() + gx2.square().sum()).backward()
    assert_close(x.grad, x2.grad, name="x.grad through the first derivative")
    assert_close(b.grad, b2.grad, name="b.grad through the first derivative")


def test_backward_with_bias_is_not_differentiable(kernel_impl, rng):
    """The fused op has no derivative: differentiating it is an error, never a wrong number."""
    name, device = kernel_impl
    _, fused = _fused_ops(name)
    x = randn((2, 3, 4), torch.float32, device, rng, requires_grad=True)
    b = randn((3,), torch.float32, device, rng)
    y = ops.bias_act(x, b, 1, "swish", 0.0, 1.0, None).detach()
    go = randn(y.shape, torch.float32, device, rng, requires_grad=True)
    with pytest.raises(RuntimeError, match="is not implemented|no autograd formula was registered"):
        gi, gb = fused(go, x, b, y, 1, "swish", 0.0, 1.0, -1.0)
        torch.autograd.grad(gi.sum() + gb.sum(), (go, x))


def test_backward_with_bias_errors(rng):
    """b is required, named; the C++ op and the Python twin of its checks say the same."""
    from ganfast import _args

    y, go = torch.randn(2, 3), torch.randn(2, 3)
    checks = [lambda *a: _args.check_bias_act_backward_with_bias("ganfast::bias_act_backward_with_bias", *a)]
    if cpp_family_registered("bias_act", "CPU"):
        op = torch.ops.ganfast.bias_act_backward_with_bias
        checks.append(lambda go, x, b, y, dim, act, alpha: op(go, x, b, y, dim, act, alpha, 1.0, -1.0))
    for check in checks:
        with pytest.raises(ValueError, match=r"bias_act_backward_with_bias: b is required"):
            check(go, None, None, y, 1, "lrelu", 0.2)
        with pytest.raises(ValueError, match=r"b must have shape \(3,\) = \(y.size\(1\),\)"):
            check(go, None, torch.zeros(2), y, 1, "lrelu", 0.2)
        with pytest.raises(ValueError, match=r"dim must be in \[-2, 2\) for y of shape"):
            check(go, None, torch.zeros(3), y, 2, "lrelu", 0.2)
        with pytest.raises(ValueError, match="x is required"):
            check(go, None, torch.zeros(3), y, 1, "swish", 0.0)


@pytest.mark.parametrize("namespace", ["ganfast", "ganfast_triton"])
@pytest.mark.parametrize("with_x", [False, True], ids=["from-y", "from-x"])
def test_opcheck_backward_with_bias(namespace, with_x, rng):
    if namespace == "ganfast" and not cpp_family_registered("bias_act", "CPU"):
        pytest.skip("ganfast::bias_act has no CPU kernel in this build")
    if namespace == "ganfast_triton":
        implementation_device("triton", "bias_act")
    x = randn((2, 3, 4), torch.float64, gen=rng)
    b = randn((3,), torch.float64, gen=rng)
    go = randn((2, 3, 4), torch.float64, gen=rng)
    act = "swish" if with_x else "lrelu"
    y = reference.bias_act(x, b, 1, act, 0.2, 1.0, -1.0)
    op = getattr(torch.ops, namespace).bias_act_backward_with_bias.default
    torch.library.opcheck(op, (go, x if with_x else None, b, y, 1, act, 0.2, 1.0, -1.0),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
