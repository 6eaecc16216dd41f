"""The info_loss op family (InfoGAN's mutual-information loss), every implementation present
(reference, cpu, triton, cuda, the emulated CUDA kernels) against the eager composite

    cat_weight * F.cross_entropy(cat_logits, cat_codes)
  + cont_weight * (cont_logstd + 0.5 * ((cont_codes - cont_mean) * torch.exp(-cont_logstd)) ** 2).sum(1).mean()

in float64 (written here, independently of ganfast/reference): values and gradients with a random
upstream gradient, each optional part present or absent, odd shapes; half precision; the empty
batch; gradcheck; opcheck; one op per pass; the second-derivative error; every bad input's error.
Shapes are small: the whole file runs in seconds per implementation.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import ganfast
import ganfast.losses as L
from conftest import assert_close, family_fixtures, implementation_device, randn
from ganfast import ops

impl, kernel_impl = family_fixtures("info_loss")


def composite(cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd, cat_weight=1.0, cont_weight=1.0):
    """The eager composite the op replaces (sigma = 1 without cont_logstd)."""
    total = None
    if cat_logits is not None:
        total = cat_weight * F.cross_entropy(cat_logits, cat_codes)
    if cont_mean is not None:
        d = cont_codes - cont_mean
        terms = 0.5 * d ** 2 if cont_logstd is None else cont_logstd + 0.5 * (d * torch.exp(-cont_logstd)) ** 2
        part = cont_weight * terms.sum(1).mean()
        total = part if total is None else total + part
    return total


# (B, K or None: no categorical part, J or None: no continuous part, logstd?, cat_weight, cont_weight)
CASES = {
    "full": (5, 7, 3, True, 0.7, 1.3),
    "no-logstd": (4, 3, 2, False, 1.0, 1.0),
    "cat-only": (6, 10, None, False, 1.0, 1.0),
    "cont-only": (3, None, 1, True, 1.0, 2.5),
    "cont-only-no-logstd": (3, None, 4, False, 1.0, 1.0),
    "B1-K2-J1": (1, 2, 1, True, 1.0, 1.0),
    "K1000": (3, 1000, 2, True, 1.0, 0.5),
    "many-rows": (300, 10, 2, True, 1.0, 1.0),  # several programs / blocks, the last-block reduction
    "zero-weight": (4, 5, 2, True, 0.0, 1.0),
}


def make_inputs(case, dtype, device, gen, requires_grad=True):
    B, K, J, logstd, cw, nw = CASES[case]
    x = randn((B, K), dtype, device, gen, scale=2.0, requires_grad=requires_grad) if K else None
    c = torch.randint(0, K, (B,), generator=gen).to(device) if K else None
    mu = randn((B, J), dtype, device, gen, requires_grad=requires_grad) if J else None
    cc = randn((B, J), dtype, device, gen, requires_grad=requires_grad) if J else None
    ls = randn((B, J), dtype, device, gen, scale=0.5, requires_grad=requires_grad) if J and logstd else None
    return [x, c, mu, cc, ls], (cw, nw)


def _f64(t):
    if t is None or not t.is_floating_point():
        return t
    return t.detach().to(torch.float64).requires_grad_(t.requires_grad)


def check_against_composite(tensors, weights, gen, name):
    dtype = (tensors[0] if tensors[0] is not None else tensors[2]).dtype
    out = L.info_loss(*tensors, *weights)
    assert out.shape == () and out.dtype == dtype, (out.shape, out.dtype)
    diff = [t for t in tensors if t is not None and t.requires_grad]
    up = randn((), dtype, out.device, gen)
    grads = torch.autograd.grad(out, diff, up)
    t64 = [_f64(t) for t in tensors]
    out64 = composite(*t64, *weights)
    grads64 = torch.autograd.grad(out64, [t for t in t64 if t is not None and t.requires_grad], up.double())
    assert_close(out, out64.to(dtype), name=f"{name}: value")
    for i, (g, g64, x) in enumerate(zip(grads, grads64, diff)):
        assert g.shape == x.shape and g.dtype == x.dtype
        assert_close(g, g64.to(x.dtype), name=f"{name}: gradient {i}")


@pytest.mark.parametrize("case", CASES)
def test_matches_eager_composite_float64(impl, case, rng):
    _, device = impl
    tensors, weights = make_inputs(case, torch.float64, device, rng)
    check_against_composite(tensors, weights, rng, case)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_lower_precisions_within_the_dtype_tolerance(impl, dtype, rng):
    """float32 and half precision (computed in float32, returned in the input dtype)."""
    _, device = impl
    tensors, weights = make_inputs("full", dtype, device, rng)
    check_against_composite(tensors, weights, rng, str(dtype))


def test_noncontiguous_inputs(impl, rng):
    _, device = impl
    x = randn((7, 5), torch.float64, device, rng, requires_grad=True)
    mu = randn((3, 5), torch.float64, device, rng, requires_grad=True)
    cc = randn((5, 3), torch.float64, device, rng)
    ls = randn((3, 5), torch.float64, device, rng, scale=0.5, requires_grad=True)
    c = torch.randint(0, 7, (10,), generator=rng).to(device)[::2]
    check_against_composite([x.t(), c, mu.t(), cc, ls.t()], (1.0, 1.0), rng, "non-contiguous")


def test_empty_batch_is_nan_as_torch(impl):
    _, device = impl
    x = torch.zeros((0, 4), dtype=torch.float64, device=device, requires_grad=True)
    c = torch.zeros((0,), dtype=torch.long, device=device)
    mu = torch.zeros((0, 2), dtype=torch.float64, device=device, requires_grad=True)
    for args in ([x, c, None, None, None], [None, None, mu, mu.detach(), None], [x, c, mu, mu.detach(), mu.detach()]):
        out = L.info_loss(*args)
        want = composite(*args)
        assert math.isnan(out.item()) and math.isnan(want.item())
        diff = [t for t in args if t is not None and t.requires_grad]
        for g, t in zip(torch.autograd.grad(out, diff), diff):
            assert g.shape == t.shape


def test_gradcheck(impl, rng):
    _, device = impl
    for case in ("full", "no-logstd"):
        B, K, J = 3, 4, 2
        x = randn((B, K), torch.float64, device, rng, requires_grad=True)
        c = torch.randint(0, K, (B,), generator=rng).to(device)
        mu = randn((B, J), torch.float64, device, rng, requires_grad=True)
        cc = randn((B, J), torch.float64, device, rng, requires_grad=True)
        if case == "full":
            ls = randn((B, J), torch.float64, device, rng, scale=0.5, requires_grad=True)
            fn, inputs = (lambda x, mu, cc, ls: ops.info_loss(x, c, mu, cc, ls, 0.7, 1.3)), (x, mu, cc, ls)
        else:
            fn, inputs = (lambda x, mu, cc: ops.info_loss(x, c, mu, cc, None, 1.0, 2.0)), (x, mu, cc)
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, check_undefined_grad=False)


def test_reference_gradgradcheck(rng):
    """The reference is differentiable to every order (the fallback on other devices)."""
    x = randn((3, 4), torch.float64, gen=rng, requires_grad=True)
    c = torch.randint(0, 4, (3,), generator=rng)
    mu, cc = randn((3, 2), torch.float64, gen=rng, requires_grad=True), randn((3, 2), torch.float64, gen=rng)
    ls = randn((3, 2), torch.float64, gen=rng, scale=0.5, requires_grad=True)
    with ganfast.use_backend("reference"):
        assert torch.autograd.gradgradcheck(lambda x, mu, ls: ops.info_loss(x, c, mu, cc, ls, 0.7, 1.3), (x, mu, ls))


def test_second_derivative_raises_naming_the_op(kernel_impl, rng):
    _, device = kernel_impl
    tensors, weights = make_inputs("full", torch.float64, device, rng)
    loss = ops.info_loss(*tensors, *weights)
    diff = [t for t in tensors if t is not None and t.requires_grad]
    grads = torch.autograd.grad(loss, diff, create_graph=True)
    with pytest.raises(RuntimeError, match=r"info_loss_backward.*(not implemented|not supported)"):
        second = torch.autograd.grad(sum((g * g).sum() for g in grads), diff, allow_unused=True)
        pytest.fail(f"double backward returned {second}")  # pragma: no cover


def test_codes_out_of_range(impl):
    name, device = impl
    if device == "cuda":
        pytest.skip("on CUDA an out-of-range class index is a device-side assert (as torch's), which poisons the "
                    "CUDA context for the rest of the process")
    x = torch.zeros((3, 4), device=device, requires_grad=True)
    for bad in (4, -1):
        c = torch.tensor([0, bad, 1], device=device)
        if name.startswith("cuda-emu"):
            with pytest.raises(RuntimeError, match="device-side assert"):
                ops.info_loss(x, c, None, None, None, 1.0, 1.0)
            continue
        with pytest.raises(IndexError, match=rf"cat_codes must be class indices in \[0, K\) = \[0, 4\); got {bad} "
                                             r"at index 1"):
            ops.info_loss(x, c, None, None, None, 1.0, 1.0)
    if not name.startswith("cuda-emu") and name != "reference":  # the backward op checks too
        with pytest.raises(IndexError, match="cat_codes must be class indices"):
            namespace = torch.ops.ganfast_triton if name == "triton" else torch.ops.ganfast
            namespace.info_loss_backward(torch.ones((), device=device), x.detach(), torch.tensor([0, 9, 1], device=device),
                                         None, None, None, 1.0, 1.0)


def _bad_inputs(device):
    """(arguments, exception type, message regex) for every rejected input."""
    f, d = torch.float32, torch.float64
    x, c = torch.zeros((3, 4), device=device), torch.zeros((3,), dtype=torch.long, device=device)
    mu = torch.zeros((3, 2), device=device)
    return {
        "negative-cat-weight": ((x, c, None, None, None, -1.0, 1.0), ValueError,
                                r"cat_weight must be a finite number >= 0; got -1"),
        "nan-cont-weight": ((x, c, mu, mu, None, 1.0, math.nan), ValueError,
                            r"cont_weight must be a finite number >= 0; got nan"),
        "inf-cat-weight": ((x, c, None, None, None, math.inf, 1.0), ValueError, r"cat_weight must be a finite"),
        "neither-part": ((None, None, None, None, None, 1.0, 1.0), ValueError, r"nothing to compute"),
        "logits-without-codes": ((x, None, mu, mu, None, 1.0, 1.0), ValueError,
                                 r"cat_logits and cat_codes must be given together"),
        "codes-without-logits": ((None, c, mu, mu, None, 1.0, 1.0), ValueError,
                                 r"cat_logits and cat_codes must be given together"),
        "mean-without-codes": ((x, c, mu, None, None, 1.0, 1.0), ValueError,
                               r"cont_mean and cont_codes must be given together"),
        "logstd-alone": ((x, c, None, None, mu, 1.0, 1.0), ValueError, r"cont_logstd needs cont_mean and cont_codes"),
        "integer-logits": ((c.view(3, 1).expand(3, 4).contiguous(), c, None, None, None, 1.0, 1.0), TypeError,
                           r"cat_logits must be a floating-point tensor; got Long"),
        "1d-logits": ((x[:, 0], c, None, None, None, 1.0, 1.0), ValueError,
                      r"cat_logits must have shape \(B, K\); got shape \[3\]"),
        "K1": ((x[:, :1], c, None, None, None, 1.0, 1.0), ValueError,
               r"cat_logits must have K >= 2 classes \(shape \(B, K\)\); got shape \[3, 1\]"),
        "float-codes": ((x, c.to(f), None, None, None, 1.0, 1.0), TypeError,
                        r"cat_codes must be an int64 \(Long\) tensor of class indices; got Float"),
        "int32-codes": ((x, c.int(), None, None, None, 1.0, 1.0), TypeError, r"int64 \(Long\).*got Int"),
        "codes-B": ((x, c[:2], None, None, None, 1.0, 1.0), ValueError,
                    r"cat_codes must have shape \(B,\) = \(3,\) \(cat_logits.size\(0\)\); got shape \[2\]"),
        "integer-mean": ((None, None, c.view(3, 1), c.view(3, 1), None, 1.0, 1.0), TypeError,
                         r"cont_mean must be a floating-point tensor; got Long"),
        "1d-mean": ((None, None, mu[:, 0], mu[:, 0], None, 1.0, 1.0), ValueError,
                    r"cont_mean must have shape \(B, J\); got shape \[3\]"),
        "codes-shape": ((x, c, mu, mu[:, :1], None, 1.0, 1.0), ValueError,
                        r"cont_codes size \(\[3, 1\]\) must be the same as cont_mean size \(\[3, 2\]\)"),
        "logstd-shape": ((x, c, mu, mu, mu[:2], 1.0, 1.0), ValueError,
                         r"cont_logstd size \(\[2, 2\]\) must be the same as cont_mean size \(\[3, 2\]\)"),
        "cont-B": ((x, c, mu[:2], mu[:2], None, 1.0, 1.0), ValueError,
                   r"cont_mean must have B = 3 rows \(cat_logits.size\(0\)\); got shape \[2, 2\]"),
        "cont-dtype": ((x, c, mu.to(d), mu.to(d), None, 1.0, 1.0), TypeError,
                       r"cont_mean must have the same dtype as cat_logits \(Float\); got Double"),
        "logstd-dtype": ((None, None, mu, mu, mu.to(d), 1.0, 1.0), TypeError,
                         r"cont_logstd must have the same dtype as cont_mean \(Float\); got Double"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs("cpu")))
def test_bad_input_raises_naming_the_argument(impl, case):
    _, device = impl
    args, exc, pattern = _bad_inputs(device)[case]
    with pytest.raises(exc, match=pattern):
        out = L.info_loss(*args)
        pytest.fail(f"returned {out!r} instead of raising")  # pragma: no cover


def test_mismatched_devices_raise(impl):
    _, device = impl
    other = "meta" if device == "cpu" else "cpu"
    x = torch.zeros((3, 4), device=device)
    c = torch.zeros((3,), dtype=torch.long, device=device)
    mu = torch.zeros((3, 2), device=other)
    with pytest.raises(RuntimeError, match="must be on the same device"):
        ops.info_loss(x, c, mu, mu, None, 1.0, 1.0)
    with pytest.raises(RuntimeError, match="cat_logits and cat_codes must be on the same device"):
        ops.info_loss(x, c.to(other), None, None, None, 1.0, 1.0)


# ---- opcheck and the ops per pass -----------------------------------------------------------------


def _opcheck_args(case, device, gen):
    f64 = torch.float64
    x = randn((3, 5), f64, device, gen)
    c = torch.randint(0, 5, (3,), generator=gen).to(device)
    mu, cc, ls = (randn((3, 2), f64, device, gen) for _ in range(3))
    rg = lambda t: t.clone().requires_grad_()  # noqa: E731
    g0 = randn((), f64, device, gen)
    return {
        "info_loss-full": (rg(x), c, rg(mu), rg(cc), rg(ls), 0.7, 1.3),
        "info_loss-cat": (rg(x), c, None, None, None, 1.0, 1.0),
        "info_loss-cont": (None, None, rg(mu), cc, None, 1.0, 2.0),
        "info_loss_backward-full": (g0, x, c, mu, cc, ls, 0.7, 1.3),
        "info_loss_backward-cont": (g0, None, None, mu, cc, None, 1.0, 1.0),
    }[case]


OPCHECK_CASES = ["info_loss-full", "info_loss-cat", "info_loss-cont", "info_loss_backward-full",
                 "info_loss_backward-cont"]


@pytest.mark.parametrize("case", OPCHECK_CASES)
@pytest.mark.parametrize("which", ["cpu", "triton", "cuda"])
def test_opcheck(which, case, rng):
    device = implementation_device(which, "info_loss")
    namespace = torch.ops.ganfast_triton if which == "triton" else torch.ops.ganfast
    op = getattr(namespace, case.split("-")[0]).default
    result = torch.library.opcheck(op, _opcheck_args(case, device, rng))
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
    tensors, weights = make_inputs("full", torch.float32, device, rng)
    namespace = "ganfast_triton" if name == "triton" else "ganfast"
    with OpCounter() as forward:
        loss = ops.info_loss(*tensors, *weights)
    with OpCounter() as backward:
        loss.backward()
    assert forward.ops == [f"{namespace}::info_loss"]
    assert backward.ops == [f"{namespace}::info_loss_backward"]
    assert all(t.grad is not None for t in tensors if t is not None and t.is_floating_point())
