"""The orthogonal_regularization op family (BigGAN's beta * sum_W ||W W^T * (1 - I)||_F^2 over a list of
weights), every implementation present (reference, cpu, triton, cuda, the cuda-emu configurations),
against the float64 eager per-layer loop (BigGAN-PyTorch's form: mm, mask with 1 - eye, square, sum):
values and gradients with a random upstream gradient, odd shapes, conv / linear / tall weights (the
W^T W path), one-row and empty weights, a list longer than one CUDA launch's table, half precision;
gradcheck, opcheck, the second-derivative error, one op per pass (one Triton launch forward), the
masked Grams in the cache, thread-count independence, every bad-input error; and the public layer:
skipping of 1-D parameters, the in-place orthogonal_regularization_ against autograd of the
differentiable one and against BigGAN-PyTorch's factor. Small shapes: the Triton interpreter and the
emulator run every case.
"""
from __future__ import annotations

import re

import pytest
import torch

import ganfast
import ganfast.penalty as P
from conftest import assert_close, family_fixtures, implementation_device, randn
from ganfast import _args, ops

impl, kernel_impl = family_fixtures("orthogonal_regularization")

BETA = 0.37
# lists of weight shapes: conv filters (out, in, kh, kw), linears, a tall linear (m >= 2k: the W^T W
# path), a single row, a Gram of several CPU chunks / Triton blocks / CUDA blocks (150 x 150 = 22500),
# and more weights than one CUDA launch's table holds (48 segments: the carried total)
WEIGHT_CASES = {
    "conv+linear": [(5, 3, 3, 3), (7, 4)],
    "tall": [(40, 3), (9, 2, 1, 2)],
    "mixed": [(1, 5), (6, 6), (33, 7), (4, 2, 3, 1), (3, 8)],
    "large-gram": [(150, 80)],
    "many": [(3, 4)] * 30 + [(10, 2)] * 25,
}


def eager(weights, beta):
    """BigGAN-PyTorch's per-layer loop, differentiable (the oracle, in whatever dtype it is given)."""
    total = 0
    for w in weights:
        W = w.reshape(w.shape[0], -1)
        G = W @ W.t()
        total = total + ((G * (1 - torch.eye(W.shape[0], dtype=W.dtype, device=W.device))) ** 2).sum()
    return beta * total


def make_weights(shapes, dtype, device, gen, requires_grad=True):
    # scaled so a Gram entry is O(1) whatever the fan-in
    ws = []
    for s in shapes:
        k = 1
        for d in s[1:]:
            k *= d
        ws.append(randn(s, dtype, device, gen, scale=1.0 / max(k, 1) ** 0.5).requires_grad_(requires_grad))
    return ws


def check_against_eager(fn, ws, gen, beta=BETA, name="orthogonal_regularization", **tol):
    dtype = ws[0].dtype
    out = fn(ws, beta)
    assert out.shape == () and out.dtype == dtype, (out.shape, out.dtype)
    up = randn((), dtype, out.device, gen) + 2.0
    grads = torch.autograd.grad(out, ws, up)
    ws64 = [w.detach().double().requires_grad_() for w in ws]
    out64 = eager(ws64, beta)
    grads64 = torch.autograd.grad(out64, ws64, up.double())
    assert_close(out, out64.to(dtype), name=f"{name}: value", **tol)
    for i, (g, g64, w) in enumerate(zip(grads, grads64, ws)):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype)
        assert_close(g, g64.to(dtype), name=f"{name}: gradient {i}", **tol)
    return out, grads


def call_ops(ws, beta):
    return ops.orthogonal_regularization(ws, beta)


# ---- values and gradients ----------------------------------------------------------------------

MATCH_CASES = [(torch.float32, c) for c in WEIGHT_CASES] + [(torch.float64, "mixed"), (torch.float64, "tall")]


@pytest.mark.parametrize("dtype,case", MATCH_CASES, ids=lambda v: str(v).replace("torch.", ""))
def test_matches_eager(impl, dtype, case, rng):
    _, device = impl
    check_against_eager(call_ops, make_weights(WEIGHT_CASES[case], dtype, device, rng), rng)


def test_strided_weights(impl, rng):
    """A transposed / channels_last weight is read through reshape (a copy where it must)."""
    _, device = impl
    a = randn((6, 9), torch.float32, device, rng).t().requires_grad_()          # (9, 6), not contiguous
    b = randn((5, 3, 2, 2), torch.float32, device, rng).contiguous(memory_format=torch.channels_last)
    check_against_eager(call_ops, [a, b.requires_grad_()], rng)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_accumulates_in_float32(impl, dtype, rng):
    _, device = impl
    ws = make_weights(WEIGHT_CASES["mixed"], dtype, device, rng)
    check_against_eager(call_ops, ws, rng)


