"""The cycle_loss op family (CycleGAN's cycle-consistency / identity L1 loss over a list of pairs),
every implementation present (reference, cpu, triton, cuda, the cuda-emu configurations), against
the float64 eager composite weight * sum_i F.l1_loss(r_i, o_i): values and gradients w.r.t. every
tensor, odd sizes, lists of 1, 2 and 4 pairs, channels_last and strided inputs, ties (subgradient
0), half precision, empty pairs; gradcheck, opcheck, the second-derivative error, one op (one
Triton launch) per pass, thread-count independence, and every bad-input error. Small shapes: the
Triton interpreter and the emulator run every case.
"""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import ganfast
import ganfast.losses as L
from conftest import assert_close, family_fixtures, implementation_device, randn
from ganfast import ops

impl, kernel_impl = family_fixtures("cycle_loss")

WEIGHT = 2.5
# lists of pair shapes: odd sizes (numel not a multiple of any vector width), one element, pairs of
# different shapes, one pair of several blocks / CPU chunks (20000 > 16384 elements, 20 Triton blocks of 1024)
PAIR_CASES = {
    "1-one-element": [(1,)],
    "1-odd": [(3, 5, 7)],
    "2-pairs": [(2, 3, 8, 8), (13,)],
    "4-pairs": [(1,), (33,), (2, 3, 5, 7), (4, 1025)],
    "1-large": [(20000,)],
}


def eager(reconstructed, original, weight):
    total = F.l1_loss(reconstructed[0], original[0])
    for r, o in zip(reconstructed[1:], original[1:]):
        total = total + F.l1_loss(r, o)
    return weight * total


def make_pairs(shapes, dtype, device, gen, ties=True, requires_grad=(True, True), memory_format=None):
    """Random pairs; with ties, every 5th element of each original equals reconstructed's."""
    rs, os_ = [], []
    for shape in shapes:
        r = randn(shape, dtype, device, gen)
        o = randn(shape, dtype, device, gen)
        if ties:
            flat_r, flat_o = r.view(-1), o.view(-1)
            flat_o[::5] = flat_r[::5]
        if memory_format is not None and r.dim() == 4:
            r, o = r.contiguous(memory_format=memory_format), o.contiguous(memory_format=memory_format)
        rs.append(r.requires_grad_(requires_grad[0]))
        os_.append(o.requires_grad_(requires_grad[1]))
    return rs, os_


def check_against_eager(fn, rs, os_, gen, weight=WEIGHT, name="cycle_loss", check_layout=False, **tol):
    """fn(rs, os_, weight) against the float64 eager composite: the value and the gradients w.r.t.
    every tensor that requires grad, with a random upstream gradient; results keep the dtype and,
    with check_layout, the gradients of channels_last inputs keep it (the kernels' promise)."""
    dtype = rs[0].dtype
    out = fn(rs, os_, weight)
    assert out.shape == () and out.dtype == dtype, (out.shape, out.dtype)
    up = randn((), dtype, out.device, gen) + 2.0
    wrt = [t for t in rs + os_ if t.requires_grad]
    grads = torch.autograd.grad(out, wrt, up) if wrt else ()

    rs64 = [t.detach().double().requires_grad_(t.requires_grad) for t in rs]
    os64 = [t.detach().double().requires_grad_(t.requires_grad) for t in os_]
    out64 = eager(rs64, os64, weight)
    wrt64 = [t for t in rs64 + os64 if t.requires_grad]
    grads64 = torch.autograd.grad(out64, wrt64, up.double()) if wrt else ()
    assert_close(out, out64.to(dtype), name=f"{name}: value", **tol)
    for i, (g, g64, x) in enumerate(zip(grads, grads64, wrt)):
        assert g.shape == x.shape and g.dtype == x.dtype
        assert_close(g, g64.to(dtype), name=f"{name}: gradient {i}", **tol)
        if check_layout and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            assert g.is_contiguous(memory_format=torch.channels_last), f"{name}: gradient {i} lost channels_last"
    return out, grads


def call_ops(rs, os_, weight):
    return ops.cycle_loss(rs, os_, weight)


# ---- values and gradients ----------------------------------------------------------------------


# every case in float32; float64 (the other accumulation type) on the lists of pairs only
MATCH_CASES = [(torch.float32, c) for c in PAIR_CASES] + [(torch.float64, "2-pairs"), (torch.float64, "4-pairs")]


