"""Conditional BatchNorm (issue 12): ganfast.ops.batch_norm_act with weight / bias of shape (N, C) (one
affine per sample), every implementation present (reference, cpu, cuda through the emulator, triton),
and the module ganfast.nn.ConditionalBatchNorm2d.

The oracle is written here from torch.nn.functional, independently of ganfast/reference, in float64:
act(F.batch_norm(x, rm, rv, None, None, training, momentum, eps) * w[n, c] + b[n, c]), with the
output, the running statistics, the gradients of x, weight and bias ((N, C) for a per-sample operand)
under a random upstream gradient, every combination of (N, C) / (C,) / None, odd shapes and layouts,
the empty batch, gradcheck, opcheck of the C++ and Triton ops, double backward raising and the
argument errors. Outputs are poisoned (NaN-filled empty tensors) as in test_batch_norm_act.py.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close, cpp_family_registered, family_fixtures, randn
from ganfast import ops
from ganfast.nn import ConditionalBatchNorm2d

impl, kernel_impl = family_fixtures("batch_norm_act")

ALPHA = {"lrelu": 0.2, "elu": 1.0}
MOMENTUM, EPS = 0.3, 1e-3


@pytest.fixture(autouse=True)
def poison_outputs():
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(old)


def torch_act(act, v, alpha):
    return {"linear": lambda: v, "relu": lambda: F.relu(v), "lrelu": lambda: F.leaky_relu(v, alpha),
            "tanh": lambda: torch.tanh(v), "elu": lambda: F.elu(v, alpha), "swish": lambda: F.silu(v),
            "softplus": lambda: F.softplus(v, beta=1.0, threshold=1000.0)}[act]()


def bcast(t, x):
    """A (C,) or (N, C) operand against x (N, C, *)."""
    return t.reshape(((t.size(0), t.size(1)) if t.dim() == 2 else (1, t.size(0))) + (1,) * (x.dim() - 2))


def formula(x, w, b, rm, rv, training, act, alpha, momentum=MOMENTUM, eps=EPS):
    z = F.batch_norm(x, rm, rv, None, None, training, momentum, eps)
    if w is not None:
        z = z * bcast(w, x)
    if b is not None:
        z = z + bcast(b, x)
    return torch_act(act, z, alpha)


def _f64(t):
    return None if t is None else t.detach().to(torch.float64).requires_grad_(t.requires_grad)


def operand(mode, n, c, dtype, device, rng, center):
    """mode 'nc' (N, C), 'c' (C,) or None."""
    if mode is None:
        return None
    shape = (n, c) if mode == "nc" else (c,)
    return (center + 0.5 * randn(shape, torch.float64, device, rng)).to(dtype).requires_grad_(True)


def check_against_torch(shape, dtype, device, rng, *, w_mode="nc", b_mode="nc", act="relu", training=True,
                        with_running=True, layout=None, atol=None, rtol=None, gatol=None):
    alpha = ALPHA.get(act, 0.0)
    n, c = shape[0], shape[1]
    x = randn(shape, dtype, device, rng, scale=1.5) + 0.25
    if layout is not None:
        x = layout(x)
    x.requires_grad_(True)
    w = operand(w_mode, n, c, dtype, device, rng, 1.0)
    b = operand(b_mode, n, c, dtype, device, rng, 0.0)
    rm = rv = None
    if with_running:
        rdt = torch.float32 if dtype != torch.float64 else dtype
        rm = randn((c,), rdt, device, rng, scale=0.3)
        rv = (0.5 + torch.rand(c, generator=rng, dtype=torch.float64)).to(rdt).to(device)
    rm64, rv64 = _f64(rm), _f64(rv)
    out = ops.batch_norm_act(x, w, b, rm, rv, training, MOMENTUM, EPS, act, alpha)
    assert out.dtype == dtype and out.shape == x.shape
    x64, w64, b64 = _f64(x), _f64(w), _f64(b)
    out64 = formula(x64, w64, b64, rm64, rv64, training, act, alpha)
    assert_close(out, out64.to(dtype), atol=atol, rtol=rtol, name=f"{act}: output")
    if with_running:
        assert_close(rm, rm64.to(rm.dtype), atol=1e-6 if rm.dtype != torch.float64 else None, name="running_mean")
        assert_close(rv, rv64.to(rv.dtype), atol=1e-6 if rv.dtype != torch.float64 else None, name="running_var")
    up = randn(x.shape, dtype, device, rng)
    inputs = [t for t in (x, w, b) if t is not None]
    names = [nm for nm, t in (("input", x), ("weight", w), ("bias", b)) if t is not None]
    grads = torch.autograd.grad(out, inputs, up)
    grads64 = torch.autograd.grad(out64, [t for t in (x64, w64, b64) if t is not None], up.to(torch.float64))
    for nm, g, g64 in zip(names, grads, grads64):
        assert g.dtype == dtype and g.shape == g64.shape, (nm, g.shape, g64.shape)
        assert_close(g, g64.to(dtype), atol=gatol if gatol is not None else atol, rtol=rtol,
                     name=f"{act}: gradient w.r.t. {nm}")
    return out


# ---- values, running statistics, gradients ------------------------------------------------------

MODES = [("nc", "nc"), ("nc", "c"), ("c", "nc"), ("nc", None), (None, "nc")]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("w_mode,b_mode", MODES, ids=[f"w{w}-b{b}" for w, b in MODES])
def test_weight_bias_modes(impl, w_mode, b_mode, training, rng):
    _, device = impl
    check_against_torch((3, 4, 3, 5), torch.float64, device, rng, w_mode=w_mode, b_mode=b_mode, act="lrelu",
                        training=training)


@pytest.mark.parametrize("act", ["linear", "relu", "tanh", "elu", "swish", "softplus"])
def test_activations(impl, act, rng):
    _, device = impl
    check_against_torch((4, 3, 2, 3), torch.float64, device, rng, act=act)


SHAPES = {
    "nchw": ((4, 5, 6, 7), None),
    "n2-c1": ((2, 1, 3, 4), None),
    "n1": ((1, 3, 4, 5), None),
    "3d": ((3, 4, 9), None),
    "2d": ((7, 6), None),
    "5d": ((2, 3, 2, 3, 4), None),
    "channels_last": ((4, 6, 5, 3), lambda t: t.to(memory_format=torch.channels_last)),
    "transposed": ((3, 4, 5, 6), lambda t: t.transpose(2, 3)),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", list(SHAPES))
def test_shapes_and_layouts(impl, case, dtype, training, rng):
    _, device = impl
    shape, layout = SHAPES[case]
    check_against_torch(shape, dtype, device, rng, act="lrelu", training=training, layout=layout,
                        gatol=3e-5 if dtype == torch.float32 else None)


def test_larger_than_one_chunk(impl, rng):
    """Enough values per instance that the CPU kernels cut rows into several pieces."""
    name, device = impl
    if name == "triton" and device == "cpu":
        pytest.skip("the interpreter at this size takes minutes; the small cases cover its code paths")
    check_against_torch((6, 3, 40, 45), torch.float32, device, rng, act="tanh", gatol=1e-4)


def test_training_without_running_stats(impl, rng):
    _, device = impl
    check_against_torch((4, 3, 2, 3), torch.float64, device, rng, act="swish", with_running=False)


def test_zero_per_sample_weight(impl, rng):
    """w[n, c] = 0 for some samples: no division by the weight anywhere (the input gradient of those
    samples is the batch terms only)."""
    _, device = impl
    x = randn((4, 3, 2, 3), torch.float64, device, rng, requires_grad=True)
    w = randn((4, 3), torch.float64, device, rng)
    w[1] = 0.0
    w[2, 1] = 0.0
    w.requires_grad_(True)
    out = ops.batch_norm_act(x, w, None, None, None, True, 0.1, EPS, "linear")
    out64 = formula(x, w, None, None, None, True, "linear", 0.0, 0.1)
    up = randn(x.shape, torch.float64, device, rng)
    g = torch.autograd.grad(out, (x, w), up)
    g64 = torch.autograd.grad(out64, (x, w), up)
    assert_close(out, out64.detach(), name="output")
    for nm, a, e in zip(("input", "weight"), g, g64):
        assert torch.isfinite(a).all()
        assert_close(a, e, name=f"gradient w.r.t. {nm}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision(impl, dtype, rng):
    _, device = impl
    tol = {torch.bfloat16: 2e-2, torch.float16: 4e-3}[dtype]
    check_against_torch((4, 8, 3, 5), dtype, device, rng, act="lrelu", atol=tol, rtol=tol)
    check_against_torch((4, 8, 3, 5), dtype, device, rng, act="tanh", training=False, atol=tol, rtol=tol)


def test_empty_batch(impl, rng):
    """N = 0 with (0, C) weight / bias: an empty output, running statistics untouched, gradients of
    the operands' shapes; eval too. S = 0 with N > 0: zero (N, C) parameter gradients."""
    _, device = impl
    x = torch.zeros(0, 3, 4, device=device, requires_grad=True)
    w = torch.ones(0, 3, device=device, requires_grad=True)
    b = torch.zeros(3, device=device, requires_grad=True)
    rm, rv = torch.zeros(3, device=device), torch.ones(3, device=device)
    out = ops.batch_norm_act(x, w, b, rm, rv, True, 0.1, 1e-5, "relu")
    assert out.shape == (0, 3, 4)
    assert torch.equal(rm, torch.zeros(3, device=device)) and torch.equal(rv, torch.ones(3, device=device))
    gx, gw, gb = torch.autograd.grad(out.sum(), (x, w, b), allow_unused=True, materialize_grads=True)
    assert gx.shape == (0, 3, 4) and gw.shape == (0, 3) and gb.shape == (3,)
    assert torch.equal(gb, torch.zeros(3, device=device))
    assert ops.batch_norm_act(x, w, b, rm, rv, False, 0.1, 1e-5, "relu").shape == (0, 3, 4)
    x = torch.zeros(2, 3, 0, device=device, requires_grad=True)
    w = torch.ones(2, 3, device=device, requires_grad=True)
    out = ops.batch_norm_act(x, w, None, None, None, True, 0.1, 1e-5, "relu")
    gx, gw = torch.autograd.grad(out.sum(), (x, w), allow_unused=True, materialize_grads=True)
    assert gx.shape == (2, 3, 0) and torch.equal(gw, torch.zeros(2, 3, device=device))