def test_empty_weights_give_zero(impl, rng):
    """(0, k) and (m, 0) weights: no rows, or rows of nothing (a zero Gram): 0 and empty / zero gradients."""
    _, device = impl
    ws = [torch.empty(0, 3, device=device), torch.empty(4, 0, 2, device=device), torch.empty(0, 0, device=device)]
    ws = [w.requires_grad_() for w in ws]
    out = ops.orthogonal_regularization(ws, BETA)
    assert out.item() == 0.0
    grads = torch.autograd.grad(out, ws)
    assert [g.shape for g in grads] == [w.shape for w in ws]
    mixed = make_weights([(3, 5)], torch.float32, device, rng) + [torch.empty(4, 0, device=device).requires_grad_()]
    check_against_eager(call_ops, mixed, rng)


def test_beta_zero(impl, rng):
    _, device = impl
    check_against_eager(call_ops, make_weights(WEIGHT_CASES["conv+linear"], torch.float32, device, rng), rng, beta=0.0)


def test_cache_holds_the_masked_grams(kernel_impl, rng):
    """The forward's cache: W W^T with a zero diagonal, or for a tall W its W^T W and squared row norms."""
    name, device = kernel_impl
    ws = make_weights([(5, 3, 3, 3), (40, 3)], torch.float64, device, rng, requires_grad=False)
    namespace = torch.ops.ganfast_triton if name == "triton" else torch.ops.ganfast
    loss, cache = namespace.orthogonal_regularization(ws, 1.0)
    W0, W1 = ws[0].reshape(5, -1), ws[1]
    G0 = W0 @ W0.t()
    G0.fill_diagonal_(0)
    expected = torch.cat([G0.reshape(-1), (W1.t() @ W1).reshape(-1), (W1 * W1).sum(1)])
    assert_close(cache, expected, name="cache")
    assert_close(loss, eager(ws, 1.0), name="loss")


def test_cpu_result_does_not_depend_on_the_thread_count(rng):
    implementation_device("cpu", "orthogonal_regularization")
    ws = make_weights([(150, 200), (40, 5)], torch.float64, "cpu", rng, requires_grad=False)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            with ganfast.use_backend("cpu"):
                results.append(ops.orthogonal_regularization(ws, 1.0))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(r, results[0]) for r in results)


# ---- gradcheck, opcheck, second derivative, one op per pass -----------------------------------------


def test_gradcheck(impl, rng):
    _, device = impl
    ws = [w.detach().requires_grad_() for w in make_weights([(3, 2, 2), (7, 2), (2, 5)], torch.float64, device, rng)]
    assert torch.autograd.gradcheck(lambda a, b, c: ops.orthogonal_regularization([a, b, c], 0.8), tuple(ws),
                                    eps=1e-6, atol=1e-7, rtol=1e-5)


def _opcheck_args(name, device, gen):
    ws = make_weights([(3, 4), (9, 2), (2, 3, 2)], torch.float64, device, gen, requires_grad=False)
    rg = [w.clone().requires_grad_() for w in ws]
    _, total = _args.ortho_layout(ws)
    cache = randn((total,), torch.float64, device, gen)
    return {
        "orthogonal_regularization": (rg, 0.5),
        "orthogonal_regularization_backward": (randn((), torch.float64, device, gen), ws, cache, 0.5),
    }[name]


OPCHECK_CASES = ["orthogonal_regularization", "orthogonal_regularization_backward"]


@pytest.mark.parametrize("case", OPCHECK_CASES)
@pytest.mark.parametrize("which", ["cpu", "triton", "cuda"])
def test_opcheck(which, case, rng):
    device = implementation_device(which, "orthogonal_regularization")
    namespace = torch.ops.ganfast_triton if which == "triton" else torch.ops.ganfast
    op = getattr(namespace, case).default
    result = torch.library.opcheck(op, _opcheck_args(case, device, rng))
    assert all(v == "SUCCESS" for v in result.values()), result


def test_second_derivative_raises_naming_the_op(kernel_impl, rng):
    name, device = kernel_impl
    ws = make_weights([(3, 4)], torch.float32, device, rng)
    out = ops.orthogonal_regularization(ws, 1.0)
    (g,) = torch.autograd.grad(out, ws, create_graph=True)
    with pytest.raises(RuntimeError, match=r"orthogonal_regularization_backward.*(not implemented|not supported)"):
        second = torch.autograd.grad(g.sum(), ws)
        pytest.fail(f"double backward returned {second}")  # pragma: no cover


