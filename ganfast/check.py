"""`ganfast check`: is every kernel right on this machine? The first command to run on a GPU.

Every op family x every backend available here x float32 / float16 / bfloat16, at small shapes
and at production shapes (and on a GPU, sizes of more than 2^31 elements), compared with the
reference implementation run in float64 (float32 for those float16-only sizes): the value,
the gradients with a random upstream gradient, and the second derivatives where the family
promises them. Every case runs twice; where it reduces (sums, norms, statistics) the two runs
must agree bit for bit.

The cases are data (CASES: one `Case` per op, shape and variant) and one generic runner
(`Runner.run`) checks them all; `tests/test_gpu_check.py` runs the same list on a GPU under pytest.

Tolerances (TOLERANCES, shared with tests/conftest.py) come from the dtype: a result computed in
float32 and rounded once to its dtype. Each element may differ from the float64 reference (rounded
to the same dtype) by atol x the tensor's largest magnitude + rtol x its own. Where sums cancel or
PyTorch itself rounds intermediates (see `compare`), the whole tensor's largest error is held to
rtol x its largest magnitude + twice the error of the reference run in the tested dtype; the table
marks those rows with *.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import torch

# (atol, rtol) by dtype of the tensor under test. Half-precision results are computed in float32
# and rounded once, so they are compared with two units in the last place of their format. The
# test suite's assert_close uses this table too (tests/conftest.py).
TOLERANCES = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (1e-6, 1e-5),
    torch.float16: (1e-5, 2e-3),
    torch.bfloat16: (1e-5, 1.6e-2),
}

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SIZES = ("small", "production", "huge")
# How much of PyTorch's own error in the tested dtype a kernel may show (see the module docstring).
TORCH_ERROR_FACTOR = 2.0


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ---- the cases ------------------------------------------------------------------------------------
# A case builds its inputs (`make`, from a seeded generator, in the tested dtype) and calls one op
# of ganfast.ops on them (`call`, returning named outputs). The same two functions serve the backend
# under test and the float64 reference (ganfast's `reference` backend on float64 copies), so a case
# never states its expected values.


@dataclass(frozen=True)
class Case:
    family: str
    op: str
    variant: str
    size: str                     # small / production / huge (GPU only, > 2^31 elements)
    shape: tuple
    make: Callable                # (shape, dtype, device, generator) -> {name: tensor}
    call: Callable                # {name: tensor} -> {name: output tensor}
    double_backward: bool = False
    reduces: bool = True          # sums / norms / statistics: two runs must be bit-identical
    dtypes: tuple = DTYPES
    dtype_note: str = ""          # why the other dtypes are not run (a skip row); "": no row at all
    oracle_dtype: torch.dtype = torch.float64  # the reference runs on copies in this dtype
    bytes_per_element: int = 48   # GPU memory the check needs per element of `shape` (huge cases)
    # ((result, other result), ...): a result that is 0 in exact arithmetic is rounding noise on
    # the scale of another one (whose max magnitude stands in for the result's own)
    scale_of: tuple = ()

    @property
    def name(self) -> str:
        return f"{self.op}[{self.variant}]" if self.variant else self.op

    @property
    def key(self) -> str:
        return f"{self.name} {self.size} {'x'.join(map(str, self.shape))}"


def _randn(shape, dtype, device, gen, scale=1.0, grad=False):
    t = (torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * scale).to(dtype)
    return t.requires_grad_(grad)


def _rand(shape, dtype, device, gen, low=0.0, high=1.0, grad=False):
    t = (low + (high - low) * torch.rand(shape, generator=gen, device=device, dtype=torch.float32)).to(dtype)
    return t.requires_grad_(grad)


def _ops():
    import ganfast.ops

    return ganfast.ops


# losses


def _make_bce_with_logits(shape, dtype, device, gen):
    return {"input": _randn(shape, dtype, device, gen, 3.0, grad=True),
            "target": _rand(shape, dtype, device, gen, grad=True),  # soft labels: d/dtarget exists
            "weight": _rand(shape[-1:], dtype, device, gen, 0.5, 2.0),
            "pos_weight": _rand(shape[-1:], dtype, device, gen, 0.5, 3.0)}


def _call_bce_with_logits(i):
    return {"loss": _ops().bce_with_logits(i["input"], i["target"], i["weight"], i["pos_weight"], "mean")}


def _make_bce(shape, dtype, device, gen):
    return {"input": _rand(shape, dtype, device, gen, 0.02, 0.98, grad=True),
            "target": _rand(shape, dtype, device, gen, grad=True),
            "weight": _rand(shape[-1:], dtype, device, gen, 0.5, 2.0)}


def _call_bce(i):
    return {"loss": _ops().binary_cross_entropy(i["input"], i["target"], i["weight"], "mean")}


def _make_logits(shape, dtype, device, gen):
    # real and fake halves of different lengths: their blocks and tails differ
    return {"real": _randn(shape, dtype, device, gen, 2.0, grad=True),
            "fake": _randn((shape[0] // 2 + 1,) + tuple(shape[1:]), dtype, device, gen, 2.0, grad=True)}


def _call_d_loss(i):
    return {"loss": _ops().gan_d_loss(i["real"], i["fake"], "nonsaturating", 0.9, 0.1)}


def _make_fake_logits(shape, dtype, device, gen):
    return {"fake": _randn(shape, dtype, device, gen, 2.0, grad=True)}


def _call_g_loss(i):
    return {"loss": _ops().gan_g_loss(i["fake"], "nonsaturating")}


# info_loss


def _make_info(shape, dtype, device, gen):
    B, K, J = shape
    return {"cat_logits": _randn((B, K), dtype, device, gen, 2.0, grad=True),
            "cat_codes": torch.randint(0, K, (B,), generator=gen, device=device),
            "cont_mean": _randn((B, J), dtype, device, gen, grad=True),
            "cont_codes": _randn((B, J), dtype, device, gen, grad=True),
            "cont_logstd": _randn((B, J), dtype, device, gen, 0.5, grad=True)}


def _call_info(i):
    return {"loss": _ops().info_loss(i["cat_logits"], i["cat_codes"], i["cont_mean"], i["cont_codes"],
                                     i["cont_logstd"], 0.7, 1.3)}


# cycle_loss


def _make_cycle(shape, dtype, device, gen):
    # two pairs of different sizes (their blocks, chunks and tails differ); both sides differentiable
    # (the identity loss's original is a generator's input too)
    second = (shape[0] // 2 + 1,) + tuple(shape[1:])
    return {"rec_a": _randn(shape, dtype, device, gen, grad=True), "orig_a": _randn(shape, dtype, device, gen, grad=True),
            "rec_b": _randn(second, dtype, device, gen, grad=True), "orig_b": _randn(second, dtype, device, gen, grad=True)}


def _call_cycle(i):
    return {"loss": _ops().cycle_loss([i["rec_a"], i["rec_b"]], [i["orig_a"], i["orig_b"]], 10.0)}



# orthogonal_regularization


def _make_ortho(shape, dtype, device, gen):
    # (m, k): a conv-shaped weight (m, k, 1, 1) with its m x m Gram, a tall linear (4m, 5) (the W^T W
    # path) and an odd one; scaled by 1/sqrt(fan-in) as initialised layers are
    m, k = shape
    return {"conv": _randn((m, k, 1, 1), dtype, device, gen, scale=k ** -0.5, grad=True),
            "tall": _randn((4 * m, 5), dtype, device, gen, scale=5 ** -0.5, grad=True),
            "odd": _randn((m // 2 + 1, 3, 3), dtype, device, gen, scale=1 / 3, grad=True)}


def _call_ortho(i):
    return {"loss": _ops().orthogonal_regularization([i["conv"], i["tall"], i["odd"]], 0.37)}

# penalty


def _make_interpolate(shape, dtype, device, gen):
    return {"real": _randn(shape, dtype, device, gen, grad=True), "fake": _randn(shape, dtype, device, gen, grad=True),
            "eps": _rand(shape[:1], dtype, device, gen)}


def _call_interpolate(i):
    return {"x_hat": _ops().interpolate(i["real"], i["fake"], i["eps"])}


def _make_penalty(shape, dtype, device, gen):
    # per-sample norms about 1, on both sides of wgan-gp's center; far from the kink at 0
    scale = 1.0 / math.sqrt(math.prod(shape[1:]))
    return {"grad": _randn(shape, dtype, device, gen, scale, grad=True)}


def _call_penalty(i):
    penalty, norms = _ops().penalty_from_grad(i["grad"], "wgan-gp", 1.0)
    return {"penalty": penalty, "norms": norms}


# bias_act


def _make_bias_act(shape, dtype, device, gen):
    return {"x": _randn(shape, dtype, device, gen, 2.0, grad=True),
            "b": _randn(shape[1:2], dtype, device, gen, grad=True)}


def _bias_act(act):
    def call(i):
        return {"y": _ops().bias_act(i["x"], i["b"], 1, act)}

    return call


# batch_norm_act and the generator block


def _make_batch_norm(shape, dtype, device, gen):
    c = shape[1]
    return {"x": (_randn(shape, dtype, device, gen, 2.0) + 0.5).requires_grad_(),  # a mean away from 0
            "weight": _rand((c,), dtype, device, gen, 0.5, 1.5, grad=True),
            "bias": _randn((c,), dtype, device, gen, 0.5, grad=True),
            "running_mean": _randn((c,), dtype, device, gen, 0.1),
            "running_var": _rand((c,), dtype, device, gen, 0.5, 1.5)}


def _make_cond_batch_norm(shape, dtype, device, gen):
    # conditional BatchNorm ("cond" variants): weight and bias (N, C), one per sample
    n, c = shape[:2]
    return dict(_make_batch_norm(shape, dtype, device, gen),
                weight=_rand((n, c), dtype, device, gen, 0.5, 1.5, grad=True),
                bias=_randn((n, c), dtype, device, gen, 0.5, grad=True))


def _batch_norm_act(act, training):
    def call(i):
        out = _ops().batch_norm_act(i["x"], i["weight"], i["bias"], i["running_mean"], i["running_var"],
                                    training, 0.1, 1e-5, act)
        return _with_running_stats(out, i, training)

    return call


def _with_running_stats(out, i, training):
    # training updates the running statistics in place: they are results too
    return {"out": out, "running_mean": i["running_mean"], "running_var": i["running_var"]} if training \
        else {"out": out}


# instance_norm_act (CycleGAN's InstanceNorm + ReLU / LeakyReLU): per-(n, c) statistics


def _make_instance_norm(shape, dtype, device, gen):
    c = shape[1]
    return {"x": (_randn(shape, dtype, device, gen, 2.0) + 0.5).requires_grad_(),  # a mean away from 0
            "weight": _rand((c,), dtype, device, gen, 0.5, 1.5, grad=True),
            "bias": _randn((c,), dtype, device, gen, 0.5, grad=True)}


def _instance_norm_act(act, alpha=None):
    def call(i):
        return {"out": _ops().instance_norm_act(i["x"], i["weight"], i["bias"], 1e-5, act, alpha)}

    return call


def _make_block(shape, dtype, device, gen):
    """shape: (N, Cin, H, W, Cout) with DCGAN's upsampling convolution (kernel 4, stride 2, padding 1)."""
    n, cin, h, w, cout = shape
    fan_in = cin * 16
    return {"x": _randn((n, cin, h, w), dtype, device, gen, grad=True),
            "conv_weight": _randn((cin, cout, 4, 4), dtype, device, gen, (2.0 / fan_in) ** 0.5, grad=True),
            "conv_bias": _randn((cout,), dtype, device, gen, 0.5, grad=True),
            "bn_weight": _rand((cout,), dtype, device, gen, 0.5, 1.5, grad=True),
            "bn_bias": _randn((cout,), dtype, device, gen, 0.5, grad=True),
            "running_mean": _randn((cout,), dtype, device, gen, 0.1),
            "running_var": _rand((cout,), dtype, device, gen, 0.5, 1.5)}