# ---- gradcheck, double backward ------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("act", ["lrelu", "softplus"])
def test_gradcheck(impl, act, training, rng):
    name, device = impl
    fast = name == "reference" or (name == "triton" and device == "cpu")
    x = randn((3, 2, 2, 2), torch.float64, device, rng, requires_grad=True)
    w = (1.0 + 0.4 * randn((3, 2), torch.float64, device, rng)).requires_grad_(True)
    b = randn((3, 2), torch.float64, device, rng, scale=0.2, requires_grad=True)
    rm = torch.tensor([0.2, -0.3], dtype=torch.float64, device=device)
    rv = torch.tensor([0.8, 1.4], dtype=torch.float64, device=device)
    alpha = ALPHA.get(act, 0.0)
    fn = lambda x, w, b: ops.batch_norm_act(x, w, b, None if training else rm, None if training else rv,  # noqa: E731
                                            training, 0.1, EPS, act, alpha)
    assert torch.autograd.gradcheck(fn, (x, w, b), fast_mode=fast)


def test_double_backward_is_an_error(kernel_impl, rng):
    _, device = kernel_impl
    x = randn((3, 2, 4), torch.float64, device, rng, requires_grad=True)
    w = randn((3, 2), torch.float64, device, rng, requires_grad=True)
    out = ops.batch_norm_act(x, w, None, None, None, True, 0.1, EPS, "tanh")
    (gx,) = torch.autograd.grad(out, x, torch.randn_like(out), create_graph=True)
    with pytest.raises(RuntimeError, match=r"derivative for ganfast(_triton)?::batch_norm_act_backward is not "
                                           r"implemented"):
        torch.autograd.grad(gx.sum(), (x, w))


