"""The batch_norm_act op family, every implementation present (reference, cpu, triton, cuda),
against torch.nn.functional.batch_norm + torch's activation in float64 (written here from
torch.nn.functional, independently of ganfast/reference): the output, the running-statistics
update (momentum, unbiased variance), eval, every activation, the gradients w.r.t. input, weight
and bias with a random upstream gradient, gradcheck, weight / bias None, channels_last and other
layouts, odd shapes (N = 1, C = 1, 2-D, 3-D, 5-D), the empty batch, bfloat16 / float16, opcheck of
both C++ ops (and of the Triton ops), double backward raising, the argument errors.

Outputs are poisoned: torch.use_deterministic_algorithms(True) makes every empty tensor (the
kernels' outputs included) NaN-filled, so an element a kernel does not write shows up.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close, cpp_family_registered, family_fixtures, randn
from ganfast import ops
from ganfast.reference import batch_norm_act as reference

impl, kernel_impl = family_fixtures("batch_norm_act")

ACTS = ("linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish")
ALPHA = {"lrelu": 0.2, "elu": 1.0}
MOMENTUM, EPS = 0.3, 1e-3


@pytest.fixture(autouse=True)
def poison_outputs():
    """Every empty()/empty_like() NaN-filled for the duration of a test (outputs included)."""
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(old)


def torch_act(act, v, alpha):
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


def formula(x, w, b, rm, rv, training, act, alpha, momentum=MOMENTUM, eps=EPS):
    return torch_act(act, F.batch_norm(x, rm, rv, w, b, training, momentum, eps), alpha)


def _f64(t):
    return None if t is None else t.detach().to(torch.float64).requires_grad_(t.requires_grad)


def _clone(t):
    return None if t is None else t.clone()


def make_case(shape, dtype, device, rng, *, with_w=True, with_b=True, mean_offset=0.0):
    c = shape[1]
    x = randn(shape, dtype, device, rng, scale=1.5)
    if mean_offset:
        x = (x.double() + mean_offset * torch.arange(1, c + 1, dtype=torch.float64, device=device)
             .reshape([1, c] + [1] * (len(shape) - 2))).to(dtype)
    x.requires_grad_(True)
    w = (1.0 + 0.5 * randn((c,), torch.float64, device, rng)).to(dtype).requires_grad_(True) if with_w else None
    b = randn((c,), dtype, device, rng, scale=0.5, requires_grad=True) if with_b else None
    rm = randn((c,), torch.float32 if dtype != torch.float64 else dtype, device, rng, scale=0.3)
    rv = (0.5 + torch.rand(c, generator=rng, dtype=torch.float64)).to(rm.dtype).to(device)
    return x, w, b, rm, rv


def check_against_torch(shape, dtype, device, rng, *, act="relu", training=True, with_w=True, with_b=True,
                        with_running=True, layout=None, mean_offset=0.0, atol=None, rtol=None, gatol=None):
    """Output, running statistics and the gradients of (x, weight, bias) against torch in float64."""
    alpha = ALPHA.get(act, 0.0)
    x, w, b, rm, rv = make_case(shape, dtype, device, rng, with_w=with_w, with_b=with_b, mean_offset=mean_offset)
    if layout is not None:
        x = layout(x.detach()).requires_grad_(True)
    if not with_running:
        rm = rv = None
    rm64, rv64 = _f64(rm), _f64(rv)
    out = ops.batch_norm_act(x, w, b, rm, rv, training, MOMENTUM, EPS, act, alpha)
    assert out.dtype == dtype and out.shape == x.shape
    x64, w64, b64 = _f64(x), _f64(w), _f64(b)
    out64 = formula(x64, w64, b64, rm64, rv64, training, act, alpha)
    assert_close(out, out64.to(dtype), atol=atol, rtol=rtol, name=f"{act}: output")
    if with_running:
        # torch's float64 update rounded to the buffers' dtype; eval leaves them alone
        assert_close(rm, rm64.to(rm.dtype), atol=1e-6 if rm.dtype != torch.float64 else None,
                     name="running_mean")
        assert_close(rv, rv64.to(rv.dtype), atol=1e-6 if rv.dtype != torch.float64 else None,
                     name="running_var")
    up = randn(x.shape, dtype, device, rng)
    inputs = [t for t in (x, w, b) if t is not None]
    grads = torch.autograd.grad(out, inputs, up)
    inputs64 = [t for t in (x64, w64, b64) if t is not None]
    grads64 = torch.autograd.grad(out64, inputs64, up.to(torch.float64))
    for name, g, g64 in zip(("input", "weight", "bias"), grads, grads64):
        assert g.dtype == dtype and g.shape == g64.shape
        assert_close(g, g64.to(dtype), atol=gatol if gatol is not None else atol, rtol=rtol,
                     name=f"{act}: gradient w.r.t. {name}")
    return out, x


# ---- values, running statistics, gradients ------------------------------------------------------


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("act", ACTS)
def test_every_activation(impl, act, training, rng):
    _, device = impl
    check_against_torch((3, 4, 3, 5), torch.float64, device, rng, act=act, training=training)


# (shape, layout) odd shapes and layouts, float32 and float64
SHAPES = {
    "nchw": ((4, 5, 6, 7), None),
    "n1-spatial": ((1, 3, 4, 5), None),
    "c1": ((5, 1, 3, 4), None),
    "3d": ((3, 4, 9), None),
    "2d": ((7, 6), None),
    "2d-n2-c1": ((2, 1), None),
    "5d": ((2, 3, 2, 3, 4), None),
    "channels_last": ((4, 6, 5, 3), lambda t: t.to(memory_format=torch.channels_last)),
    "channels_last_c17": ((3, 17, 4, 5), lambda t: t.to(memory_format=torch.channels_last)),
    "channels_last_3d": ((2, 5, 3, 2, 4), lambda t: t.to(memory_format=torch.channels_last_3d)),
    "transposed": ((3, 4, 5, 6), lambda t: t.transpose(2, 3)),
    "sliced": ((3, 4, 5, 12), lambda t: t[..., ::2]),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", list(SHAPES))
def test_shapes_and_layouts(impl, case, dtype, training, rng):
    name, device = impl
    shape, layout = SHAPES[case]
    out, x = check_against_torch(shape, dtype, device, rng, act="lrelu", training=training,
                                 layout=layout, gatol=2e-5 if dtype == torch.float32 else None)
    # channels_last (4-D) is kept by every kernel (the interface's promise); the C++ kernels also
    # keep any channels-fastest layout, channels_last_3d included
    keeps = case in ("channels_last", "channels_last_c17") or (case == "channels_last_3d" and name in ("cpu", "cuda"))
    if name != "reference" and keeps:
        fmt = torch.channels_last_3d if case.endswith("3d") else torch.channels_last
        assert out.is_contiguous(memory_format=fmt), f"batch_norm_act must keep {case}"


def test_larger_than_one_chunk(impl, rng):
    """Enough values per channel that the CPU kernels cut channels into several parallel pieces."""
    name, device = impl
    if name == "triton" and device == "cpu":
        pytest.skip("the interpreter at this size takes minutes; the small cases cover its code paths")
    check_against_torch((5, 3, 80, 90), torch.float32, device, rng, act="tanh", gatol=1e-4)
    check_against_torch((40, 3, 30, 25), torch.float32, device, rng, act="relu", gatol=1e-4,
                        layout=lambda t: t.to(memory_format=torch.channels_last))


@pytest.mark.parametrize("with_w,with_b", [(False, False), (True, False), (False, True)],
                         ids=["none", "weight-only", "bias-only"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_weight_bias_none(impl, with_w, with_b, training, rng):
    _, device = impl
    check_against_torch((3, 4, 5), torch.float64, device, rng, act="elu", training=training,
                        with_w=with_w, with_b=with_b)


def test_training_without_running_stats(impl, rng):
    _, device = impl
    check_against_torch((4, 3, 2, 3), torch.float64, device, rng, act="swish", with_running=False)


def test_large_mean_float32(impl, rng):
    """|mean| >> std (a convolution's output with a large bias): the statistics keep their digits."""
    _, device = impl
    check_against_torch((4, 3, 6, 6), torch.float32, device, rng, act="linear", mean_offset=300.0,
                        atol=2e-4, rtol=1e-4, gatol=2e-4)


def test_running_stats_several_steps(impl, rng):
    """Momentum and unbiased variance, over several steps, buffers float32, input float64 and back."""
    _, device = impl
    c = 3
    rm, rv = torch.zeros(c, device=device), torch.ones(c, device=device)
    rm_t, rv_t = rm.clone(), rv.clone()
    for step in range(3):
        x = randn((4, c, 3, 2), torch.float32, device, rng, scale=1.0 + step) + step
        ops.batch_norm_act(x, None, None, rm, rv, True, 0.1, 1e-5, "relu")
        F.batch_norm(x, rm_t, rv_t, None, None, True, 0.1, 1e-5)
    assert_close(rm, rm_t, atol=1e-6, name="running_mean after 3 steps")
    assert_close(rv, rv_t, atol=1e-6, name="running_var after 3 steps")


def test_eval_does_not_mutate(impl, rng):
    _, device = impl
    x, w, b, rm, rv = make_case((3, 4, 5), torch.float64, device, rng)
    rm0, rv0 = rm.clone(), rv.clone()
    ops.batch_norm_act(x, w, b, rm, rv, False, 0.5, EPS, "relu")
    assert torch.equal(rm, rm0) and torch.equal(rv, rv0)


def test_empty_batch(impl, rng):
    """N = 0: an empty output as torch gives, running statistics untouched, zero weight / bias
    gradients (torch's: zeros or none at all)."""
    _, device = impl
    x = torch.zeros(0, 3, 4, device=device, requires_grad=True)
    w = torch.ones(3, device=device, requires_grad=True)
    b = torch.zeros(3, device=device, requires_grad=True)
    rm, rv = torch.zeros(3, device=device), torch.ones(3, device=device)
    out = ops.batch_norm_act(x, w, b, rm, rv, True, 0.1, 1e-5, "relu")
    expected = F.relu(F.batch_norm(x, rm.clone(), rv.clone(), w, b, True, 0.1, 1e-5))
    assert out.shape == expected.shape == (0, 3, 4)
    assert torch.equal(rm, torch.zeros(3, device=device)) and torch.equal(rv, torch.ones(3, device=device))
    gx, gw, gb = torch.autograd.grad(out.sum(), (x, w, b), allow_unused=True, materialize_grads=True)
    assert gx.shape == (0, 3, 4)
    assert torch.equal(gw, torch.zeros(3, device=device)) and torch.equal(gb, torch.zeros(3, device=device))
    out_eval = ops.batch_norm_act(x, w, b, rm, rv, False, 0.1, 1e-5, "relu")
    assert out_eval.shape == (0, 3, 4)


def test_zero_channels(impl):
    _, device = impl
    x = torch.randn(2, 0, 3, device=device)
    out = ops.batch_norm_act(x, None, None, torch.zeros(0, device=device), torch.ones(0, device=device), True,
                             0.1, 1e-5, "relu")
    assert out.shape == (2, 0, 3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_half_precision(impl, dtype, layout, rng):
    """Computed in float32, rounded once: within a few units in the last place of the format of
    the float64 result on the same (rounded) input; running statistics float32."""
    _, device = impl
    tol = {torch.bfloat16: 2e-2, torch.float16: 4e-3}[dtype]
    fmt = (lambda t: t.to(memory_format=torch.channels_last)) if layout == "channels_last" else None
    check_against_torch((4, 8, 3, 5), dtype, device, rng, act="lrelu", layout=fmt, atol=tol, rtol=tol)
    check_against_torch((4, 8, 3, 5), dtype, device, rng, act="tanh", training=False, layout=fmt, atol=tol,
                        rtol=tol)


# ---- gradcheck, double backward -----------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("act", ["lrelu", "tanh", "softplus"])
def test_gradcheck(impl, act, training, rng):
    name, device = impl
    fast = name == "reference" or (name == "triton" and device == "cpu")  # (the reference is torch's own)
    x = randn((3, 2, 2, 2), torch.float64, device, rng, requires_grad=True)
    w = torch.tensor([1.3, -0.7], dtype=torch.float64, device=device, requires_grad=True)
    b = torch.tensor([0.05, -0.1], dtype=torch.float64, device=device, requires_grad=True)
    rm = torch.tensor([0.2, -0.3], dtype=torch.float64, device=device)
    rv = torch.tensor([0.8, 1.4], dtype=torch.float64, device=device)
    alpha = ALPHA.get(act, 0.0)
    # running statistics None in training, so gradcheck's repeated calls see one function
    fn = lambda x, w, b: ops.batch_norm_act(x, w, b, None if training else rm, None if training else rv,  # noqa: E731
                                            training, 0.1, EPS, act, alpha)
    assert torch.autograd.gradcheck(fn, (x, w, b), fast_mode=fast)


def test_double_backward_is_an_error(kernel_impl, rng):
    _, device = kernel_impl
    x, w, b, rm, rv = make_case((3, 2, 4), torch.float64, device, rng)
    out = ops.batch_norm_act(x, w, b, rm, rv, True, 0.1, EPS, "tanh")
    (gx,) = torch.autograd.grad(out, x, torch.randn_like(out), create_graph=True)
    with pytest.raises(RuntimeError, match=r"derivative for ganfast(_triton)?::batch_norm_act_backward is not "
                                           r"implemented"):
        torch.autograd.grad(gx.sum(), (x, w))


def test_reference_double_backward(rng):
    """The reference is any-order differentiable (torch's own BatchNorm)."""
    x, w, b, _, _ = make_case((3, 2, 4), torch.float64, "cpu", rng)
    fn = lambda x, w, b: reference.batch_norm_act(x, w, b, None, None, True, 0.1, EPS, "tanh", 0.0)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_gradients_not_requested(kernel_impl, rng):
    """Only the input requires grad: weight / bias gradients are not returned to them."""
    _, device = kernel_impl
    x = randn((3, 2, 4), torch.float32, device, rng, requires_grad=True)
    w, b = torch.ones(2, device=device), torch.zeros(2, device=device)
    out = ops.batch_norm_act(x, w, b, None, None, True, 0.1, EPS, "relu")
    out.sum().backward()
    assert x.grad is not None and w.grad is None and b.grad is None
    with torch.no_grad():
        y = ops.batch_norm_act(x, w, b, None, None, True, 0.1, EPS, "relu")
    assert not y.requires_grad


# ---- opcheck -------------------------------------------------------------------------------------

OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _op_args(rng, training):
    x = randn((3, 4, 2, 3), torch.float64, gen=rng)
    w = randn((4,), torch.float64, gen=rng)
    b = randn((4,), torch.float64, gen=rng)
    rm, rv = randn((4,), torch.float64, gen=rng), torch.rand(4, dtype=torch.float64, generator=rng) + 0.5
    rg = lambda t: t.clone().requires_grad_(True)  # noqa: E731
    fwd = (rg(x), rg(w), rg(b), rm, rv, training, 0.1, EPS, "lrelu", 0.2)
    _, mean, invstd = torch.ops.ganfast.batch_norm_act(x, w, b, rm.clone(), rv.clone(), training, 0.1, EPS, "lrelu",
                                                       0.2) if cpp_family_registered("batch_norm_act", "CPU") else \
        (None, x.mean((0, 2, 3)), (x.var((0, 2, 3), unbiased=False) + EPS).rsqrt())
    go = randn((3, 4, 2, 3), torch.float64, gen=rng)
    bwd = (go, x, w, None, mean, invstd, training, "swish", 0.0)
    return [("batch_norm_act", fwd), ("batch_norm_act_backward", bwd)]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("index", range(2), ids=["forward", "backward"])
def test_opcheck_cpp_ops(index, training, rng):
    if not cpp_family_registered("batch_norm_act", "CPU"):
        pytest.fail("ganfast::batch_norm_act has no CPU kernel in this build")
    name, args = _op_args(rng, training)[index]
    torch.use_deterministic_algorithms(False)  # opcheck compares against real runs; no poisoning needed
    torch.library.opcheck(getattr(torch.ops.ganfast, name).default, args, test_utils=OPCHECK_TESTS)


@pytest.mark.parametrize("index", range(2), ids=["forward", "backward"])
def test_opcheck_triton_ops(index, rng):
    from conftest import implementation_device
    implementation_device("triton", "batch_norm_act")
    name, args = _op_args(rng, True)[index]
    if name == "batch_norm_act":
        # a custom op that mutates its arguments has no autograd formula of its own (ganfast.ops wraps
        # it in an autograd.Function): checked without inputs that require grad
        args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    torch.use_deterministic_algorithms(False)
    torch.library.opcheck(getattr(torch.ops.ganfast_triton, name).default, args, test_utils=OPCHECK_TESTS)


# ---- errors --------------------------------------------------------------------------------------


def test_errors(impl):
    _, device = impl
    x = torch.randn(2, 3, 4, device=device)
    c3 = torch.ones(3, device=device)
    bna = ops.batch_norm_act
    with pytest.raises(ValueError, match=r"input must have shape \(N, C, \*\) \(at least 2 dims\); got shape \[5\]"):
        bna(torch.randn(5, device=device), None, None, None, None, True)
    with pytest.raises(TypeError, match="input must be a floating-point tensor"):
        bna(torch.ones(2, 3, dtype=torch.int64, device=device), None, None, None, None, True)
    with pytest.raises(ValueError, match=r"weight must have shape \(C,\) = \(3,\) \(input.size\(1\)\) or \(N, C\) = "
                                         r"\(2, 3\) \(one per sample\); got \[4\]"):
        bna(x, torch.ones(4, device=device), None, None, None, True)
    with pytest.raises(ValueError, match=r"bias must have shape \(C,\) = \(3,\)"):
        bna(x, None, torch.ones(1, 3, device=device), None, None, True)
    with pytest.raises(ValueError, match=r"running_mean must have shape \(C,\) = \(3,\)"):
        bna(x, None, None, torch.zeros(2, device=device), c3, True)
    with pytest.raises(ValueError, match=r"running_var must have shape \(C,\) = \(3,\)"):
        bna(x, None, None, c3, torch.ones(5, device=device), True)
    with pytest.raises(TypeError, match="weight must be a floating-point tensor"):
        bna(x, torch.ones(3, dtype=torch.int32, device=device), None, None, None, True)
    with pytest.raises(ValueError, match="running_mean and running_var must be given together"):
        bna(x, None, None, torch.zeros(3, device=device), None, True)
    with pytest.raises(TypeError, match="running_mean and running_var must have the same dtype"):
        bna(x, None, None, torch.zeros(3, device=device), torch.ones(3, dtype=torch.float64, device=device), True)
    with pytest.raises(ValueError, match="expected more than 1 value per channel when training; got input of shape "
                                         r"\[1, 3\]"):
        bna(torch.randn(1, 3, device=device), None, None, None, None, True)
    with pytest.raises(ValueError, match="expected more than 1 value per channel when training"):
        bna(torch.randn(1, 3, 1, 1, device=device), None, None, None, None, True)
    with pytest.raises(ValueError, match="running_mean and running_var are required when training is False"):
        bna(x, None, None, None, None, False)
    with pytest.raises(ValueError, match="act must be one of"):
        bna(x, None, None, None, None, True, act="gelu")
    for eps in (0.0, -1.0, float("nan")):  # as torch's batch_norm: eps > 0 when training
        with pytest.raises(ValueError, match="eps must be positive when training; got"):
            bna(x, None, None, None, None, True, eps=eps)
    # eps = 0 in eval normalises with the running variance, as torch's
    bna(x, None, None, torch.zeros(3, device=device), c3, False, eps=0.0)
    # one value per channel is fine in eval, as torch's
    out = bna(torch.randn(1, 3, device=device), None, None, torch.zeros(3, device=device), c3, False)
    assert out.shape == (1, 3)


def test_backward_op_errors(rng):
    """batch_norm_act_backward's own checks (C++ op)."""
    if not cpp_family_registered("batch_norm_act", "CPU"):
        pytest.fail("ganfast::batch_norm_act has no CPU kernel in this build")
    op = torch.ops.ganfast.batch_norm_act_backward
    x, go, m, s = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.zeros(3), torch.ones(3)
    with pytest.raises(ValueError, match=r"grad_output size \(\[2, 3, 5\]\) must be the same as input size"):
        op(torch.randn(2, 3, 5), x, None, None, m, s, True, "relu", 0.0)
    with pytest.raises(ValueError, match=r"save_mean must have shape \(C,\) = \(3,\)"):
        op(go, x, None, None, torch.zeros(4), s, True, "relu", 0.0)
    with pytest.raises(TypeError, match=r"save_invstd must be Float \(the compute dtype of Float input\); got Double"):
        op(go, x, None, None, m, s.double(), True, "relu", 0.0)
    with pytest.raises(ValueError, match="act must be one of"):
        op(go, x, None, None, m, s, True, "gelu", 0.0)


def test_python_checks_match_cpp(rng):
    """ganfast/_args.py's twin raises the same messages as ganfast_common.h."""
    if not cpp_family_registered("batch_norm_act", "CPU"):
        pytest.fail("ganfast::batch_norm_act has no CPU kernel in this build")
    from ganfast import _args
    x = torch.randn(2, 3, 4)
    cases = [
        (torch.randn(5), None, None, None, None, True),
        (x, torch.ones(4), None, None, None, True),
        (x, None, None, torch.zeros(3), None, True),
        (x, None, None, torch.zeros(3), torch.ones(3, dtype=torch.float64), True),
        (torch.randn(1, 3), None, None, None, None, True),
        (x, None, None, None, None, False),
    ]
    cases = [(*args, 1e-5) for args in cases] + [(x, None, None, None, None, True, 0.0),
                                                  (x, None, None, None, None, True, -0.001)]
    for *args, eps in cases:
        with pytest.raises(Exception) as cpp:
            torch.ops.ganfast.batch_norm_act(*args, 0.1, eps, "relu", 0.0)
        with pytest.raises(Exception) as py:
            _args.check_batch_norm_act("ganfast::batch_norm_act", *args, eps)
        assert type(cpp.value) is type(py.value) and str(py.value) in str(cpp.value), (cpp.value, py.value)


# ---- the Triton finalize and ticket counters ------------------------------------------------------


def test_triton_finalize_rows():
    from ganfast.triton import batch_norm_act as tbn

    assert tbn.finalize_rows(1) == (tbn.FINALIZE_ROWS, 1)
    assert tbn.finalize_rows(2048) == (64, 32)  # DCGAN's last BatchNorm at batch 128
    rows, chunks = tbn.finalize_rows(100000)  # rows grow so the second level stays short
    assert chunks <= tbn.FINALIZE_CHUNKS and rows * chunks >= 100000 and rows % tbn.BLOCK_T == 0
    assert tbn.finalize_rows(100, rows=8) == (8, 13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("T,rows", [(100, 8), (2048, None)], ids=["shrunk-chunks", "production-chunks"])
def test_triton_finalize_two_levels(T, rows, dtype, rng):
    """The finalize's two-level sum over T partial rows (chunks of rows in parallel, then the chunk
    sums) against float64: mean (with the shift), invstd, unbiased variance, the running statistics;
    C > 128 so two channel blocks each take tickets; bit-identical on repeat; counters left at 0."""
    from conftest import implementation_device
    from ganfast.triton import _common
    from ganfast.triton import batch_norm_act as tbn

    device = torch.device(implementation_device("triton", "batch_norm_act"))
    C, per_row = 130, 3
    assert tbn.finalize_rows(T, rows)[1] > 1, "the test must use both levels"
    x = randn((T, per_row, C), torch.float64, device, rng, scale=2.0) + 50.0  # |mean| >> std
    shift = x[0, 0].clone()
    acc = _common.acc_dtype(dtype)
    partial = torch.stack([(x - shift).sum(1), ((x - shift) ** 2).sum(1)]).to(acc[0])
    M = T * per_row
    rm0 = randn((C,), acc[0], device, rng)
    rv0 = 0.5 + torch.rand(C, generator=rng, dtype=acc[0]).to(device)
    # float64 oracle from the same (rounded) partials
    p64 = partial.double().sum(1)
    d = p64[0] / M
    var = (p64[1] / M - d * d).clamp_min(0)
    mean64, unbiased64 = d + shift, var * M / (M - 1)
    tol = {} if dtype == torch.float64 else {"atol": 1e-6, "rtol": 1e-6}
    results = []
    for _ in range(2):
        rm, rv = rm0.clone(), rv0.clone()
        mean, invstd, var_out = tbn.finalize(partial, T, C, M, rm, rv, True, MOMENTUM, EPS, acc, device,
                                             shift=shift, shift_stride=1, var_out=True, rows=rows)
        assert_close(mean, mean64.to(acc[0]), name="mean", **tol)
        assert_close(invstd, (var + EPS).rsqrt().to(acc[0]), name="invstd", **tol)
        assert_close(var_out, unbiased64.to(acc[0]), name="unbiased variance", **tol)
        assert_close(rm, ((1 - MOMENTUM) * rm0.double() + MOMENTUM * mean64).to(acc[0]), name="running_mean", **tol)
        assert_close(rv, ((1 - MOMENTUM) * rv0.double() + MOMENTUM * unbiased64).to(acc[0]),
                     name="running_var", **tol)
        assert not _common.counters(device, 2).any(), "finalize left a ticket counter taken"
        results.append((mean, invstd, var_out, rm, rv))
    for a, b in zip(*results):
        assert torch.equal(a, b), "finalize must be bit-identical on repeat"


def test_triton_backward_counters_reset(rng):
    """The backward reduction's per-channel-block ticket counters (C > 128: two blocks) are reset
    by their last programs: two backward passes in a row are both right."""
    import ganfast
    from conftest import implementation_device
    from ganfast.triton import _common

    device = implementation_device("triton", "batch_norm_act")
    with ganfast.use_backend("triton"):
        for _ in range(2):
            check_against_torch((2, 130, 3, 3), torch.float64, device, rng, act="lrelu")
            assert not _common.counters(torch.device(device), 2).any()