def _block(act, training):
    def call(i):
        out = _ops().conv_transpose_block(
            i["x"], i["conv_weight"], i["conv_bias"], i["bn_weight"], i["bn_bias"], i["running_mean"],
            i["running_var"], norm=True, training=training, momentum=0.1, eps=1e-5, stride=(2, 2), padding=(1, 1),
            act=act, alpha=0.2)
        return _with_running_stats(out, i, training)

    return call


# Shapes: "small" has odd sizes (masked tails, one program); "production" has many programs,
# reductions over several blocks per program (the losses' BLOCK 1024 x MAX_PARTIALS 2048), the
# production Triton tiles (batch_norm_act's 2048-element tiles, the convolution's 64 x 64) and
# the CPU kernels' parallel chunks; "huge" has more than 2^31 elements (64-bit indexing).
# ReLU's kink: a pre-activation that rounding moves across 0 flips its gradient. So the production
# shapes (millions of values) use smooth activations, and so does the convolution block in half
# precision (PyTorch rounds the convolution's output to half before the BatchNorm); the small
# ones keep DCGAN's ReLU.
_HUGE = 2 ** 31 + 2 ** 20 + 7
# The huge sizes in float16 only, without double backward, against a float32 oracle (2^13 times
# finer than float16): a float64 copy of 2^31 values is 17 GiB and the reference holds several.
# The indexing is the same code in every dtype.
_HUGE_KW = dict(dtypes=(torch.float16,), oracle_dtype=torch.float32, bytes_per_element=48)