@pytest.mark.parametrize("dtype,case", MATCH_CASES, ids=lambda v: str(v).replace("torch.", ""))
def test_matches_eager_l1(impl, dtype, case, rng):
    _, device = impl
    rs, os_ = make_pairs(PAIR_CASES[case], dtype, device, rng)
    _, grads = check_against_eager(call_ops, rs, os_, rng)
    # ties: torch's subgradient 0, for both tensors of every pair
    for i, r in enumerate(rs):
        assert bool((grads[i].reshape(-1)[::5] == 0).all()), f"pair {i}: gradient at r == o is not 0"


@pytest.mark.parametrize("which", ["reconstructed", "original"])
def test_gradient_of_one_side_only(impl, which, rng):
    """An original that is a real image needs no gradient (and the kernels write none); an
    identity loss may want only the other side."""
    _, device = impl
    wants = (which == "reconstructed", which == "original")
    rs, os_ = make_pairs(PAIR_CASES["2-pairs"], torch.float32, device, rng, requires_grad=wants)
    check_against_eager(call_ops, rs, os_, rng)


@pytest.mark.parametrize("layout", ["channels_last", "mixed", "strided"])
def test_layouts(impl, layout, rng):
    """channels_last pairs are walked in their own memory order and their gradients keep it; a pair
    of two layouts, and views that are not dense, are copied into one (documented cost)."""
    name, device = impl
    rs, os_ = make_pairs([(2, 3, 5, 7), (3, 4, 2, 9)], torch.float32, device, rng,
                         memory_format=torch.channels_last if layout != "strided" else None)
    if layout == "mixed":
        os_ = [o.detach().contiguous().requires_grad_() for o in os_]
    if layout == "strided":
        big_r, big_o = make_pairs([(2, 3, 5, 14), (3, 4, 9, 2)], torch.float32, device, rng)
        rs = [big_r[0].detach()[..., ::2].requires_grad_(), big_r[1].detach().transpose(2, 3).requires_grad_()]
        os_ = [big_o[0].detach()[..., 1::2].requires_grad_(), big_o[1].detach().transpose(2, 3).requires_grad_()]
    check_against_eager(call_ops, rs, os_, rng, check_layout=name != "reference")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_accumulates_in_float32(impl, dtype, rng):
    _, device = impl
    rs, os_ = make_pairs([(3, 700), (2, 3, 4, 5)], dtype, device, rng)
    check_against_eager(call_ops, rs, os_, rng)


def test_empty_pair_gives_nan_as_f_l1_loss(impl, rng):
    _, device = impl
    rs, os_ = make_pairs([(0, 3), (7,)], torch.float32, device, rng)
    out = ops.cycle_loss(rs, os_, 1.0)
    assert torch.isnan(out)
    grads = torch.autograd.grad(out, rs + os_, torch.ones((), device=device))
    assert [g.shape for g in grads] == [t.shape for t in rs + os_]


def test_nan_propagates_forward_and_gives_zero_gradient_as_torch(impl, rng):
    _, device = impl
    r = torch.tensor([1.0, float("nan"), -2.0, 0.5], device=device, requires_grad=True)
    o = torch.tensor([0.0, 0.0, -2.0, 1.5], device=device)
    out = ops.cycle_loss([r], [o], 1.0)
    (g,) = torch.autograd.grad(out, [r])
    r64 = r.detach().double().requires_grad_()
    (g64,) = torch.autograd.grad(F.l1_loss(r64, o.double()), [r64])
    assert torch.isnan(out)
    assert_close(g, g64.float())


def test_weight_zero_and_public_wrapper_single_tensors(impl, rng):
    """The public function takes two tensors as well as two lists, and weight 0."""
    _, device = impl
    rs, os_ = make_pairs([(4, 9)], torch.float32, device, rng)
    check_against_eager(lambda r, o, w: L.cycle_loss(r[0], o[0], w), rs, os_, rng, weight=10.0)
    check_against_eager(lambda r, o, w: L.cycle_loss(tuple(r), tuple(o), w), rs, os_, rng, weight=0.0)


def test_cpu_result_does_not_depend_on_the_thread_count(rng):
    implementation_device("cpu", "cycle_loss")
    rs, os_ = make_pairs([(70001,), (3, 40000)], torch.float64, "cpu", rng, requires_grad=(False, False))
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            with ganfast.use_backend("cpu"):
                results.append(ops.cycle_loss(rs, os_, 1.0))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(r, results[0]) for r in results)