def test_reference_is_differentiable_twice(rng):
    ws = tuple(make_weights([(3, 4), (7, 2)], torch.float64, "cpu", rng))
    with ganfast.use_backend("reference"):
        assert torch.autograd.gradgradcheck(lambda a, b: ops.orthogonal_regularization([a, b], 0.3), ws)


def test_one_op_forward_one_op_backward_for_the_whole_list(kernel_impl, rng):
    from test_losses import OpCounter

    name, device = kernel_impl
    ws = make_weights(WEIGHT_CASES["mixed"], torch.float32, device, rng)
    namespace = "ganfast_triton" if name == "triton" else "ganfast"
    with OpCounter() as forward:
        loss = ops.orthogonal_regularization(ws, 1.0)
    with OpCounter() as backward:
        loss.backward()
    assert forward.ops == [f"{namespace}::orthogonal_regularization"], forward.ops
    assert backward.ops == [f"{namespace}::orthogonal_regularization_backward"], backward.ops


def test_triton_one_kernel_launch_forward(rng, monkeypatch):
    """One Triton launch reduces every weight's Gram; the backward is GEMMs and one ATen scale."""
    from test_losses import TritonLaunchCounter

    device = implementation_device("triton", "orthogonal_regularization")
    with ganfast.use_backend("triton"):
        ws = make_weights(WEIGHT_CASES["mixed"], torch.float32, device, rng)
        counter = TritonLaunchCounter(monkeypatch)
        loss = ops.orthogonal_regularization(ws, 1.0)
        forward = list(counter.launches)
        counter.launches.clear()
        loss.backward()
        backward = list(counter.launches)
    assert forward == ["_ortho_forward_kernel"], forward
    assert backward == [], backward


# ---- errors -------------------------------------------------------------------------------------------

OP = "ganfast::orthogonal_regularization"


def _bad_cases(device):
    """{case: (weights, exception type, the message as a regex)}."""
    a = torch.zeros(2, 3, device=device)
    e = re.escape
    return {
        "empty list": ([], ValueError, e(f"{OP}: weights must hold at least one tensor; got an empty list")),
        "integer tensor": ([a, a.long()], TypeError, e(f"{OP}: weights[1] must be a floating-point tensor; got Long")),
        "dtypes differ": ([a, a.double()], TypeError,
                          e(f"{OP}: weights[1] must have the dtype of weights[0] (Float); got Double")),
        "devices differ": ([a, torch.zeros(2, 3, device="meta")], RuntimeError,
                           e(f"{OP}: weights[0] and weights[1] must be on the same device; got {device} and meta")),
        "one-dimensional": ([a, torch.zeros(3, device=device)], ValueError,
                            e(f"{OP}: weights[1] must have at least 2 dimensions (biases and gains are skipped by "
                              f"ganfast.penalty.orthogonal_regularization); got shape [3]")),
    }


BAD = list(_bad_cases("cpu"))


@pytest.mark.parametrize("case", BAD)
def test_bad_inputs_raise_naming_the_argument(impl, case):
    _, device = impl
    ws, exc, message = _bad_cases(device)[case]
    with pytest.raises(exc, match=message):
        ops.orthogonal_regularization(ws, 1.0)


@pytest.mark.parametrize("beta", [-1.0, float("inf"), float("nan")])
def test_bad_beta_raises(impl, beta):
    _, device = impl
    a = torch.zeros(2, 3, device=device)
    text = f"{beta:g}"
    with pytest.raises(ValueError, match=re.escape(f"{OP}: beta must be finite and non-negative; got {text}")):
        ops.orthogonal_regularization([a], beta)
    with pytest.raises(ValueError, match=re.escape(f"{OP}: beta must be finite and non-negative; got {text}")):
        P.orthogonal_regularization_([a.requires_grad_()], beta)
    with pytest.raises(ValueError, match=re.escape("ganfast.penalty.orthogonal_regularization: beta must be finite")):
        P.orthogonal_regularization([torch.zeros(3)], beta)  # no 2-D weight: still checked