# spectral_norm


def _make_spectral_norm(shape, dtype, device, gen):
    h = shape[0]
    w = 1
    for d in shape[1:]:
        w *= d
    unit = lambda n: torch.nn.functional.normalize(_randn((n,), torch.float32, device, gen), dim=0).to(dtype)  # noqa: E731
    return {"weight": _randn(shape, dtype, device, gen, 0.1, grad=True), "u": unit(h), "v": unit(w)}


def _call_spectral_norm(i):
    # training: one power step updates u and v in place; they are compared too
    out = _ops().spectral_norm(i["weight"], i["u"], i["v"], 0, 1, 1e-12, True)
    return {"out": out, "u": i["u"], "v": i["v"]}


def _cases() -> list:
    c = []

    def add(family, op, variant, make, call, shapes, **kw):
        for size, shape in shapes.items():
            c.append(Case(family, op, variant, size, shape, make, call, **kw))

    add("losses", "bce_with_logits", "", _make_bce_with_logits, _call_bce_with_logits,
        {"small": (7, 13), "production": (257, 8193)})
    add("losses", "binary_cross_entropy", "", _make_bce, _call_bce, {"small": (7, 13), "production": (257, 8193)})
    add("losses", "gan_d_loss", "nonsaturating", _make_logits, _call_d_loss,
        {"small": (77,), "production": (4_200_001,)})
    add("losses", "gan_g_loss", "nonsaturating", _make_fake_logits, _call_g_loss,
        {"small": (77,), "production": (4_200_001,)})
    add("losses", "gan_g_loss", "nonsaturating", _make_fake_logits, _call_g_loss, {"huge": (_HUGE,)}, **_HUGE_KW)
    add("cycle_loss", "cycle_loss", "", _make_cycle, _call_cycle, {"small": (3, 3, 5, 7), "production": (64, 3, 64, 64)})
    # BigGAN's orthogonal regularization (production: a 512 x 4608 conv weight, a BigGAN-128 block's)
    add("orthogonal_regularization", "orthogonal_regularization", "", _make_ortho, _call_ortho,
        {"small": (7, 13), "production": (512, 4608)})
    # InfoGAN: B x K categorical logits, B x J continuous codes (production: many rows and blocks, K ~ 1000)
    add("info_loss", "info_loss", "", _make_info, _call_info, {"small": (7, 10, 3), "production": (8193, 1000, 16)})
    # a conv weight (out, in, k, k): the power step's mat-vecs, sigma, weight / sigma and the backward
    add("spectral_norm", "spectral_norm", "", _make_spectral_norm, _call_spectral_norm,
        {"small": (7, 5, 3, 3), "production": (512, 512, 3, 3)})
    add("penalty", "interpolate", "", _make_interpolate, _call_interpolate,
        {"small": (3, 3, 5, 7), "production": (64, 3, 64, 64)}, double_backward=True, reduces=False)
    add("penalty", "penalty_from_grad", "wgan-gp", _make_penalty, _call_penalty,
        {"small": (3, 3, 5, 7), "production": (64, 3, 128, 128)}, double_backward=True)
    add("bias_act", "bias_act", "lrelu", _make_bias_act, _bias_act("lrelu"),
        {"small": (3, 5, 7, 9), "production": (64, 128, 16, 16)}, double_backward=True)
    # first order only: the bias gradient reduced inside the backward kernel
    # (bias_act_backward_with_bias), the path of every backward that builds no graph
    add("bias_act", "bias_act", "lrelu,first-order", _make_bias_act, _bias_act("lrelu"),
        {"small": (3, 5, 7, 9), "production": (64, 128, 16, 16)})
    add("bias_act", "bias_act", "lrelu", _make_bias_act, _bias_act("lrelu"), {"huge": (2, 1025, 1024, 1024)},
        **_HUGE_KW)
    add("bias_act", "bias_act", "swish", _make_bias_act, _bias_act("swish"),
        {"small": (3, 5, 7, 9), "production": (64, 128, 16, 16)}, double_backward=True)
    add("instance_norm_act", "instance_norm_act", "relu", _make_instance_norm, _instance_norm_act("relu"),
        {"small": (3, 5, 7, 9)})
    add("instance_norm_act", "instance_norm_act", "lrelu", _make_instance_norm, _instance_norm_act("lrelu", 0.2),
        {"small": (3, 5, 7, 9)})
    add("instance_norm_act", "instance_norm_act", "tanh", _make_instance_norm, _instance_norm_act("tanh"),
        {"production": (8, 64, 64, 64)})
    for training in (True, False):
        mode = "train" if training else "eval"
        add("batch_norm_act", "batch_norm_act", f"relu,{mode}", _make_batch_norm, _batch_norm_act("relu", training),
            {"small": (3, 5, 7, 9)})
        add("batch_norm_act", "batch_norm_act", f"tanh,{mode}", _make_batch_norm, _batch_norm_act("tanh", training),
            {"production": (64, 128, 16, 16)})
        add("batch_norm_act", "batch_norm_act", f"relu,cond,{mode}", _make_cond_batch_norm,
            _batch_norm_act("relu", training), {"small": (3, 5, 7, 9), "production": (64, 256, 16, 16)})
        # with batch statistics the conv bias cancels: its gradient is the rounding of sum(dz)
        cancels = (("d/dconv_bias", "d/dbn_bias"),) if training else ()
        add("conv_block", "conv_transpose_block", f"relu,{mode}", _make_block, _block("relu", training),
            {"small": (2, 5, 3, 3, 7)}, dtypes=(torch.float32,), scale_of=cancels,
            dtype_note="half precision runs tanh: PyTorch rounds the convolution's output, moving ReLU's kink")
        add("conv_block", "conv_transpose_block", f"tanh,{mode}", _make_block, _block("tanh", training),
            {"small": (2, 5, 3, 3, 7), "production": (16, 64, 8, 8, 64)}, scale_of=cancels)
    return c