# ---- gradcheck, opcheck, second derivative, one op per pass -----------------------------------------


def test_gradcheck(impl, rng):
    _, device = impl
    # no ties and no |r - o| near 0: the numerical derivative of |.| is only defined away from the kink
    r1 = randn((2, 3), torch.float64, device, rng)
    r2 = randn((5,), torch.float64, device, rng)
    o1 = (r1 + (torch.rand((2, 3), generator=rng, dtype=torch.float64) + 0.5).to(device)
          * torch.sign(randn((2, 3), torch.float64, device, rng)))
    o2 = r2 - 0.7
    inputs = tuple(t.detach().requires_grad_() for t in (r1, r2, o1, o2))
    assert torch.autograd.gradcheck(lambda a, b, c, d: ops.cycle_loss([a, b], [c, d], 1.5), inputs,
                                    eps=1e-6, atol=1e-7, rtol=1e-5, check_undefined_grad=False)


def _opcheck_args(name, device, gen):
    f64 = torch.float64
    rs = [randn((3, 4), f64, device, gen), randn((5,), f64, device, gen)]
    os_ = [randn((3, 4), f64, device, gen), randn((5,), f64, device, gen)]
    g0 = randn((), f64, device, gen)
    rg = lambda ts: [t.clone().requires_grad_() for t in ts]  # noqa: E731
    return {
        "cycle_loss": (rg(rs), rg(os_), 2.0),
        "cycle_loss_backward-both": (g0, rs, os_, 2.0, True, True),
        "cycle_loss_backward-reconstructed": (g0, rs, os_, 0.5, True, False),
    }[name]


OPCHECK_CASES = ["cycle_loss", "cycle_loss_backward-both", "cycle_loss_backward-reconstructed"]


def test_opcheck_cases_cover_every_op():
    import importlib

    op_module = importlib.import_module("ganfast.ops.cycle_loss")  # ganfast.ops.cycle_loss is also the function

    assert {c.split("-")[0] for c in OPCHECK_CASES} == set(op_module._FAKES)


@pytest.mark.parametrize("case", OPCHECK_CASES)
@pytest.mark.parametrize("which", ["cpu", "triton", "cuda"])
def test_opcheck(which, case, rng):
    device = implementation_device(which, "cycle_loss")
    namespace = torch.ops.ganfast_triton if which == "triton" else torch.ops.ganfast
    op = getattr(namespace, case.split("-")[0]).default
    result = torch.library.opcheck(op, _opcheck_args(case, device, rng))
    assert all(v == "SUCCESS" for v in result.values()), result


def test_second_derivative_raises_naming_the_op(kernel_impl, rng):
    name, device = kernel_impl
    rs, os_ = make_pairs([(3, 4)], torch.float32, device, rng, ties=False)
    out = ops.cycle_loss(rs, os_, 1.0)
    (g,) = torch.autograd.grad(out, rs, create_graph=True)
    with pytest.raises(RuntimeError, match=r"cycle_loss_backward.*(not implemented|not supported)"):
        second = torch.autograd.grad(g.sum(), rs + os_, allow_unused=True)
        pytest.fail(f"double backward returned {second}")  # pragma: no cover


def test_reference_is_differentiable_twice(rng):
    rs, os_ = make_pairs([(3, 4)], torch.float64, "cpu", rng, ties=False)
    with ganfast.use_backend("reference"):
        out = ops.cycle_loss(rs, os_, 1.0)
        (g,) = torch.autograd.grad(out, rs, create_graph=True)
        (gg,) = torch.autograd.grad(g.pow(2).sum(), rs)
    assert torch.equal(gg, torch.zeros_like(gg))  # sign is piecewise constant


def test_one_op_forward_one_op_backward_for_the_whole_list(kernel_impl, rng):
    from test_losses import OpCounter

    name, device = kernel_impl
    rs, os_ = make_pairs(PAIR_CASES["4-pairs"], torch.float32, device, rng)
    namespace = "ganfast_triton" if name == "triton" else "ganfast"
    with OpCounter() as forward:
        loss = ops.cycle_loss(rs, os_, 1.0)
    with OpCounter() as backward:
        loss.backward()
    assert forward.ops == [f"{namespace}::cycle_loss"], forward.ops
    assert backward.ops == [f"{namespace}::cycle_loss_backward"], backward.ops