def test_backward_op_checks_grad_output_and_cache(impl, rng):
    name, device = impl
    if name == "reference":
        pytest.skip("the reference has no backward op")
    a = torch.zeros(3, 4, device=device)
    namespace = torch.ops.ganfast_triton if name == "triton" else torch.ops.ganfast
    bwd = namespace.orthogonal_regularization_backward
    with pytest.raises(ValueError, match=r"orthogonal_regularization_backward: grad_output must hold one value; "
                                         r"got shape \[2\]"):
        bwd(torch.ones(2, device=device), [a], torch.zeros(9, device=device), 1.0)
    with pytest.raises(ValueError, match=re.escape("cache must be the 1-D cache orthogonal_regularization returned "
                                                   "for these weights (9 values); got shape [8]")):
        bwd(torch.ones((), device=device), [a], torch.zeros(8, device=device), 1.0)
    with pytest.raises(TypeError, match=re.escape("cache must be Float for weights of dtype Float; got Double")):
        bwd(torch.ones((), device=device), [a], torch.zeros(9, device=device, dtype=torch.float64), 1.0)


# ---- the public layer: ganfast.penalty ----------------------------------------------------------------


def _generator_like(device, dtype=torch.float32):
    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Linear(5, 24), torch.nn.BatchNorm1d(24), torch.nn.Unflatten(1, (6, 2, 2)),
        torch.nn.Conv2d(6, 4, 3, padding=1), torch.nn.Conv2d(4, 3, 1, bias=False),
    ).to(device=device, dtype=dtype)


def test_public_skips_one_dimensional_parameters(impl, rng):
    _, device = impl
    G = _generator_like(device)
    mats = [p for p in G.parameters() if p.dim() >= 2]
    assert len(mats) == 3 and len(list(G.parameters())) > 3
    assert_close(P.orthogonal_regularization(G, BETA), eager([m.detach().double() for m in mats], BETA).float(),
                 name="module")
    assert_close(P.orthogonal_regularization(G.parameters(), BETA), P.orthogonal_regularization(mats, BETA),
                 name="iterable")


def test_public_without_matrices_gives_a_zero():
    out = P.orthogonal_regularization([torch.ones(3, dtype=torch.float64)])
    assert out.shape == () and out.dtype == torch.float64 and out.item() == 0.0 and not out.requires_grad
    out = P.orthogonal_regularization([])
    assert out.dtype == torch.get_default_dtype() and out.device.type == "cpu" and out.item() == 0.0
    with pytest.raises(TypeError, match=r"every weight must be a tensor; got float at index 1"):
        P.orthogonal_regularization([torch.ones(2, 2), 1.0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_in_place_adds_the_gradient_of_the_differentiable_one(impl, dtype, rng):
    """orthogonal_regularization_ adds exactly the autograd gradient of orthogonal_regularization to
    .grad: created where None, accumulated where present; 1-D and frozen parameters untouched."""
    _, device = impl
    G = _generator_like(device, dtype)
    frozen = G[4].weight
    frozen.requires_grad_(False)
    mats = [p for p in G.parameters() if p.dim() >= 2 and p.requires_grad]
    expected = torch.autograd.grad(P.orthogonal_regularization(mats, BETA), mats)
    held = randn(G[3].weight.shape, dtype, device, rng)
    G[3].weight.grad = held.clone()
    G[1].weight.grad = torch.full_like(G[1].weight, 7.0)
    P.orthogonal_regularization_(G, BETA)
    assert_close(G[0].weight.grad, expected[0], name="created .grad")
    assert_close(G[3].weight.grad, held + expected[1], name="accumulated .grad")
    assert frozen.grad is None and G[0].bias.grad is None
    assert torch.equal(G[1].weight.grad, torch.full_like(G[1].weight, 7.0))


def test_in_place_builds_no_graph_and_is_biggan_pytorch_ortho_at_strength_2_beta(impl, rng):
    """BigGAN-PyTorch's utils.ortho(model, s) adds 2 s (W W^T * (1 - I)) W (written here from its
    formula): the same as ours at beta = s / 2."""
    _, device = impl
    ws = [w.detach().requires_grad_() for w in make_weights([(5, 3, 3, 3), (40, 3), (4, 6)], torch.float64,
                                                           device, rng)]
    strength = 1e-2
    with torch.enable_grad():
        P.orthogonal_regularization_(ws, strength / 2)
    for w in ws:
        assert w.grad.grad_fn is None and not w.grad.requires_grad
        W = w.detach().reshape(w.shape[0], -1)
        G = W @ W.t()
        expected = 2 * strength * ((G * (1 - torch.eye(W.shape[0], dtype=W.dtype, device=W.device))) @ W)
        assert_close(w.grad, expected.view(w.shape), name="BigGAN-PyTorch ortho")