CASES: list = _cases()
FAMILIES = tuple(dict.fromkeys(c.family for c in CASES))
OPS = tuple(dict.fromkeys(c.op for c in CASES))


# ---- which backends run where ----------------------------------------------------------------------


def enable_triton_interpreter() -> bool:
    """Without a GPU, Triton's kernels run on CPU tensors only through its interpreter, which must
    be switched on before triton is imported (as tests/conftest.py does). Returns whether it is on."""
    if not torch.cuda.is_available() and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from .backend import triton_interpreter

    return triton_interpreter()


def backends_for(device: torch.device) -> tuple:
    """(backends that run on `device` here, {backend: why not})."""
    from .bench.harness import ganfast_backends

    return ganfast_backends(device, include_interpreter=True)


# ---- the runner ------------------------------------------------------------------------------------


@dataclass
class Row:
    op: str
    family: str
    backend: str
    dtype: str
    size: str
    shape: str
    status: str = "ok"            # ok / FAIL / skip
    error: Optional[float] = None  # the worst |got - expected| ...
    tolerance: Optional[float] = None  # ... and what was allowed there
    worst: str = ""               # which result that was
    repeatable: Optional[bool] = None  # None: not a reduction
    seconds: Optional[float] = None  # one forward + backward (+ double backward), the second run
    detail: str = ""              # why it failed or was skipped
    results: dict = field(default_factory=dict)  # per result: {"error", "tolerance", "rule"}

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _seed(case: Case, dtype: torch.dtype) -> int:
    # fixed per case and dtype, the same in every run (str's hash() changes per process)
    return zlib.crc32(f"{case.key} {dtype_name(dtype)}".encode())


def _oracle_copy(case: Case, inputs: dict) -> dict:
    # integer inputs (class indices) stay as they are
    return {k: v.detach().to(case.oracle_dtype).requires_grad_(v.requires_grad) if v.is_floating_point() else v
            for k, v in inputs.items()}


def draw_upstream(case: Case, dtype: torch.dtype, device: torch.device) -> dict:
    """The random upstream gradients of a case, drawn in the tested dtype: "up NAME" for each
    differentiable output, "v NAME" (the direction of the double backward) for each input that
    requires grad. Which outputs are differentiable (norms and statistics are not) and their shapes
    come from one run of the reference."""
    import ganfast

    inputs = case.make(case.shape, dtype, device, _generator(device, _seed(case, dtype)))
    wrt = {k: v for k, v in inputs.items() if v.requires_grad}
    with ganfast.use_backend("reference"):
        outputs = case.call(_oracle_copy(case, inputs))
    diff = {k: v.shape for k, v in outputs.items() if v.requires_grad}
    del outputs
    if not wrt or not diff:
        return {}
    gen = _generator(device, _seed(case, dtype) + 1)
    up = {f"up {k}": _randn(shape, dtype, device, gen) for k, shape in diff.items()}
    up.update({f"v {k}": _randn(v.shape, dtype, device, gen) for k, v in wrt.items()})
    return up