def test_triton_one_kernel_launch_per_pass(rng, monkeypatch):
    from test_losses import TritonLaunchCounter

    device = implementation_device("triton", "cycle_loss")
    with ganfast.use_backend("triton"):
        rs, os_ = make_pairs(PAIR_CASES["4-pairs"], torch.float32, device, rng)
        counter = TritonLaunchCounter(monkeypatch)
        loss = ops.cycle_loss(rs, os_, 1.0)
        forward = list(counter.launches)
        counter.launches.clear()
        loss.backward()
        backward = list(counter.launches)
    assert forward == ["_cycle_forward_kernel"], forward
    assert backward == ["_cycle_backward_kernel"], backward


# ---- errors -------------------------------------------------------------------------------------------

OP = "ganfast::cycle_loss"


def _bad_cases(device):
    """{case: ((reconstructed, original), exception type, the message as a regex)}."""
    a = torch.zeros(2, 3, device=device)
    b = torch.zeros(2, 3, device=device)
    e = re.escape
    return {
        "empty list": (([], []), ValueError, e(f"{OP}: reconstructed must hold at least one tensor; got an empty list")),
        "lengths differ": (([a, a], [b]), ValueError,
                           e(f"{OP}: reconstructed and original must have the same length; got 2 and 1")),
        "integer tensor": (([a, a.long()], [b, b]), TypeError,
                           e(f"{OP}: reconstructed[1] must be a floating-point tensor; got Long")),
        "integer original": (([a], [b.int()]), TypeError, e(f"{OP}: original[0] must be a floating-point tensor; got Int")),
        "dtypes differ": (([a, a], [b, b.double()]), TypeError,
                          e(f"{OP}: original[1] must have the dtype of reconstructed[0] (Float); got Double")),
        "shapes differ": (([a], [b[:, :2]]), ValueError,
                          rf"{OP}: original\[0\] size \(\[2, 2\]\) must be the same as reconstructed\[0\] size \(\[2, 3\]\)"),
        "broadcast refused": (([a], [b[:1]]), ValueError, r"original\[0\] size \(\[1, 3\]\) must be the same as"),
        "devices differ": (([a], [torch.zeros(2, 3, device="meta")]), RuntimeError,
                           rf"{OP}: reconstructed\[0\] and original\[0\] must be on the same device; got {device} and meta"),
    }


BAD = list(_bad_cases("cpu"))


@pytest.mark.parametrize("case", BAD)
def test_bad_inputs_raise_naming_the_argument(impl, case):
    _, device = impl
    (rs, os_), exc, message = _bad_cases(device)[case]
    with pytest.raises(exc, match=message):
        ops.cycle_loss(rs, os_, 1.0)


@pytest.mark.parametrize("weight", [-1.0, float("inf"), float("nan")])
def test_bad_weight_raises(impl, weight):
    _, device = impl
    a = torch.zeros(3, device=device)
    text = f"{weight:g}"
    with pytest.raises(ValueError, match=re.escape(f"{OP}: weight must be finite and non-negative; got {text}")):
        ops.cycle_loss([a], [a.clone()], weight)
    with pytest.raises(ValueError, match=re.escape(f"ganfast.losses.cycle_loss: weight must be finite and "
                                                 f"non-negative; got {text}")):
        L.cycle_loss(a, a.clone(), weight)


def test_public_function_refuses_a_tensor_mixed_with_a_list():
    a = torch.zeros(3)
    with pytest.raises(TypeError, match="both be tensors or both be lists"):
        L.cycle_loss(a, [a])
    with pytest.raises(TypeError, match="both be tensors or both be lists"):
        L.cycle_loss([a], a)
    with pytest.raises(TypeError, match=r"original\[1\] must be a tensor; got float"):
        L.cycle_loss([a, a], [a, 1.0])
    with pytest.raises(TypeError, match="weight must be a number; got Tensor"):
        L.cycle_loss(a, a, torch.tensor(1.0))


def test_backward_op_checks_grad_output(impl, rng):
    name, device = impl
    if name == "reference":
        pytest.skip("the reference has no backward op")
    a = torch.zeros(3, device=device)
    namespace = torch.ops.ganfast_triton if name == "triton" else torch.ops.ganfast
    with pytest.raises(ValueError, match=r"cycle_loss_backward: grad_output must hold one value; got shape \[2\]"):
        namespace.cycle_loss_backward(torch.ones(2, device=device), [a], [a], 1.0, True, False)