# ---- opcheck -------------------------------------------------------------------------------------

OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _op_args(rng, training, w_shape, b_shape):
    x = randn((3, 4, 2, 3), torch.float64, gen=rng)
    w = randn(w_shape, torch.float64, gen=rng)
    b = randn(b_shape, torch.float64, gen=rng)
    rm, rv = randn((4,), torch.float64, gen=rng), torch.rand(4, dtype=torch.float64, generator=rng) + 0.5
    rg = lambda t: t.clone().requires_grad_(True)  # noqa: E731
    fwd = (rg(x), rg(w), rg(b), rm, rv, training, 0.1, EPS, "lrelu", 0.2)
    mean, invstd = x.mean((0, 2, 3)), (x.var((0, 2, 3), unbiased=False) + EPS).rsqrt()
    go = randn((3, 4, 2, 3), torch.float64, gen=rng)
    bwd = (go, x, w, b, mean, invstd, training, "swish", 0.0)
    return [("batch_norm_act", fwd), ("batch_norm_act_backward", bwd)]


SHAPE_PAIRS = [((3, 4), (3, 4)), ((4,), (3, 4)), ((3, 4), (4,))]


@pytest.mark.parametrize("shapes", SHAPE_PAIRS, ids=["nc-nc", "c-nc", "nc-c"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("index", range(2), ids=["forward", "backward"])
def test_opcheck_cpp_ops(index, training, shapes, rng):
    if not cpp_family_registered("batch_norm_act", "CPU"):
        pytest.fail("ganfast::batch_norm_act has no CPU kernel in this build")
    name, args = _op_args(rng, training, *shapes)[index]
    torch.use_deterministic_algorithms(False)
    torch.library.opcheck(getattr(torch.ops.ganfast, name).default, args, test_utils=OPCHECK_TESTS)


def test_opcheck_cuda_emulated_ops(rng):
    """The CUDA kernels' per-sample path through the emulator, opcheck's schema / fake checks."""
    from conftest import KERNEL_IMPLEMENTATIONS, implementation_device, selected

    emulated = [n for n in KERNEL_IMPLEMENTATIONS if n.startswith("cuda-emu")]
    if not emulated:
        pytest.skip("no CUDA emulator implementation here")
    implementation_device(emulated[0], "batch_norm_act")
    with selected(emulated[0]):
        torch.use_deterministic_algorithms(False)
        for name, args in _op_args(rng, True, (3, 4), (4,)):
            torch.library.opcheck(getattr(torch.ops.ganfast, name).default, args,
                                  test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("shapes", SHAPE_PAIRS[:2], ids=["nc-nc", "c-nc"])
@pytest.mark.parametrize("index", range(2), ids=["forward", "backward"])
def test_opcheck_triton_ops(index, shapes, rng):
    from conftest import implementation_device
    implementation_device("triton", "batch_norm_act")
    name, args = _op_args(rng, True, *shapes)[index]
    if name == "batch_norm_act":
        args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    torch.use_deterministic_algorithms(False)
    torch.library.opcheck(getattr(torch.ops.ganfast_triton, name).default, args, test_utils=OPCHECK_TESTS)


# ---- errors --------------------------------------------------------------------------------------


def test_errors(impl):
    _, device = impl
    x = torch.randn(2, 3, 4, device=device)
    bna = ops.batch_norm_act
    expected = r"must have shape \(C,\) = \(3,\) \(input.size\(1\)\) or \(N, C\) = \(2, 3\) \(one per sample\); got "
    with pytest.raises(ValueError, match="weight " + expected + r"\[5, 3\]"):
        bna(x, torch.ones(5, 3, device=device), None, None, None, True)
    with pytest.raises(ValueError, match="weight " + expected + r"\[2, 4\]"):
        bna(x, torch.ones(2, 4, device=device), None, None, None, True)
    with pytest.raises(ValueError, match="weight " + expected + r"\[4\]"):
        bna(x, torch.ones(4, device=device), None, None, None, True)
    with pytest.raises(ValueError, match="bias " + expected + r"\[2, 3, 1\]"):
        bna(x, None, torch.ones(2, 3, 1, device=device), None, None, True)
    with pytest.raises(ValueError, match="bias " + expected + r"\[1, 3\]"):
        bna(x, torch.ones(2, 3, device=device), torch.ones(1, 3, device=device), None, None, True)


def test_cpp_and_python_checks_agree():
    """ganfast/_args.py's check_affine_operand raises what ganfast_common.h does; instance_norm_act
    keeps accepting only (C,)."""
    if not cpp_family_registered("batch_norm_act", "CPU"):
        pytest.fail("ganfast::batch_norm_act has no CPU kernel in this build")
    from ganfast import _args
    x = torch.randn(2, 3, 4)
    for w, b in ((torch.ones(5, 3), None), (None, torch.ones(2, 3, 1)), (torch.ones(2, 4), None)):
        with pytest.raises(ValueError) as cpp:
            torch.ops.ganfast.batch_norm_act(x, w, b, None, None, True, 0.1, 1e-5, "relu", 0.0)
        with pytest.raises(ValueError) as py:
            _args.check_batch_norm_act("ganfast::batch_norm_act", x, w, b, None, None, True, 1e-5)
        assert str(py.value) in str(cpp.value), (cpp.value, py.value)
    with pytest.raises(ValueError, match=r"weight must have shape \(C,\) = \(3,\)"):
        torch.ops.ganfast.instance_norm_act(x, torch.ones(2, 3), None, 1e-5, "relu", 0.0)
    with pytest.raises(ValueError, match=r"weight must have shape \(C,\) = \(3,\)"):
        _args.check_instance_norm_act("ganfast::instance_norm_act", x, torch.ones(2, 3), None, 1e-5)


def test_instance_norm_act_refuses_per_sample(impl):
    _, device = impl
    x = torch.randn(2, 3, 4, device=device)
    with pytest.raises(ValueError, match=r"bias must have shape \(C,\) = \(3,\) \(input.size\(1\)\); got \[2, 3\]"):
        ops.instance_norm_act(x, None, torch.ones(2, 3, device=device), 1e-5, "relu")


# ---- the module ------------------------------------------------------------------------------------


def eager_ccbn(m, x, cond, rm, rv, training, momentum):
    """The eager composite the module replaces (BigGAN-PyTorch's ccbn + activation)."""
    gain = 1 + F.linear(cond, m.gain.weight)
    bias = F.linear(cond, m.bias.weight)
    z = F.batch_norm(x, rm, rv, None, None, training, momentum, m.eps)
    return torch_act(m.act, z * gain[:, :, None, None] + bias[:, :, None, None], m.alpha or 0.2)


@pytest.mark.parametrize("act", ["relu", "lrelu"])
def test_module_against_eager(impl, act, rng):
    """Values, gradients of x, cond and both Linear weights, running statistics and
    num_batches_tracked over two training steps, then eval; float64."""
    _, device = impl
    torch.manual_seed(0)
    m = ConditionalBatchNorm2d(5, 7, act=act, momentum=0.2).double().to(device)
    with torch.no_grad():  # a non-zero gain / bias
        m.gain.weight.normal_(0, 0.3)
        m.bias.weight.normal_(0, 0.3)
    rm, rv = m.running_mean.clone(), m.running_var.clone()
    for step in range(2):
        x = randn((4, 5, 3, 3), torch.float64, device, rng, scale=1.0 + step, requires_grad=True)
        cond = randn((4, 7), torch.float64, device, rng, requires_grad=True)
        out = m(x, cond)
        ref = eager_ccbn(m, x, cond, rm, rv, True, 0.2)
        assert_close(out, ref, name=f"step {step}: output")
        up = randn(out.shape, torch.float64, device, rng)
        params = (x, cond, m.gain.weight, m.bias.weight)
        for nm, a, e in zip(("x", "cond", "gain.weight", "bias.weight"), torch.autograd.grad(out, params, up),
                            torch.autograd.grad(ref, params, up)):
            assert_close(a, e, name=f"step {step}: gradient w.r.t. {nm}")
        assert_close(m.running_mean, rm, name="running_mean")
        assert_close(m.running_var, rv, name="running_var")
        assert int(m.num_batches_tracked) == step + 1
    m.eval()
    x = randn((3, 5, 2, 2), torch.float64, device, rng)
    cond = randn((3, 7), torch.float64, device, rng)
    assert_close(m(x, cond), eager_ccbn(m, x, cond, rm, rv, False, 0.2), name="eval output")
    assert int(m.num_batches_tracked) == 2


def test_module_cumulative_momentum(impl, rng):
    """momentum None: the cumulative average, as nn.BatchNorm2d."""
    _, device = impl
    m = ConditionalBatchNorm2d(3, 2, momentum=None).to(device)
    bn = torch.nn.BatchNorm2d(3, momentum=None, affine=False).to(device)
    for _ in range(3):
        x = randn((4, 3, 2, 2), torch.float32, device, rng, scale=2.0)
        m(x, randn((4, 2), torch.float32, device, rng))
        bn(x)
    assert_close(m.running_mean, bn.running_mean, atol=1e-6, name="running_mean")
    assert_close(m.running_var, bn.running_var, atol=1e-6, name="running_var")


def test_module_gradcheck(impl, rng):
    name, device = impl
    m = ConditionalBatchNorm2d(2, 3, act="lrelu").double().to(device)
    x = randn((3, 2, 2, 2), torch.float64, device, rng, requires_grad=True)
    cond = randn((3, 3), torch.float64, device, rng, requires_grad=True)
    m.running_mean = None  # gradcheck calls it repeatedly: no running statistics to update
    m.running_var = None
    m.num_batches_tracked = None
    assert torch.autograd.gradcheck(lambda x, c: m(x, c), (x, cond), fast_mode=name != "cpu")


def test_module_structure():
    m = ConditionalBatchNorm2d(4, 6, act="relu", eps=1e-4, momentum=0.05)
    assert isinstance(m.gain, torch.nn.Linear) and isinstance(m.bias, torch.nn.Linear)
    assert m.gain.bias is None and m.bias.bias is None and m.gain.weight.shape == (4, 6)
    assert set(m.state_dict()) == {"gain.weight", "bias.weight", "running_mean", "running_var", "num_batches_tracked"}
    # spectral norm wraps the Linears in place, as the models do
    torch.nn.utils.parametrizations.spectral_norm(m.gain)
    x = torch.randn(2, 4, 3, 3)
    assert m(x, torch.randn(2, 6)).shape == (2, 4, 3, 3)


def test_module_errors():
    m = ConditionalBatchNorm2d(4, 6)
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match=r"cond must have shape \(N, cond_dim\) = \(2, 6\) \(N = x.size\(0\)\); "
                                         r"got \[2, 5\]"):
        m(x, torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"cond must have shape \(N, cond_dim\) = \(2, 6\)"):
        m(x, torch.randn(3, 6))
    with pytest.raises(ValueError, match=r"x must be 4-D \(N, C, H, W\) with C = num_features = 4; got \[2, 3, 3, 3\]"):
        m(torch.randn(2, 3, 3, 3), torch.randn(2, 6))
    with pytest.raises(ValueError, match=r"x must be 4-D"):
        m(torch.randn(2, 4, 3), torch.randn(2, 6))
    with pytest.raises(ValueError, match="cond_dim must be a positive int"):
        ConditionalBatchNorm2d(4, 0)
    with pytest.raises(ValueError, match="act must be one of"):
        ConditionalBatchNorm2d(4, 2, act="gelu")