def evaluate(case: Case, inputs: dict, upstream: dict) -> dict:
    """Run the case on `inputs` with the selected backend: {result name: tensor} for the outputs,
    the gradients w.r.t. every input that requires grad (upstream gradients `upstream`, converted
    to the inputs' dtype), and with double_backward the second derivatives through them."""
    outputs = case.call(inputs)
    results = {name: t.detach() for name, t in outputs.items()}
    wrt = {k: v for k, v in inputs.items() if v.requires_grad}
    diff = {k: v for k, v in outputs.items() if v.requires_grad}
    if not wrt or not diff:
        return results
    dtype = next(iter(wrt.values())).dtype
    # detached copies: the upstream gradients are shared by every run of the case
    ups = {k: v.detach().to(dtype).requires_grad_(case.double_backward and k.startswith("up "))
           for k, v in upstream.items()}
    grads = torch.autograd.grad(list(diff.values()), list(wrt.values()), [ups[f"up {k}"] for k in diff],
                                create_graph=case.double_backward)
    results.update({f"d/d{k}": g.detach() for k, g in zip(wrt, grads)})
    if case.double_backward:
        # d<grads, v> w.r.t. the inputs and the upstream gradients: every second derivative the
        # backward's own backward computes
        inner = [(g * ups[f"v {k}"]).sum() for k, g in zip(wrt, grads) if g.requires_grad]
        targets = {**{f"d2/d{k}": v for k, v in wrt.items()}, **{f"d2/d(up {k})": ups[f"up {k}"] for k in diff}}
        if inner:
            second = torch.autograd.grad(sum(inner), list(targets.values()), allow_unused=True,
                                         materialize_grads=True)
        else:  # no gradient depends on anything: every second derivative is 0
            second = [torch.zeros_like(t) for t in targets.values()]
        results.update({k: g.detach() for k, g in zip(targets, second)})
    return results


def _subnormal_ulp(dtype: torch.dtype) -> float:
    info = torch.finfo(dtype)
    return info.tiny * info.eps


CHUNK = 1 << 24  # elements compared at once: bounds the float64 temporaries of the huge sizes


def compare(got: torch.Tensor, expected64: torch.Tensor, torch_error: Optional[float] = None,
            scale: Optional[float] = None) -> tuple:
    """(error, tolerance, rule) of one result.

    rule "element": the element with the largest error / tolerance, where tolerance = atol x
    max|expected| + rtol x |expected| (atol scales with the tensor: a mean over a million values
    has gradients of 1e-6) + two units of the format's subnormals (a half-precision gradient of
    1e-7 is subnormal). That is "computed in float32, rounded once".
    rule "tensor", where that fails and PyTorch's own max error in this dtype (`torch_error`) is
    given: the tensor's max error against rtol x max|expected| + TORCH_ERROR_FACTOR x torch_error.
    Sums that cancel to about 0 (the conv bias under BatchNorm), sums of terms already rounded to
    half precision (a bias gradient, as eager PyTorch sums it) and results whose inputs PyTorch
    itself rounds (a convolution's output before the BatchNorm) meet that and not the first; a
    wrong element still misses it by orders of magnitude.
    `scale` replaces max|expected| where the case says a result's scale is another's."""
    if got.shape != expected64.shape:
        return math.inf, 0.0, f"shape {tuple(got.shape)}, expected {tuple(expected64.shape)}"
    atol, rtol = TOLERANCES[got.dtype]
    if scale is None:  # max|expected| without a temporary the size of the tensor
        scale = float(torch.linalg.vector_norm(expected64, ord=math.inf)) if expected64.numel() else 0.0
        if math.isnan(scale):
            scale = max(float(e.abs().max()) for e, _ in _chunks(got, expected64))
    floor = atol * scale + 2 * _subnormal_ulp(got.dtype)
    worst = (-1.0, 0.0, 0.0)  # (ratio, error, tolerance)
    max_error = 0.0
    for e, diff in _chunks(got, expected64):
        tol = rtol * e.abs() + floor
        ratio = diff / tol
        i = int(ratio.argmax())
        if float(ratio[i]) > worst[0]:
            worst = (float(ratio[i]), float(diff[i]), float(tol[i]))
        max_error = max(max_error, float(diff.max()))
    ratio, error, tolerance = worst
    if ratio > 1.0 and torch_error is not None:
        bound = rtol * scale + TORCH_ERROR_FACTOR * torch_error
        if max_error <= bound:
            return max_error, bound, "tensor"
    return error, tolerance, "element"


def _chunks(got: torch.Tensor, expected64: torch.Tensor):
    """(expected rounded to got's dtype, |got - expected|) over flat chunks of CHUNK elements, in
    float32 for float32 and half results (both sides are float32 numbers: their difference is
    exact to 2^-24 of itself). A nan where the reference has nan is right (difference 0, and the
    expected value 0), elsewhere wrong (difference inf)."""
    work = torch.float64 if got.dtype == torch.float64 else torch.float32
    a_all, e_all = got.detach().flatten(), expected64.detach().flatten().to(got.device)
    for start in range(0, a_all.numel(), CHUNK):
        a = a_all[start:start + CHUNK].to(work)
        e = e_all[start:start + CHUNK].to(got.dtype).to(work)  # rounded once, as the kernels round
        diff = (a - e).abs()
        if math.isnan(float(diff.max())):  # max propagates nan: the slow path only where needed
            diff = torch.where(a.isnan() & e.isnan(), 0.0, diff.nan_to_num(math.inf))
            e = e.nan_to_num(0.0)
        yield e, diff


