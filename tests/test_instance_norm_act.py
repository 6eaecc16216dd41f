"""The instance_norm_act op family and ganfast.nn.InstanceNormAct2d, every implementation present
(reference, cpu, triton, cuda, cuda-emu-*), against the float64 eager composite
act(F.instance_norm(x, weight=weight, bias=bias, eps=eps)) written here from torch.nn.functional,
independently of ganfast/reference: the output and the gradients w.r.t. input, weight and bias with
a random upstream gradient, odd shapes (1-D, 2-D and 3-D spatial, N = 1, C = 1), affine or not,
a few activations, channels_last and strided input (made contiguous), half precision, empty
tensors, gradcheck, opcheck of both C++ ops and both Triton ops, double backward raising, every
argument error, the CPU kernel's independence of the thread count, and the module against
nn.InstanceNorm2d + activation with a loaded state_dict.

Outputs are poisoned: torch.use_deterministic_algorithms(True) makes every empty tensor (the
kernels' outputs included) NaN-filled, so an element a kernel does not write shows up. Shapes are
small: the whole file runs in seconds outside the Triton interpreter's first-call warm-up.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_close, cpp_family_registered, family_fixtures, implementation_device, randn
from ganfast import ops
from ganfast.nn import InstanceNormAct2d
from ganfast.reference import instance_norm_act as reference

impl, kernel_impl = family_fixtures("instance_norm_act")

ALPHA = {"lrelu": 0.2, "elu": 1.0}
EPS = 1e-3


@pytest.fixture(autouse=True)
def poison_outputs():
    """Every empty()/empty_like() NaN-filled for the duration of a test (outputs included)."""
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(old)


def torch_act(act, v, alpha):
    return {"linear": lambda: v, "relu": lambda: F.relu(v), "lrelu": lambda: F.leaky_relu(v, alpha),
            "tanh": lambda: torch.tanh(v), "elu": lambda: F.elu(v, alpha), "swish": lambda: F.silu(v)}[act]()


def formula(x, w, b, act, alpha, eps=EPS):
    return torch_act(act, F.instance_norm(x, None, None, w, b, True, 0.0, eps), alpha)


def _f64(t):
    return None if t is None else t.detach().to(torch.float64).requires_grad_(t.requires_grad)


def make_case(shape, dtype, device, rng, *, with_w=True, with_b=True, mean_offset=0.0):
    c = shape[1]
    x = randn(shape, dtype, device, rng, scale=1.5)
    if mean_offset:  # a different large mean per (n, c) instance
        nc = shape[0] * c
        x = (x.double() + mean_offset * torch.arange(1, nc + 1, dtype=torch.float64, device=device)
             .reshape([shape[0], c] + [1] * (len(shape) - 2))).to(dtype)
    x.requires_grad_(True)
    w = (1.0 + 0.5 * randn((c,), torch.float64, device, rng)).to(dtype).requires_grad_(True) if with_w else None
    b = randn((c,), dtype, device, rng, scale=0.5, requires_grad=True) if with_b else None
    return x, w, b


def check_against_torch(shape, dtype, device, rng, *, act="relu", alpha=None, with_w=True, with_b=True, layout=None,
                        mean_offset=0.0, atol=None, rtol=None, gatol=None):
    """Output and the gradients of (x, weight, bias) against the float64 composite."""
    x, w, b = make_case(shape, dtype, device, rng, with_w=with_w, with_b=with_b, mean_offset=mean_offset)
    if layout is not None:
        x = layout(x.detach()).requires_grad_(True)
    out = ops.instance_norm_act(x, w, b, EPS, act, alpha)
    assert out.dtype == dtype and out.shape == x.shape
    x64, w64, b64 = _f64(x), _f64(w), _f64(b)
    out64 = formula(x64, w64, b64, act, ALPHA.get(act, 0.0) if alpha is None else alpha)
    assert_close(out, out64.to(dtype), atol=atol, rtol=rtol, name=f"{act}: output")
    up = randn(x.shape, dtype, device, rng)
    inputs = [t for t in (x, w, b) if t is not None]
    grads = torch.autograd.grad(out, inputs, up)
    grads64 = torch.autograd.grad(out64, [t for t in (x64, w64, b64) if t is not None], up.to(torch.float64))
    for name, g, g64 in zip(("input", "weight", "bias"), grads, grads64):
        assert g.dtype == dtype and g.shape == g64.shape
        assert_close(g, g64.to(dtype), atol=gatol if gatol is not None else atol, rtol=rtol,
                     name=f"{act}: gradient w.r.t. {name}")
    return out


# ---- values and gradients ------------------------------------------------------------------------


@pytest.mark.parametrize("act,alpha", [("linear", None), ("relu", None), ("lrelu", None), ("lrelu", 0.05),
                                       ("tanh", None)], ids=["linear", "relu", "lrelu", "lrelu-0.05", "tanh"])
def test_activations(impl, act, alpha, rng):
    _, device = impl
    check_against_torch((3, 4, 3, 5), torch.float64, device, rng, act=act, alpha=alpha)


# (shape, dtype, with_w, with_b, layout): odd shapes, affine and not, layouts the kernels copy
SHAPES = {
    "odd-f32": ((3, 5, 7, 9), torch.float32, True, True, None),
    "odd-no-affine": ((3, 5, 7, 9), torch.float64, False, False, None),
    "1d-spatial": ((2, 3, 11), torch.float64, True, True, None),
    "3d-spatial": ((2, 3, 2, 3, 4), torch.float32, True, True, None),
    "n1-c1": ((1, 1, 4, 5), torch.float64, True, True, None),
    "weight-only": ((2, 3, 4, 5), torch.float64, True, False, None),
    "bias-only": ((2, 3, 4, 5), torch.float64, False, True, None),
    "channels_last": ((2, 6, 3, 4), torch.float32, True, True, lambda t: t.to(memory_format=torch.channels_last)),
    "sliced": ((2, 3, 5, 12), torch.float64, True, True, lambda t: t[..., ::2]),
}


@pytest.mark.parametrize("case", list(SHAPES))
def test_shapes(impl, case, rng):
    _, device = impl
    shape, dtype, with_w, with_b, layout = SHAPES[case]
    check_against_torch(shape, dtype, device, rng, act="lrelu", with_w=with_w, with_b=with_b, layout=layout,
                        gatol=2e-5 if dtype == torch.float32 else None)


def test_large_mean_float32(impl, rng):
    """|mean| >> std in every instance (a convolution's output with a large bias): the shifted
    statistics keep their digits."""
    _, device = impl
    check_against_torch((2, 3, 6, 6), torch.float32, device, rng, act="linear", mean_offset=100.0,
                        atol=2e-4, rtol=1e-4, gatol=2e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision(impl, dtype, rng):
    """Computed in float32, rounded once: within a few units in the last place of the format."""
    _, device = impl
    tol = {torch.bfloat16: 2e-2, torch.float16: 4e-3}[dtype]
    check_against_torch((2, 4, 3, 5), dtype, device, rng, act="lrelu", atol=tol, rtol=tol)


def test_larger_than_one_chunk_and_thread_counts(impl, rng):
    """Instances of more than one CPU chunk (16384 values: several parallel pieces each), and for
    the CPU kernel the same bits with 1 and 2 threads."""
    name, device = impl
    if name == "triton" and device == "cpu":
        pytest.skip("the interpreter at this size is slow; the small cases cover its code paths")
    check_against_torch((2, 2, 130, 131), torch.float32, device, rng, act="tanh", gatol=1e-4)
    if name != "cpu":
        return
    x, w, b = make_case((2, 2, 130, 131), torch.float32, device, rng)
    up = randn(x.shape, torch.float32, device, rng)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = ops.instance_norm_act(x, w, b, EPS, "tanh")
            results.append((out,) + torch.autograd.grad(out, (x, w, b), up))
    finally:
        torch.set_num_threads(threads)
    for r1, r2 in zip(*results):
        assert torch.equal(r1, r2), "the CPU kernel's result depends on the thread count"


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 4, 4), (2, 3, 0, 4)], ids=["N0", "C0", "S0"])
def test_empty(impl, shape):
    """Empty tensors as torch: an empty output, an empty input gradient, zero weight / bias gradients."""
    _, device = impl
    c = shape[1]
    x = torch.zeros(shape, device=device, requires_grad=True)
    w = torch.ones(c, device=device, requires_grad=True)
    b = torch.zeros(c, device=device, requires_grad=True)
    out = ops.instance_norm_act(x, w, b, EPS, "relu")
    assert out.shape == F.instance_norm(x.detach(), eps=EPS).shape == shape
    gx, gw, gb = torch.autograd.grad(out.sum(), (x, w, b), allow_unused=True, materialize_grads=True)
    assert gx.shape == shape
    assert torch.equal(gw, torch.zeros(c, device=device)) and torch.equal(gb, torch.zeros(c, device=device))


# ---- gradcheck, double backward -----------------------------------------------------------------


@pytest.mark.parametrize("act", ["lrelu", "tanh"])
def test_gradcheck(impl, act, rng):
    name, device = impl
    fast = name == "reference" or (name == "triton" and device == "cpu")
    x = randn((2, 2, 3, 2), torch.float64, device, rng, requires_grad=True)
    w = torch.tensor([1.3, -0.7], dtype=torch.float64, device=device, requires_grad=True)
    b = torch.tensor([0.05, -0.1], dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda x, w, b: ops.instance_norm_act(x, w, b, EPS, act)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b), fast_mode=fast)


def test_double_backward_is_an_error(kernel_impl, rng):
    _, device = kernel_impl
    x, w, b = make_case((3, 2, 4), torch.float64, device, rng)
    out = ops.instance_norm_act(x, w, b, EPS, "tanh")
    (gx,) = torch.autograd.grad(out, x, torch.randn_like(out), create_graph=True)
    with pytest.raises(RuntimeError, match=r"derivative for ganfast(_triton)?::instance_norm_act_backward is not "
                                           r"implemented"):
        torch.autograd.grad(gx.sum(), (x, w))


def test_reference_double_backward(rng):
    """The reference is any-order differentiable (torch's own InstanceNorm)."""
    x, w, b = make_case((2, 2, 4), torch.float64, "cpu", rng)
    fn = lambda x, w, b: reference.instance_norm_act(x, w, b, EPS, "tanh", 0.0)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_gradients_not_requested(kernel_impl, rng):
    """Only the input requires grad: weight / bias get no gradient; no_grad records nothing."""
    _, device = kernel_impl
    x = randn((3, 2, 4), torch.float32, device, rng, requires_grad=True)
    w, b = torch.ones(2, device=device), torch.zeros(2, device=device)
    ops.instance_norm_act(x, w, b, EPS, "relu").sum().backward()
    assert x.grad is not None and w.grad is None and b.grad is None
    with torch.no_grad():
        assert not ops.instance_norm_act(x, w, b, EPS, "relu").requires_grad


# ---- opcheck -------------------------------------------------------------------------------------

OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _op_args(rng):
    x = randn((3, 4, 2, 3), torch.float64, gen=rng)
    w, b = randn((4,), torch.float64, gen=rng), randn((4,), torch.float64, gen=rng)
    rg = lambda t: t.clone().requires_grad_(True)  # noqa: E731
    fwd = (rg(x), rg(w), rg(b), EPS, "lrelu", 0.2)
    flat = x.reshape(12, 6)
    mean, invstd = flat.mean(1), (flat.var(1, unbiased=False) + EPS).rsqrt()
    bwd = (randn(x.shape, torch.float64, gen=rng), x, w, None, mean, invstd, "swish", 0.0)
    return [("instance_norm_act", fwd), ("instance_norm_act_backward", bwd)]


@pytest.mark.parametrize("index", range(2), ids=["forward", "backward"])
def test_opcheck_cpp_ops(index, rng):
    if not cpp_family_registered("instance_norm_act", "CPU"):
        pytest.fail("ganfast::instance_norm_act has no CPU kernel in this build")
    name, args = _op_args(rng)[index]
    torch.use_deterministic_algorithms(False)  # opcheck compares against real runs; no poisoning needed
    torch.library.opcheck(getattr(torch.ops.ganfast, name).default, args, test_utils=OPCHECK_TESTS)


@pytest.mark.parametrize("index", range(2), ids=["forward", "backward"])
def test_opcheck_triton_ops(index, rng):
    implementation_device("triton", "instance_norm_act")
    name, args = _op_args(rng)[index]
    torch.use_deterministic_algorithms(False)
    torch.library.opcheck(getattr(torch.ops.ganfast_triton, name).default, args, test_utils=OPCHECK_TESTS)


# ---- errors --------------------------------------------------------------------------------------


def test_errors(impl):
    _, device = impl
    x = torch.randn(2, 3, 4, device=device)
    ina = ops.instance_norm_act
    with pytest.raises(ValueError, match=r"input must have shape \(N, C, \*\) with at least one spatial dim \(at least "
                                         r"3 dims\); got shape \[2, 3\]"):
        ina(torch.randn(2, 3, device=device))
    with pytest.raises(TypeError, match="input must be a floating-point tensor; got Long"):
        ina(torch.ones(2, 3, 4, dtype=torch.int64, device=device))
    with pytest.raises(ValueError, match=r"weight must have shape \(C,\) = \(3,\) \(input.size\(1\)\); got \[4\]"):
        ina(x, torch.ones(4, device=device))
    with pytest.raises(ValueError, match=r"bias must have shape \(C,\) = \(3,\) \(input.size\(1\)\); got \[1, 3\]"):
        ina(x, None, torch.ones(1, 3, device=device))
    with pytest.raises(TypeError, match="weight must be a floating-point tensor; got Int"):
        ina(x, torch.ones(3, dtype=torch.int32, device=device))
    for shape in ((2, 3, 1), (2, 3, 1, 1)):  # as torch's instance_norm
        with pytest.raises(ValueError, match=r"expected more than 1 spatial element per \(sample, channel\); got input "
                                             r"of shape \[2, 3, 1"):
            ina(torch.randn(shape, device=device))
    with pytest.raises(ValueError, match="act must be one of"):
        ina(x, act="gelu")
    for eps in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="eps must be positive; got"):
            ina(x, eps=eps)


def test_backward_op_errors():
    """instance_norm_act_backward's own checks (C++ op)."""
    if not cpp_family_registered("instance_norm_act", "CPU"):
        pytest.fail("ganfast::instance_norm_act has no CPU kernel in this build")
    op = torch.ops.ganfast.instance_norm_act_backward
    x, go, m, s = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.zeros(6), torch.ones(6)
    with pytest.raises(ValueError, match=r"grad_output size \(\[2, 3, 5\]\) must be the same as input size"):
        op(torch.randn(2, 3, 5), x, None, None, m, s, "relu", 0.0)
    with pytest.raises(ValueError, match=r"save_mean must have shape \(N \* C,\) = \(6,\) \(input.size\(0\) \* "
                                         r"input.size\(1\)\); got \[3\]"):
        op(go, x, None, None, torch.zeros(3), s, "relu", 0.0)
    with pytest.raises(TypeError, match=r"save_invstd must be Float \(the compute dtype of Float input\); got Double"):
        op(go, x, None, None, m, s.double(), "relu", 0.0)
    with pytest.raises(ValueError, match="act must be one of"):
        op(go, x, None, None, m, s, "gelu", 0.0)


def test_python_checks_match_cpp():
    """ganfast/_args.py's twins raise the same messages as ganfast_common.h."""
    if not cpp_family_registered("instance_norm_act", "CPU"):
        pytest.fail("ganfast::instance_norm_act has no CPU kernel in this build")
    from ganfast import _args
    x = torch.randn(2, 3, 4)
    cases = [(torch.randn(2, 3), None, None, 1e-5), (torch.ones(2, 3, 4, dtype=torch.int64), None, None, 1e-5),
             (x, torch.ones(4), None, 1e-5), (x, None, torch.ones(3, dtype=torch.int32), 1e-5),
             (torch.randn(2, 3, 1, 1), None, None, 1e-5), (x, None, None, 0.0), (x, None, None, -0.001)]
    for args in cases:
        with pytest.raises(Exception) as cpp:
            torch.ops.ganfast.instance_norm_act(*args, "relu", 0.0)
        with pytest.raises(Exception) as py:
            _args.check_instance_norm_act("ganfast::instance_norm_act", *args)
        assert type(cpp.value) is type(py.value) and str(py.value) in str(cpp.value), (cpp.value, py.value)
    go, m, s = torch.randn(2, 3, 4), torch.zeros(6), torch.ones(6)
    for args in [(torch.randn(2, 3, 5), x, None, None, m, s), (go, x, None, None, torch.zeros(3), s),
                 (go, x, None, None, m, s.double())]:
        with pytest.raises(Exception) as cpp:
            torch.ops.ganfast.instance_norm_act_backward(*args, "relu", 0.0)
        with pytest.raises(Exception) as py:
            _args.check_instance_norm_act_backward("ganfast::instance_norm_act_backward", *args)
        assert type(cpp.value) is type(py.value) and str(py.value) in str(cpp.value), (cpp.value, py.value)


# ---- the module ------------------------------------------------------------------------------------


@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("act", ["relu", "lrelu"])
def test_module_matches_torch(impl, affine, act, rng):
    """InstanceNormAct2d with nn.InstanceNorm2d's state_dict loaded = InstanceNorm2d + ReLU /
    LeakyReLU(0.2) in float64, value and every parameter's gradient; unbatched (C, H, W) too."""
    _, device = impl
    torch_act_module = nn.ReLU() if act == "relu" else nn.LeakyReLU(0.2)
    eager = nn.Sequential(nn.InstanceNorm2d(5, affine=affine), torch_act_module).double().to(device)
    if affine:
        with torch.no_grad():
            eager[0].weight.copy_(1.0 + 0.5 * randn((5,), torch.float64, device, rng))
            eager[0].bias.copy_(randn((5,), torch.float64, device, rng))
    fused = InstanceNormAct2d(5, affine=affine, act=act).double().to(device)
    fused.load_state_dict(eager[0].state_dict())
    assert fused.state_dict().keys() == eager[0].state_dict().keys()
    x = randn((3, 5, 6, 7), torch.float64, device, rng, requires_grad=True)
    up = randn(x.shape, torch.float64, device, rng)
    out, expected = fused(x), eager(x)
    assert_close(out, expected, name="module output")
    for p, q in zip([x, *fused.parameters()], [x, *eager.parameters()]):
        (g,) = torch.autograd.grad(out, p, up, retain_graph=True)
        (e,) = torch.autograd.grad(expected, q, up, retain_graph=True)
        assert_close(g, e, name="module gradient")
    assert_close(fused(x[0].detach()), eager(x[0].detach()), name="unbatched output")


def test_module_repr_and_errors():
    m = InstanceNormAct2d(8, affine=True, act="lrelu", alpha=0.1)
    assert repr(m) == "InstanceNormAct2d(8, eps=1e-05, affine=True, act='lrelu', alpha=0.1)"
    assert [n for n, _ in m.named_parameters()] == ["weight", "bias"]
    assert list(InstanceNormAct2d(8).parameters()) == []
    for bad in (0, -3, 2.5, True, "8"):
        with pytest.raises(ValueError, match="num_features must be a positive int"):
            InstanceNormAct2d(bad)
    with pytest.raises(ValueError, match="act must be one of"):
        InstanceNormAct2d(8, act="gelu")
    with pytest.raises(ValueError, match="eps must be positive"):
        InstanceNormAct2d(8, eps=0.0)
    with pytest.raises(ValueError, match=r"expected input with 8 channels \(num_features\); got 3"):
        m(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="expected 3D"):
        m(torch.randn(2, 8, 4, 4, 2))