def _max_error(got: torch.Tensor, expected64: torch.Tensor) -> float:
    return max((float(diff.max()) for _, diff in _chunks(got, expected64)), default=0.0)


def bit_identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    if torch.equal(a, b):
        return True
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _shape_text(case: Case) -> str:
    return "x".join(map(str, case.shape))


class Runner:
    """Runs cases on one device. The float64 reference results of a (case, dtype) are computed
    once and shared by every backend."""

    def __init__(self, device: torch.device):
        self.device = device
        self._expected: dict = {}
        self._torch_errors: dict = {}

    def inputs(self, case: Case, dtype: torch.dtype) -> dict:
        return case.make(case.shape, dtype, self.device, _generator(self.device, _seed(case, dtype)))

    def expected(self, case: Case, dtype: torch.dtype) -> tuple:
        """(float64 reference results, the upstream gradients they used)."""
        key = (case.key, dtype)
        if key not in self._expected:
            import ganfast

            self._expected = {}  # one case at a time (freed first: the huge ones are huge)
            upstream = draw_upstream(case, dtype, self.device)
            with ganfast.use_backend("reference"):
                results = evaluate(case, _oracle_copy(case, self.inputs(case, dtype)), upstream)
            self._expected = {key: (results, upstream)}
        return self._expected[key]

    def torch_errors(self, case: Case, dtype: torch.dtype) -> dict:
        """Per result, the max error of the reference implementation run in `dtype`: PyTorch's own."""
        key = (case.key, dtype)
        if key not in self._torch_errors:
            import ganfast

            self._torch_errors = {}
            expected, upstream = self.expected(case, dtype)
            with ganfast.use_backend("reference"):
                got = evaluate(case, self.inputs(case, dtype), upstream)
            self._torch_errors = {key: {k: _max_error(got[k], e)
                                        for k, e in expected.items() if k in got}}
        return self._torch_errors[key]

    def run(self, case: Case, backend: str, dtype: torch.dtype) -> Row:
        """One row: the case on `backend` in `dtype`, twice, against the float64 reference."""
        import ganfast

        row = Row(case.name, case.family, backend, dtype_name(dtype), case.size, _shape_text(case))
        try:
            expected, upstream = self.expected(case, dtype)
            runs = []
            for _ in range(2):
                inputs = self.inputs(case, dtype)
                _synchronize(self.device)
                t0 = time.perf_counter()
                with ganfast.use_backend(backend):
                    runs.append(evaluate(case, inputs, upstream))
                _synchronize(self.device)
                row.seconds = time.perf_counter() - t0  # the second run's: compilation excluded
                del inputs
            got, again = runs
            self._score(row, case, dtype, got, expected)
        except torch.OutOfMemoryError as exc:  # the size, not the kernel: say so, do not fail
            row.status, row.detail = "skip", f"out of memory on {self.device.type}: {str(exc).splitlines()[0][:200]}"
            self._expected, self._torch_errors = {}, {}
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return row
        except Exception as exc:  # noqa: BLE001  (whatever a kernel raises fails this row)
            from .bench.harness import one_line

            row.status, row.detail = "FAIL", one_line(exc, 300)
            return row
        if case.reduces:
            differ = [k for k in got if not bit_identical(got[k], again[k])]
            row.repeatable = not differ
            if differ and not row.failed:
                row.status, row.detail = "FAIL", f"not repeatable: two runs differ in {', '.join(differ)}"
        return row

    def _score(self, row: Row, case: Case, dtype: torch.dtype, got: dict, expected: dict) -> None:
        worst_ratio = -1.0
        for name, e in expected.items():
            if name not in got:
                row.status, row.detail = "FAIL", f"{name}: missing (the reference computes it)"
                continue
            other = dict(case.scale_of).get(name)
            scale = float(expected[other].abs().max()) if other else None
            error, tol, rule = compare(got[name], e, scale=scale)
            if error > tol:  # PyTorch's own error in this dtype, computed only when needed
                error, tol, rule = compare(got[name], e, self.torch_errors(case, dtype).get(name), scale)
            row.results[name] = {"error": error, "tolerance": tol, "rule": rule}
            ratio = error / tol if tol > 0 else (0.0 if error == 0 else math.inf)
            if ratio > worst_ratio:
                worst_ratio, row.error, row.tolerance, row.worst = ratio, error, tol, name
            if error > tol and not row.failed:
                row.status, row.detail = "FAIL", f"{name}: max error {error:.3g} > tolerance {tol:.3g}"
                if rule not in ("element", "tensor"):
                    row.detail += f" ({rule})"


# ---- selection -----------------------------------------------------------------------------------------


def _pick(kind: str, given: Optional[Sequence[str]], known: Sequence[str]) -> Optional[set]:
    """The set of names given (None: all), or ValueError naming the unknown ones."""
    if not given:
        return None
    unknown = [g for g in given if g not in known]
    if unknown:
        raise ValueError(f"unknown {kind} {', '.join(map(repr, unknown))}; choose from {', '.join(known)}")
    return set(given)


def select_cases(ops: Optional[Sequence[str]] = None, sizes: Optional[Sequence[str]] = None) -> list:
    """The cases of `ops` (op or family names) at `sizes` (all by default)."""
    wanted = _pick("op", ops, OPS + FAMILIES)
    wanted_sizes = _pick("size", sizes, SIZES)
    return [c for c in CASES if (wanted is None or c.op in wanted or c.family in wanted)
            and (wanted_sizes is None or c.size in wanted_sizes)]


def select_dtypes(names: Optional[Sequence[str]] = None) -> list:
    wanted = _pick("dtype", names, [dtype_name(d) for d in DTYPES])
    return [d for d in DTYPES if wanted is None or dtype_name(d) in wanted]


def skip_reason(case: Case, backend: str, dtype: torch.dtype, device: torch.device, quick: bool) -> Optional[str]:
    """Why this (case, backend, dtype) is not run on `device`, or None."""
    if dtype not in case.dtypes:
        return case.dtype_note or f"{case.size} {case.name} runs {', '.join(map(dtype_name, case.dtypes))} only"
    if case.size == "huge":
        if quick:
            return "64-bit indexing sizes run only without --quick"
        if device.type != "cuda":
            return "64-bit indexing sizes run on a GPU only"
        if backend == "reference":
            return "the reference in float64 is this size's oracle already"
        free, _ = torch.cuda.mem_get_info(device)
        need = math.prod(case.shape) * case.bytes_per_element
        if need > free:
            return f"needs about {need / 2**30:.0f} GiB of GPU memory, {free / 2**30:.0f} GiB free"
    if backend == "triton" and device.type == "cpu" and case.size != "small":
        # measured: one production launch of the losses' kernel takes minutes in the interpreter
        return "Triton's interpreter runs one program at a time in Python: production shapes run on a GPU"
    return None


@contextlib.contextmanager
def exact_convolutions():
    """cuDNN's convolutions as the check needs them, restored afterwards:
    - TF32 off (eager's and the cuda backend's): TF32 rounds float32 operands to 10 mantissa bits,
      and the check compares float32 results with float64. torch >= 2.9 has per-backend flags;
      reading the legacy one after setting those raises.
    - deterministic algorithms, no autotuning: cuDNN's fastest backward of a transposed
      convolution accumulates with atomics, so two runs differ in the last bits (seen on an H200:
      conv_transpose_block's cuda and reference rows "not repeatable" at the production size,
      the Triton row, which convolves itself, repeatable). The check's repeatability is a claim
      about ganfast's own reductions, which cuDNN's choice must not hide or fake."""
    cudnn = torch.backends.cudnn
    saved_deterministic, saved_benchmark = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = True, False
    conv = getattr(cudnn, "conv", None)
    new_flags = conv is not None and hasattr(conv, "fp32_precision")
    saved_precision = conv.fp32_precision if new_flags else cudnn.allow_tf32
    if new_flags:
        conv.fp32_precision = "ieee"
    else:
        cudnn.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = saved_deterministic, saved_benchmark
        if new_flags:
            conv.fp32_precision = saved_precision
        else:
            cudnn.allow_tf32 = saved_precision


def plan(device, backends: Optional[Sequence[str]] = None, ops: Optional[Sequence[str]] = None,
         dtypes: Optional[Sequence[str]] = None, sizes: Optional[Sequence[str]] = None, quick: bool = False) -> list:
    """[(case, backend, dtype, skip reason or None)] of a check on `device`, in table order.
    Raises ValueError for an unknown backend, op, dtype or size."""
    device = torch.device(device)
    cases = select_cases(ops, sizes)
    dtype_list = select_dtypes(dtypes)
    available, unavailable = backends_for(device)
    chosen = _pick("backend", backends, list(available) + list(unavailable))
    for name in sorted(chosen or ()):
        if name in unavailable:
            raise ValueError(f"backend {name!r} cannot run on {device.type} here: {unavailable[name]}")
    # A backend that cannot run here has no rows (the command names it and why, once). Backends
    # innermost: they share the float64 reference of a (case, dtype), which the runner keeps once.
    return [(case, backend, dtype, skip_reason(case, backend, dtype, device, quick))
            for case in cases for dtype in dtype_list if dtype in case.dtypes or case.dtype_note
            for backend in available if chosen is None or backend in chosen]


def run_check(device, backends: Optional[Sequence[str]] = None, ops: Optional[Sequence[str]] = None,
              dtypes: Optional[Sequence[str]] = None, sizes: Optional[Sequence[str]] = None, quick: bool = False,
              progress: Optional[Callable[[Row], None]] = None) -> list:
    """Every selected case x backend x dtype on `device`: a list of Rows (skips included, with
    their reason). Raises ValueError for an unknown backend, op, dtype or size."""
    device = torch.device(device)
    runner = Runner(device)
    rows = []
    with exact_convolutions():
        for case, backend, dtype, reason in plan(device, backends, ops, dtypes, sizes, quick):
            if reason:
                row = Row(case.name, case.family, backend, dtype_name(dtype), case.size, _shape_text(case),
                          status="skip", detail=reason)
            else:
                row = runner.run(case, backend, dtype)
            rows.append(row)
            if progress:
                progress(row)
    return rows


# ---- output ----------------------------------------------------------------------------------------------

COLUMNS = ("op", "backend", "dtype", "size", "shape", "max error", "tolerance", "repeatable", "time", "status")
TABLE_WIDTHS = (34, 9, 8, 10, 16, 9, 11, 10, 9, 6)


def _cells(row: Row) -> tuple:
    err = "" if row.error is None else f"{row.error:.2e}"
    tol = "" if row.tolerance is None else f"{row.tolerance:.2e}"
    if row.results and any(r["rule"] == "tensor" for r in row.results.values()):
        tol += " *"
    rep = "" if row.repeatable is None else ("yes" if row.repeatable else "NO")
    sec = "" if row.seconds is None else (f"{row.seconds * 1e3:.1f} ms" if row.seconds < 1 else f"{row.seconds:.2f} s")
    status = row.status if row.status != "skip" else f"skip: {row.detail}"
    return (row.op, row.backend, row.dtype, row.size, row.shape, err, tol, rep, sec, status)


def format_row(row: Row, widths: Sequence[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(_cells(row), widths)).rstrip()



def header() -> str:
    return "  ".join(c.ljust(w) for c, w in zip(COLUMNS, TABLE_WIDTHS)).rstrip()


def failure_report(rows: Sequence[Row], device: torch.device) -> str:
    """What failed, how to keep training meanwhile, and what to report."""
    failed = [r for r in rows if r.failed]
    lines = [f"ganfast check: {len(failed)} check(s) FAILED:"]
    lines += [f"  {r.op} on {r.backend}, {r.dtype}, {r.size} {r.shape}: {r.detail}" for r in failed]
    bad = {r.backend for r in failed}
    ran = list(dict.fromkeys(r.backend for r in rows if r.status != "skip"))
    good = [b for b in ("cuda", "triton", "cpu", "reference") if b in ran and b not in bad]
    if good:
        lines.append("To keep working, select a backend that passed every check here: "
                     + " or ".join(f"GANFAST_BACKEND={b}" for b in good)
                     + " (or ganfast.set_backend(...) in Python; `ganfast train --backend ...`).")
    else:
        lines.append("No backend passed every check here.")
    if "reference" in bad:
        lines.append("The reference (pure PyTorch) failed too: torch or the device itself computes these "
                     "differently from float64.")
    lines.append("Please report it on ganfast's issue tracker with the file `ganfast check --json check.json` "
                 "writes (every row, the torch / triton / CUDA versions, how ganfast was built, and the "
                 f"{'GPU' if device.type == 'cuda' else 'CPU'} name) and this output.")
    return "\n".join(lines)


def environment(device: torch.device) -> dict:
    """The bench harness's description of the machine (versions, device names) and the backends."""
    from . import buildinfo
    from .backend import available_backends
    from .bench.harness import environment as harness_environment

    env = harness_environment(device)
    env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    env["backends"] = {name: {"available": info.available, "detail": info.detail}
                       for name, info in available_backends().items()}
    env["ganfast_config"] = buildinfo.config()  # what `ganfast --version` prints: how this install was built
    return env


def write_json(path: str, rows: Sequence[Row], device: torch.device, quick: bool, seconds: float) -> None:
    data = {"environment": environment(device), "quick": quick, "wall_s": seconds,
            "not_checked": backends_for(device)[1],
            "failed": sum(r.failed for r in rows), "rows": [asdict(r) for r in rows]}
    with open(path, "w") as f:
        json.dump(data, f, indent=2)


# ---- the command ----------------------------------------------------------------------------------------


def _words(value: str) -> list:
    return [w.strip() for w in value.split(",") if w.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the tensors live (auto: cuda when a GPU is visible, else cpu); the cpu "
                        "backend runs CPU tensors only, the cuda backend CUDA tensors only")
    p.add_argument("--quick", action="store_true",
                   help="skip the sizes that need 64-bit indexing: under a minute on a GPU, under 3 minutes on a "
                        "2-core CPU")
    p.add_argument("--json", metavar="FILE", default=None,
                   help="also write every row and the environment (versions, device) to FILE as JSON")
    p.add_argument("--ops", type=_words, default=None, metavar="NAMES",
                   help=f"comma-separated ops or families to check (default: all). Ops: {', '.join(OPS)}; "
                        f"families: {', '.join(FAMILIES)}")
    p.add_argument("--backends", type=_words, default=None, metavar="NAMES",
                   help="comma-separated backends to check (default: every one that runs on the device): "
                        "cuda, triton, cpu, reference")
    p.add_argument("--dtypes", type=_words, default=None, metavar="NAMES",
                   help="comma-separated dtypes (default: float32,float16,bfloat16)")
    p.add_argument("--sizes", type=_words, default=None, metavar="NAMES",
                   help="comma-separated sizes (default: all): small, production, huge (GPU only, > 2^31 elements)")


def run(args: argparse.Namespace) -> int:
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            print("ganfast check: --device cuda, but no GPU is visible (torch.cuda.is_available() is False)",
                  file=sys.stderr)
            return 2
    enable_triton_interpreter()
    try:  # unknown names: an error before anything runs
        plan(device, args.backends, args.ops, args.dtypes, args.sizes, args.quick)
    except ValueError as exc:
        print(f"ganfast check: {exc}", file=sys.stderr)
        return 2
    available, unavailable = backends_for(device)
    from .bench.harness import device_name

    print(f"ganfast check on {device.type} ({device_name(device)}): torch {torch.__version__}, "
          f"backends {', '.join(available) or 'none'}", flush=True)
    for name, why in unavailable.items():
        print(f"  {name}: not checked: {why}")
    print(header(), flush=True)
    t0 = time.perf_counter()
    rows = run_check(device, args.backends, args.ops, args.dtypes, args.sizes, args.quick,
                     progress=lambda r: print(format_row(r, TABLE_WIDTHS), flush=True))
    seconds = time.perf_counter() - t0
    checked = [r for r in rows if r.status != "skip"]
    failed = [r for r in rows if r.failed]
    print(f"\n{len(checked)} checked, {len(failed)} failed, {len(rows) - len(checked)} skipped in {seconds:.1f} s"
          " (* tolerance of the whole tensor: see ganfast/check.py)")
    if args.json:
        write_json(args.json, rows, device, args.quick, seconds)
        print(f"written: {args.json}")
    if failed:
        print("\n" + failure_report(rows, device), file=sys.stderr)
        return 1
    return 0
