"""Argument handling of the Python implementations (Triton launchers, reference): the Python
twin of csrc/ganfast_common.h.

Same rules, same order of checks, same messages and the exception types torch maps the C++
checks to (TORCH_CHECK_VALUE -> ValueError, TORCH_CHECK_TYPE -> TypeError, TORCH_CHECK ->
RuntimeError, AT_DISPATCH's "not implemented for" -> NotImplementedError), so the Triton
backend accepts and rejects exactly what the CPU and CUDA backends do. `op` is the full op name
("ganfast::bce_with_logits"). Nothing here reads tensor data: no host synchronisation.
"""
import math
from typing import NamedTuple, Optional, Sequence

import torch

REDUCTIONS = ("none", "mean", "sum")
GAN_KINDS = ("minimax", "nonsaturating", "hinge", "wasserstein", "least_squares")

# dtypes the kernels are written for (AT_DISPATCH_FLOATING_TYPES_AND2(Half, BFloat16) in C++).
KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# c10::ScalarType names, as the C++ messages print dtypes.
_SCALAR_TYPE_NAMES = {
    torch.uint8: "Byte", torch.int8: "Char", torch.int16: "Short", torch.int32: "Int",
    torch.int64: "Long", torch.float16: "Half", torch.float32: "Float", torch.float64: "Double",
    torch.complex32: "ComplexHalf", torch.complex64: "ComplexFloat",
    torch.complex128: "ComplexDouble", torch.bool: "Bool", torch.bfloat16: "BFloat16",
    torch.qint8: "QInt8", torch.quint8: "QUInt8", torch.qint32: "QInt32",
}


def scalar_type_name(dtype: torch.dtype) -> str:
    """The dtype as c10 prints it: Float, Long, BFloat16, Float8_e4m3fn, UInt16, ..."""
    if dtype in _SCALAR_TYPE_NAMES:
        return _SCALAR_TYPE_NAMES[dtype]
    name = str(dtype).removeprefix("torch.")
    for prefix, cap in (("uint", "UInt"), ("int", "Int"), ("float", "Float"), ("bits", "Bits"),
                        ("quint", "QUInt"), ("qint", "QInt")):
        if name.startswith(prefix):
            return cap + name[len(prefix):]
    return name[:1].upper() + name[1:]


def format_sizes(sizes: Sequence[int]) -> str:
    """IntArrayRef as c10 prints it: [2, 3], [] for a 0-dim tensor."""
    return "[" + ", ".join(str(int(s)) for s in sizes) + "]"


def _choices(names) -> str:
    return ", ".join(f"'{n}'" for n in names)


def parse_reduction(name: str) -> str:
    if name in REDUCTIONS:
        return name
    raise ValueError(f"ganfast: reduction must be one of {_choices(REDUCTIONS)}; got '{name}'")


def parse_gan_kind(name: str) -> str:
    if name in GAN_KINDS:
        return name
    raise ValueError(f"ganfast: kind must be one of {_choices(GAN_KINDS)}; got '{name}'")


def check_floating(t: torch.Tensor, op: str, arg: str) -> None:
    if not t.dtype.is_floating_point:
        raise TypeError(f"{op}: {arg} must be a floating-point tensor; got {scalar_type_name(t.dtype)}")


def check_same_device(a: torch.Tensor, b: torch.Tensor, op: str, arg_a: str, arg_b: str) -> None:
    if a.device != b.device:
        raise RuntimeError(f"{op}: {arg_a} and {arg_b} must be on the same device; "
                           f"got {a.device} and {b.device}")


def check_same_shape(a: torch.Tensor, b: torch.Tensor, op: str, arg_a: str, arg_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{op}: {arg_b} size ({format_sizes(b.shape)}) must be the same as "
                         f"{arg_a} size ({format_sizes(a.shape)})")


def check_kernel_dtype(dtype: torch.dtype, name: str) -> None:
    """AT_DISPATCH_FLOATING_TYPES_AND2(Half, BFloat16, ...)'s refusal of other dtypes (float8)."""
    if dtype not in KERNEL_DTYPES:
        raise NotImplementedError(f"\"{name}\" not implemented for '{scalar_type_name(dtype)}'")


class Broadcast(NamedTuple):
    """An operand broadcast against a tensor of n elements, read at flat index i as
    data[(i // inner) % period]; data is None when the operand is absent."""
    data: Optional[torch.Tensor]
    inner: int = 1
    period: int = 1

    def present(self) -> bool:
        return self.data is not None


def make_broadcast(operand: Optional[torch.Tensor], like: torch.Tensor, dtype: torch.dtype,
                   op: str, arg: str) -> Broadcast:
    """make_broadcast of ganfast_common.h: a broadcast whose non-1 dimensions form one contiguous
    run is kept as (data, inner, period); any other pattern is expanded and materialised."""
    if operand is None:
        return Broadcast(None)
    w = operand
    check_same_device(like, w, op, "input", arg)
    check_floating(w, op, arg)
    shape, wshape = list(like.shape), list(w.shape)
    nd, wd = len(shape), len(wshape)
    cannot = f"{op}: {arg} of shape {format_sizes(wshape)} cannot be broadcast to input of shape {format_sizes(shape)}"
    if wd > nd:
        raise ValueError(cannot)
    lo = hi = -1  # the run of input dims where the operand is not 1
    contiguous_run = True
    for d in range(nd):
        k = d - (nd - wd)
        ws = wshape[k] if k >= 0 else 1
        if not (ws == 1 or ws == shape[d]):
            raise ValueError(cannot)
        if ws != 1:
            if lo < 0:
                lo = d
            elif hi != d - 1:
                contiguous_run = False
            hi = d
    if lo >= 0 and contiguous_run:
        # A size-1 gap inside the run only breaks it if the input is larger than 1 there.
        for d in range(lo, hi + 1):
            k = d - (nd - wd)
            ws = wshape[k] if k >= 0 else 1
            if ws == 1 and shape[d] != 1:
                contiguous_run = False
                break
    if not contiguous_run:
        return Broadcast(w.expand(shape).to(dtype).contiguous(), 1, like.numel())
    data = w.to(dtype).contiguous()
    if lo < 0:
        return Broadcast(data, 1, 1)  # a single value
    inner = 1
    for d in range(hi + 1, nd):
        inner *= shape[d]
    period = 1
    for d in range(lo, hi + 1):
        period *= shape[d]
    return Broadcast(data, inner, period)


def is_expanded_scalar(t: torch.Tensor) -> bool:
    """A gradient that arrives as an expanded scalar (every stride 0)."""
    return all(s == 0 for s in t.stride())


class LossOperands(NamedTuple):
    input: torch.Tensor   # contiguous
    target: torch.Tensor  # contiguous, input's dtype
    weight: Broadcast
    pos_weight: Broadcast
    reduction: str


def prepare_loss_operands(op: str, input: torch.Tensor, target: torch.Tensor,
                          weight: Optional[torch.Tensor], pos_weight: Optional[torch.Tensor],
                          reduction: str) -> LossOperands:
    check_floating(input, op, "input")
    check_floating(target, op, "target")
    check_same_device(input, target, op, "input", "target")
    check_same_shape(input, target, op, "input", "target")
    red = parse_reduction(reduction)
    dtype = input.dtype
    return LossOperands(
        input=input.contiguous(),
        target=target.to(dtype).contiguous(),
        weight=make_broadcast(weight, input, dtype, op, "weight"),
        pos_weight=make_broadcast(pos_weight, input, dtype, op, "pos_weight"),
        reduction=red,
    )


def prepare_loss_grad(op: str, grad: torch.Tensor, input: torch.Tensor, reduction: str):
    """The upstream gradient of a loss: (tensor, is_scalar). A 0-dim tensor in input's dtype for
    "mean"/"sum" and for an expanded-scalar "none" gradient, else input's shape, contiguous."""
    check_same_device(input, grad, op, "input", "grad_output")
    check_floating(grad, op, "grad_output")
    if reduction == "none":
        check_same_shape(input, grad, op, "input", "grad_output")
        if is_expanded_scalar(grad) and grad.numel() > 0:
            return grad.as_strided((), ()).to(input.dtype), True
        return grad.to(input.dtype).contiguous(), False
    if grad.numel() != 1:
        raise ValueError(f"{op}: grad_output must hold one value for reduction '{reduction}'; "
                         f"got shape {format_sizes(grad.shape)}")
    return grad.reshape(()).to(input.dtype), True


def check_gan_logits(op: str, real: torch.Tensor, fake: torch.Tensor) -> None:
    """Real and fake logits of a GAN loss: floating, same dtype and device; shapes may differ."""
    check_floating(real, op, "real_logits")
    check_floating(fake, op, "fake_logits")
    check_same_device(real, fake, op, "real_logits", "fake_logits")
    if real.dtype != fake.dtype:
        raise TypeError(f"{op}: real_logits and fake_logits must have the same dtype; got "
                        f"{scalar_type_name(real.dtype)} and {scalar_type_name(fake.dtype)}")


def check_g_logits(op: str, fake: torch.Tensor) -> None:
    """Logits of the generator's loss."""
    check_floating(fake, op, "fake_logits")


def check_scalar_grad(op: str, grad: torch.Tensor, like: torch.Tensor) -> None:
    check_same_device(like, grad, op, "logits", "grad_output")
    check_floating(grad, op, "grad_output")
    if grad.numel() != 1:
        raise ValueError(f"{op}: grad_output must hold one value; got shape {format_sizes(grad.shape)}")


# =================================================================================================
# Penalty and bias_act families (issue 3): the twins of ganfast_common.h's penalty and bias_act
# sections, in the same order with the same messages. Enumerations are returned as their names.
# =================================================================================================

PENALTY_KINDS = ("wgan-gp", "one-sided", "r1", "r2")
ACTS = ("linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish")
# gan_math.h: act_is_piecewise_linear, kMaxActOrder
PIECEWISE_LINEAR_ACTS = ("linear", "relu", "lrelu")
MAX_ACT_ORDER = 3


# ---- penalty family ------------------------------------------------------------------------------

def parse_penalty_kind(name: str) -> str:
    """The kind's name ("r1" and "r2" are the same function of the gradient)."""
    if name in PENALTY_KINDS:
        return name
    raise ValueError(f"ganfast: kind must be one of {_choices(PENALTY_KINDS)}; got '{name}'")


def check_penalty_grad(op: str, grad: torch.Tensor) -> None:
    """The gradient a penalty is taken of: floating, with a batch dimension."""
    check_floating(grad, op, "grad")
    if grad.dim() < 1:
        raise ValueError(f"{op}: grad must have a batch dimension (shape (B, ...)); got a 0-dim tensor")


def penalty_compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of penalty_from_grad's norms: float64 for float64 grads, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_penalty_norms(op: str, grad: torch.Tensor, norms: torch.Tensor) -> None:
    """The per-sample norms penalty_from_grad returned: (B,) in grad's compute dtype."""
    check_same_device(grad, norms, op, "grad", "norms")
    compute = penalty_compute_dtype(grad.dtype)
    if not (norms.dim() == 1 and norms.size(0) == grad.size(0)):
        raise ValueError(f"{op}: norms must have shape (B,) = ({grad.size(0)},); got "
                         f"{format_sizes(norms.shape)}")
    if norms.dtype != compute:
        raise TypeError(f"{op}: norms must be {scalar_type_name(compute)}; got "
                        f"{scalar_type_name(norms.dtype)}")


def check_interpolate(op: str, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> None:
    """interpolate's operands: real and fake of one shape (B, ...), eps of shape (B,)."""
    check_floating(real, op, "real")
    check_floating(fake, op, "fake")
    check_floating(eps, op, "eps")
    check_same_device(real, fake, op, "real", "fake")
    check_same_device(real, eps, op, "real", "eps")
    if real.dim() < 1:
        raise ValueError(f"{op}: real must have a batch dimension (shape (B, ...))")
    if real.shape != fake.shape:
        raise ValueError(f"{op}: real and fake must have the same shape; got "
                         f"{format_sizes(real.shape)} and {format_sizes(fake.shape)}")
    if real.dtype != fake.dtype:
        raise TypeError(f"{op}: real and fake must have the same dtype; got "
                        f"{scalar_type_name(real.dtype)} and {scalar_type_name(fake.dtype)}")
    if not (eps.dim() == 1 and eps.size(0) == real.size(0)):
        raise ValueError(f"{op}: eps must have shape (B,) = ({real.size(0)},); got "
                         f"{format_sizes(eps.shape)}")


def check_interpolate_backward(op: str, grad_output: torch.Tensor, eps: torch.Tensor) -> None:
    """interpolate_backward's operands: grad_output of shape (B, ...), eps of shape (B,).
    (The twin of csrc/cpu/penalty.cpp's check_interpolate_backward, not in ganfast_common.h yet.)"""
    check_floating(grad_output, op, "grad_output")
    check_floating(eps, op, "eps")
    check_same_device(grad_output, eps, op, "grad_output", "eps")
    if grad_output.dim() < 1:
        raise ValueError(f"{op}: grad_output must have a batch dimension (shape (B, ...))")
    if not (eps.dim() == 1 and eps.size(0) == grad_output.size(0)):
        raise ValueError(f"{op}: eps must have shape (B,) = ({grad_output.size(0)},); got "
                         f"{format_sizes(eps.shape)}")


def check_penalty_grad_output(op: str, grad_output: torch.Tensor, grad: torch.Tensor) -> None:
    """The upstream gradient of the 0-dim penalty: one value on grad's device (read there).
    (The checks of csrc/cpu/penalty.cpp's prepare_penalty_grad_output, not in ganfast_common.h yet.)"""
    check_same_device(grad, grad_output, op, "grad", "grad_output")
    check_floating(grad_output, op, "grad_output")
    if grad_output.numel() != 1:
        raise ValueError(f"{op}: grad_output must hold one value; got shape {format_sizes(grad_output.shape)}")


def check_penalty_grad_grad(op: str, grad_grad: torch.Tensor, grad: torch.Tensor) -> None:
    """The upstream gradient of penalty_from_grad_backward: grad's shape (possibly expanded).
    (The twin of csrc/cpu/penalty.cpp's check_penalty_grad_grad, not in ganfast_common.h yet.)"""
    check_same_device(grad, grad_grad, op, "grad", "grad_grad")
    check_floating(grad_grad, op, "grad_grad")
    check_same_shape(grad, grad_grad, op, "grad", "grad_grad")


def is_non_overlapping_and_dense(t: torch.Tensor) -> bool:
    """c10's TensorImpl::is_non_overlapping_and_dense: the elements fill numel() consecutive
    memory positions, in some order of the dimensions (an empty tensor counts as dense, as c10's
    contiguity flags say)."""
    if t.numel() == 0:
        return True
    sizes, strides = t.shape, t.stride()
    nd = len(sizes)
    if nd == 1:
        return sizes[0] < 2 or strides[0] == 1
    # dimensions of size < 2 last, the others by increasing stride (c10's sort)
    perm = sorted(range(nd), key=lambda d: (bool(sizes[d] < 2), strides[d] if sizes[d] >= 2 else 0))  # bool: SymBools do not order
    require = 1
    for d in perm:
        if sizes[d] < 2:
            return True
        if strides[d] != require:
            return False
        require *= sizes[d]
    return True


def samples_are_blocks(t: torch.Tensor) -> bool:
    """A tensor whose samples are contiguous blocks of memory (batch outermost, dense): NCHW
    contiguous and channels_last both are. Kernels of per-sample ops run over such memory as is."""
    if t.dim() == 0 or not is_non_overlapping_and_dense(t):
        return False
    return t.size(0) <= 1 or t.stride(0) == t.numel() // t.size(0)


# ---- bias_act family -----------------------------------------------------------------------------

def parse_act(name: str) -> str:
    if name in ACTS:
        return name
    raise ValueError(f"ganfast: act must be one of {_choices(ACTS)}; got '{name}'")


def check_bias_act(op: str, x: torch.Tensor, b: Optional[torch.Tensor], dim: int) -> int:
    """bias_act's x and optional bias b of shape (x.size(dim),); returns dim made non-negative."""
    check_floating(x, op, "x")
    nd = x.dim()
    if b is not None:
        check_floating(b, op, "b")
        check_same_device(x, b, op, "x", "b")
        if not (nd >= 1 and -nd <= dim < nd):
            raise ValueError(f"{op}: dim must be in [{-nd}, {nd}) for x of shape "
                             f"{format_sizes(x.shape)}; got {dim}")
        d = dim + nd if dim < 0 else dim
        if not (b.dim() == 1 and b.size(0) == x.size(d)):
            raise ValueError(f"{op}: b must have shape ({x.size(d)},) = (x.size({dim}),); got "
                             f"{format_sizes(b.shape)}")
        return d
    return dim + nd if dim < 0 and nd > 0 else dim


def act_is_piecewise_linear(act: str) -> bool:
    return act in PIECEWISE_LINEAR_ACTS


def check_act_order(op: str, act: str, order: int) -> None:
    """bias_act_backward's order: >= 1; at most MAX_ACT_ORDER unless act is piecewise linear."""
    if order < 1:
        raise ValueError(f"{op}: order must be >= 1; got {order}")
    if not (act_is_piecewise_linear(act) or order <= MAX_ACT_ORDER):
        raise RuntimeError(f"{op}: derivatives of order {order} of act '{act}' are not implemented "
                           f"(up to {MAX_ACT_ORDER}; linear, relu and lrelu have every order)")


def act_derivatives_from_y(act: str, alpha: float) -> bool:
    """Whether f(x) alone gives every derivative (so the backward may keep y instead of x)."""
    if act in ("softplus", "swish"):
        return False
    if act in ("lrelu", "elu"):
        return alpha >= 0  # then f(x) > 0 exactly where x > 0
    return True


def check_bias_act_backward(op: str, grad_output: torch.Tensor, x: Optional[torch.Tensor],
                            b: Optional[torch.Tensor], y: torch.Tensor, dim: int, act: str, alpha: float,
                            order: int) -> int:
    """bias_act_backward's operands, in this order: act and order, then x (with b and dim, as
    bias_act checks them) or, x absent, whether y alone gives the derivative; y; grad_output.
    Returns dim made non-negative. act is the parsed name. (The twin of csrc/cpu/bias_act.cpp's
    check_bias_act_backward, not in ganfast_common.h yet.)"""
    check_act_order(op, act, order)
    d = dim + y.dim() if dim < 0 and y.dim() > 0 else dim
    if x is not None:
        d = check_bias_act(op, x, b, dim)
    elif not act_derivatives_from_y(act, alpha):
        # alpha as C++ streams a double (6 significant digits)
        raise ValueError(f"{op}: x is required for act '{act}' with alpha {alpha:g} (y does not "
                         "determine its derivatives)")
    check_floating(y, op, "y")
    if x is not None:
        check_same_device(x, y, op, "x", "y")
        check_same_shape(x, y, op, "x", "y")
        if x.dtype != y.dtype:
            raise TypeError(f"{op}: x and y must have the same dtype; got {scalar_type_name(x.dtype)} "
                            f"and {scalar_type_name(y.dtype)}")
    check_floating(grad_output, op, "grad_output")
    check_same_device(y, grad_output, op, "y", "grad_output")
    check_same_shape(y, grad_output, op, "y", "grad_output")
    return d


def check_bias_act_backward_with_bias(op: str, grad_output: torch.Tensor, x: Optional[torch.Tensor],
                                      b: Optional[torch.Tensor], y: torch.Tensor, dim: int, act: str,
                                      alpha: float) -> int:
    """bias_act_backward_with_bias's operands: b first, which it requires (the bias whose gradient
    it returns), then bias_act_backward's (order 1), then, x absent, b against y (x's shape) as
    bias_act checks it against x. Returns dim made non-negative. (The twin of
    csrc/ganfast_common.h's check_bias_act_backward_with_bias.)"""
    if b is None:
        raise ValueError(f"{op}: b is required (the bias whose gradient is returned); got None")
    d = check_bias_act_backward(op, grad_output, x, b, y, dim, act, alpha, 1)
    if x is None:
        check_floating(b, op, "b")
        check_same_device(y, b, op, "y", "b")
        nd = y.dim()
        if not (nd >= 1 and -nd <= dim < nd):
            raise ValueError(f"{op}: dim must be in [{-nd}, {nd}) for y of shape {format_sizes(y.shape)}; got {dim}")
        if not (b.dim() == 1 and b.size(0) == y.size(d)):
            raise ValueError(f"{op}: b must have shape ({y.size(d)},) = (y.size({dim}),); got "
                             f"{format_sizes(b.shape)}")
    return d


# ---- batch_norm_act family -----------------------------------------------------------------------

def batch_norm_compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of batch_norm_act's save_mean / save_invstd: float64 for float64 input, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def batch_norm_values_per_channel(input: torch.Tensor) -> int:
    """M = N * prod(sizes[2:]) of an (N, C, *) input."""
    m = 1
    for d, s in enumerate(input.shape):
        if d != 1:
            m *= int(s)
    return m


def _check_input_nc(op: str, input: torch.Tensor) -> None:
    check_floating(input, op, "input")
    if input.dim() < 2:
        raise ValueError(f"{op}: input must have shape (N, C, *) (at least 2 dims); got shape "
                         f"{format_sizes(input.shape)}")


def _check_channel_vector(op: str, input: torch.Tensor, t: Optional[torch.Tensor], arg: str) -> None:
    if t is None:
        return
    check_floating(t, op, arg)
    check_same_device(input, t, op, "input", arg)
    c = input.size(1)
    if not (t.dim() == 1 and t.size(0) == c):
        raise ValueError(f"{op}: {arg} must have shape (C,) = ({c},) (input.size(1)); got {format_sizes(t.shape)}")


def check_affine_operand(op: str, input: torch.Tensor, t: Optional[torch.Tensor], arg: str) -> bool:
    """batch_norm_act's weight or bias: None, (C,) or (N, C) (one per sample: conditional BatchNorm),
    floating, on input's device. Returns whether it is (N, C). (The twin of ganfast_common.h's.)"""
    if t is None:
        return False
    check_floating(t, op, arg)
    check_same_device(input, t, op, "input", arg)
    n, c = input.size(0), input.size(1)
    per_sample = t.dim() == 2 and t.size(0) == n and t.size(1) == c
    if not (per_sample or (t.dim() == 1 and t.size(0) == c)):
        raise ValueError(f"{op}: {arg} must have shape (C,) = ({c},) (input.size(1)) or (N, C) = ({n}, {c}) "
                         f"(one per sample); got {format_sizes(t.shape)}")
    return per_sample


def batch_norm_per_sample(weight: Optional[torch.Tensor], bias: Optional[torch.Tensor]) -> bool:
    """Whether batch_norm_act runs per sample: weight or bias (N, C) (after check_batch_norm_act)."""
    return any(t is not None and t.dim() == 2 for t in (weight, bias))


def check_batch_norm_act(op: str, input: torch.Tensor, weight: Optional[torch.Tensor],
                         bias: Optional[torch.Tensor], running_mean: Optional[torch.Tensor],
                         running_var: Optional[torch.Tensor], training: bool, eps: float, *,
                         synced: bool = False) -> int:
    """batch_norm_act's operands, in this order: input; weight, bias ((C,) or (N, C) each), running_mean,
    running_var;
    the running statistics given together and of one dtype; more than one value per channel and
    eps > 0 when training, the running statistics when not. Returns M, the values per channel. (The twin of
    csrc/ganfast_common.h's check_batch_norm_act.) synced: the statistics are over a process group's
    global batch, whose count the caller checks after the all-reduce (a rank may hold one value or none)."""
    _check_input_nc(op, input)
    check_affine_operand(op, input, weight, "weight")
    check_affine_operand(op, input, bias, "bias")
    for t, arg in ((running_mean, "running_mean"), (running_var, "running_var")):
        _check_channel_vector(op, input, t, arg)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: running_mean and running_var must be given together (both or neither)")
    if running_mean is not None and running_mean.dtype != running_var.dtype:
        raise TypeError(f"{op}: running_mean and running_var must have the same dtype; got "
                        f"{scalar_type_name(running_mean.dtype)} and {scalar_type_name(running_var.dtype)}")
    m = batch_norm_values_per_channel(input)
    if training:
        if m == 1 and not synced:
            raise ValueError(f"{op}: expected more than 1 value per channel when training; got input of shape "
                             f"{format_sizes(input.shape)}")
        if not eps > 0:  # %g prints the value as C++'s stream does
            raise ValueError(f"{op}: eps must be positive when training; got {'%g' % eps}")
    elif running_mean is None:
        raise ValueError(f"{op}: running_mean and running_var are required when training is False "
                         "(eval normalises with the running statistics)")
    return m


def check_batch_norm_act_backward(op: str, grad_output: torch.Tensor, input: torch.Tensor,
                                  weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                                  save_mean: torch.Tensor, save_invstd: torch.Tensor) -> int:
    """batch_norm_act_backward's operands: input, weight, bias as batch_norm_act checks them;
    grad_output floating of input's shape on its device; save_mean and save_invstd of shape (C,) in
    the compute dtype. Returns M. (The twin of csrc/ganfast_common.h's.)"""
    _check_input_nc(op, input)
    check_affine_operand(op, input, weight, "weight")
    check_affine_operand(op, input, bias, "bias")
    check_floating(grad_output, op, "grad_output")
    check_same_device(input, grad_output, op, "input", "grad_output")
    check_same_shape(input, grad_output, op, "input", "grad_output")
    compute = batch_norm_compute_dtype(input.dtype)
    for t, arg in ((save_mean, "save_mean"), (save_invstd, "save_invstd")):
        check_same_device(input, t, op, "input", arg)
        if not (t.dim() == 1 and t.size(0) == input.size(1)):
            raise ValueError(f"{op}: {arg} must have shape (C,) = ({input.size(1)},) (input.size(1)); got "
                             f"{format_sizes(t.shape)}")
        if t.dtype != compute:
            raise TypeError(f"{op}: {arg} must be {scalar_type_name(compute)} (the compute dtype of "
                            f"{scalar_type_name(input.dtype)} input); got {scalar_type_name(t.dtype)}")
    return batch_norm_values_per_channel(input)


# ---- instance_norm_act family --------------------------------------------------------------------
# Instance norm over x (N, C, *) is batch norm over the per-(n, c) axis: the view (1, N * C, S) of an
# NCHW-contiguous x, channel k = n * C + c, affine parameter k % C. The statistics are per (n, c).

def instance_norm_spatial_size(input: torch.Tensor) -> int:
    """S = prod(sizes[2:]) of an (N, C, *) input: the values of each (n, c) instance."""
    s = 1
    for d in input.shape[2:]:
        s *= int(d)
    return s


def _check_input_ncs(op: str, input: torch.Tensor) -> None:
    check_floating(input, op, "input")
    if input.dim() < 3:
        raise ValueError(f"{op}: input must have shape (N, C, *) with at least one spatial dim (at least 3 dims); "
                         f"got shape {format_sizes(input.shape)}")


def check_instance_norm_act(op: str, input: torch.Tensor, weight: Optional[torch.Tensor],
                            bias: Optional[torch.Tensor], eps: float) -> int:
    """instance_norm_act's operands, in this order: input ((N, C, *), at least 3 dims, floating);
    weight, bias (C,) as batch_norm_act's; more than one spatial element (torch's instance_norm
    refuses one too; none is an empty result, as torch's); eps > 0. Returns S, the values per
    instance. (The twin of csrc/ganfast_common.h's check_instance_norm_act.)"""
    _check_input_ncs(op, input)
    _check_channel_vector(op, input, weight, "weight")
    _check_channel_vector(op, input, bias, "bias")
    s = instance_norm_spatial_size(input)
    if s == 1:
        raise ValueError(f"{op}: expected more than 1 spatial element per (sample, channel); got input of shape "
                         f"{format_sizes(input.shape)}")
    if not eps > 0:
        raise ValueError(f"{op}: eps must be positive; got {'%g' % eps}")
    return s


def check_instance_norm_act_backward(op: str, grad_output: torch.Tensor, input: torch.Tensor,
                                     weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                                     save_mean: torch.Tensor, save_invstd: torch.Tensor) -> int:
    """instance_norm_act_backward's operands: input, weight, bias as instance_norm_act checks them;
    grad_output floating of input's shape on its device; save_mean and save_invstd of shape (N * C,)
    in the compute dtype. Returns S. (The twin of csrc/ganfast_common.h's.)"""
    _check_input_ncs(op, input)
    _check_channel_vector(op, input, weight, "weight")
    _check_channel_vector(op, input, bias, "bias")
    check_floating(grad_output, op, "grad_output")
    check_same_device(input, grad_output, op, "input", "grad_output")
    check_same_shape(input, grad_output, op, "input", "grad_output")
    compute = batch_norm_compute_dtype(input.dtype)
    nc = input.size(0) * input.size(1)
    for t, arg in ((save_mean, "save_mean"), (save_invstd, "save_invstd")):
        check_same_device(input, t, op, "input", arg)
        if not (t.dim() == 1 and t.size(0) == nc):
            raise ValueError(f"{op}: {arg} must have shape (N * C,) = ({nc},) (input.size(0) * input.size(1)); got "
                             f"{format_sizes(t.shape)}")
        if t.dtype != compute:
            raise TypeError(f"{op}: {arg} must be {scalar_type_name(compute)} (the compute dtype of "
                            f"{scalar_type_name(input.dtype)} input); got {scalar_type_name(t.dtype)}")
    return instance_norm_spatial_size(input)


# ---- info_loss family ---------------------------------------------------------------------------


class InfoOperands(NamedTuple):
    """info_loss's operands, checked (ganfast_common.h's InfoOperands): each present tensor
    contiguous, None where absent; B rows, K classes (0 without the categorical part), J continuous
    codes (0 without); `like` the first floating operand (the result's dtype and device)."""
    cat_logits: Optional[torch.Tensor]
    cat_codes: Optional[torch.Tensor]
    cont_mean: Optional[torch.Tensor]
    cont_codes: Optional[torch.Tensor]
    cont_logstd: Optional[torch.Tensor]
    B: int
    K: int
    J: int
    like: torch.Tensor

    @property
    def has_cat(self) -> bool:
        return self.cat_logits is not None

    @property
    def has_cont(self) -> bool:
        return self.cont_mean is not None

    @property
    def has_logstd(self) -> bool:
        return self.cont_logstd is not None


def _check_info_weight(op: str, arg: str, w: float) -> None:
    w = float(w)
    if not (math.isfinite(w) and w >= 0):
        raise ValueError(f"{op}: {arg} must be a finite number >= 0; got {w:g}")  # %g: as C++ prints a double


def check_info_loss(op: str, cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd,
                    cat_weight: float, cont_weight: float) -> InfoOperands:
    """check_info_loss of ganfast_common.h: the same checks in the same order, the same messages.
    The range of the class indices (data) is each backend's."""
    _check_info_weight(op, "cat_weight", cat_weight)
    _check_info_weight(op, "cont_weight", cont_weight)
    has_cat, has_cont, has_logstd = cat_logits is not None, cont_mean is not None, cont_logstd is not None
    if has_cat != (cat_codes is not None):
        raise ValueError(f"{op}: cat_logits and cat_codes must be given together (both or neither)")
    if has_cont != (cont_codes is not None):
        raise ValueError(f"{op}: cont_mean and cont_codes must be given together (both or neither)")
    if has_logstd and not has_cont:
        raise ValueError(f"{op}: cont_logstd needs cont_mean and cont_codes")
    if not (has_cat or has_cont):
        raise ValueError(f"{op}: nothing to compute: give cat_logits with cat_codes, cont_mean with cont_codes, "
                         "or both")
    B = K = J = 0
    like = like_name = None
    if has_cat:
        x, c = cat_logits, cat_codes
        check_floating(x, op, "cat_logits")
        if x.dim() != 2:
            raise ValueError(f"{op}: cat_logits must have shape (B, K); got shape {format_sizes(x.shape)}")
        if x.shape[1] < 2:
            raise ValueError(f"{op}: cat_logits must have K >= 2 classes (shape (B, K)); got shape "
                             f"{format_sizes(x.shape)}")
        if c.dtype != torch.int64:
            raise TypeError(f"{op}: cat_codes must be an int64 (Long) tensor of class indices; got "
                            f"{scalar_type_name(c.dtype)}")
        check_same_device(x, c, op, "cat_logits", "cat_codes")
        if c.dim() != 1 or c.shape[0] != x.shape[0]:
            raise ValueError(f"{op}: cat_codes must have shape (B,) = ({x.shape[0]},) (cat_logits.size(0)); got "
                             f"shape {format_sizes(c.shape)}")
        B, K = x.shape
        like, like_name = x, "cat_logits"
    if has_cont:
        mu = cont_mean
        check_floating(mu, op, "cont_mean")
        check_floating(cont_codes, op, "cont_codes")
        if has_logstd:
            check_floating(cont_logstd, op, "cont_logstd")
        if mu.dim() != 2:
            raise ValueError(f"{op}: cont_mean must have shape (B, J); got shape {format_sizes(mu.shape)}")
        check_same_device(mu, cont_codes, op, "cont_mean", "cont_codes")
        check_same_shape(mu, cont_codes, op, "cont_mean", "cont_codes")
        if has_logstd:
            check_same_device(mu, cont_logstd, op, "cont_mean", "cont_logstd")
            check_same_shape(mu, cont_logstd, op, "cont_mean", "cont_logstd")
        if has_cat:
            check_same_device(like, mu, op, "cat_logits", "cont_mean")
            if mu.shape[0] != B:
                raise ValueError(f"{op}: cont_mean must have B = {B} rows (cat_logits.size(0)); got shape "
                                 f"{format_sizes(mu.shape)}")
        else:
            B = mu.shape[0]
            like, like_name = mu, "cont_mean"
        J = mu.shape[1]
        dtype = like.dtype
        for t, arg in ((mu, "cont_mean"), (cont_codes, "cont_codes")) + (((cont_logstd, "cont_logstd"),)
                                                                        if has_logstd else ()):
            if t.dtype != dtype:
                raise TypeError(f"{op}: {arg} must have the same dtype as {like_name} ({scalar_type_name(dtype)}); "
                                f"got {scalar_type_name(t.dtype)}")
    cont = lambda t: None if t is None else t.contiguous()  # noqa: E731
    return InfoOperands(cont(cat_logits), cont(cat_codes), cont(cont_mean), cont(cont_codes), cont(cont_logstd),
                        int(B), int(K), int(J), like)


def check_info_grad_output(op: str, grad_output: torch.Tensor, o: InfoOperands) -> None:
    check_floating(grad_output, op, "grad_output")
    check_same_device(o.like, grad_output, op, "cat_logits" if o.has_cat else "cont_mean", "grad_output")
    if grad_output.numel() != 1:
        raise ValueError(f"{op}: grad_output must hold one value; got shape {format_sizes(grad_output.shape)}")


def info_codes_error(op: str, codes: torch.Tensor, K: int) -> Optional[IndexError]:
    """The error of class indices outside [0, K) (the first one, by index), or None. Reads the
    codes: call it on CPU tensors only (on CUDA it would synchronise)."""
    bad = ((codes < 0) | (codes >= K)).nonzero()
    if bad.numel() == 0:
        return None
    b = int(bad[0, 0])
    return IndexError(f"{op}: cat_codes must be class indices in [0, K) = [0, {K}); got {int(codes[b])} at index {b}")


# ---- cycle_loss family ---------------------------------------------------------------------------

def _float_text(x: float) -> str:
    """A double as C++'s ostream prints it (6 significant digits: -1, 0.5, inf, nan)."""
    return f"{x:g}"


def check_cycle_loss(op: str, reconstructed: Sequence[torch.Tensor], original: Sequence[torch.Tensor],
                     weight: float) -> None:
    """cycle_loss's operands (ganfast_common.h's check_cycle_loss): the lists non-empty and of one
    length; per pair i: both floating, on reconstructed[0]'s device, of its dtype, original[i] of
    reconstructed[i]'s shape (no broadcasting); weight finite and >= 0."""
    if len(reconstructed) == 0:
        raise ValueError(f"{op}: reconstructed must hold at least one tensor; got an empty list")
    if len(reconstructed) != len(original):
        raise ValueError(f"{op}: reconstructed and original must have the same length; got "
                         f"{len(reconstructed)} and {len(original)}")
    first = reconstructed[0]
    for i, (r, o) in enumerate(zip(reconstructed, original)):
        r_name, o_name = f"reconstructed[{i}]", f"original[{i}]"
        check_floating(r, op, r_name)
        check_floating(o, op, o_name)
        if i > 0:
            check_same_device(first, r, op, "reconstructed[0]", r_name)
        check_same_device(first, o, op, "reconstructed[0]", o_name)
        for t, name in ((r, r_name), (o, o_name)):
            if t is not first and t.dtype != first.dtype:
                raise TypeError(f"{op}: {name} must have the dtype of reconstructed[0] "
                                f"({scalar_type_name(first.dtype)}); got {scalar_type_name(t.dtype)}")
        check_same_shape(r, o, op, r_name, o_name)
    w = float(weight)
    if not (math.isfinite(w) and w >= 0):
        raise ValueError(f"{op}: weight must be finite and non-negative; got {_float_text(w)}")


def check_cycle_loss_grad_output(op: str, grad_output: torch.Tensor, first: torch.Tensor) -> None:
    """cycle_loss_backward's upstream gradient: one value, floating, on the inputs' device."""
    check_same_device(first, grad_output, op, "reconstructed[0]", "grad_output")
    check_floating(grad_output, op, "grad_output")
    if grad_output.numel() != 1:
        raise ValueError(f"{op}: grad_output must hold one value; got shape {format_sizes(grad_output.shape)}")


def same_dense_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """ganfast_common.h's same_dense_layout: one shape, one stride wherever a size exceeds 1."""
    if a.shape != b.shape:
        return False
    return all(a.size(d) <= 1 or a.stride(d) == b.stride(d) for d in range(a.dim()))


def make_cycle_pair(reconstructed: torch.Tensor, original: torch.Tensor):
    """ganfast_common.h's make_cycle_pair: (r, o), both dense and in one layout, so element k of
    the walk is the k-th element of memory in both. A dense reconstructed (contiguous,
    channels_last) is used as it is, any other made contiguous; an original in another layout is
    copied into reconstructed's."""
    r = reconstructed if is_non_overlapping_and_dense(reconstructed) else reconstructed.contiguous()
    if same_dense_layout(original, r) and is_non_overlapping_and_dense(original):
        o = original
    else:
        o = torch.empty_like(r)
        o.copy_(original)
    return r, o


# ---- orthogonal_regularization family ------------------------------------------------------------

def check_orthogonal_regularization(op: str, weights: Sequence[torch.Tensor], beta: float) -> None:
    """orthogonal_regularization's operands (ganfast_common.h's check_orthogonal_regularization): the
    list non-empty; per weight i: floating, of weights[0]'s dtype and device, at least 2 dims; beta
    finite and >= 0."""
    if len(weights) == 0:
        raise ValueError(f"{op}: weights must hold at least one tensor; got an empty list")
    first = weights[0]
    for i, w in enumerate(weights):
        name = f"weights[{i}]"
        check_floating(w, op, name)
        if i > 0:
            check_same_device(first, w, op, "weights[0]", name)
            if w.dtype != first.dtype:
                raise TypeError(f"{op}: {name} must have the dtype of weights[0] ({scalar_type_name(first.dtype)}); "
                                f"got {scalar_type_name(w.dtype)}")
        if w.dim() < 2:
            raise ValueError(f"{op}: {name} must have at least 2 dimensions (biases and gains are skipped by "
                             f"ganfast.penalty.orthogonal_regularization); got shape {format_sizes(w.shape)}")
    b = float(beta)
    if not (math.isfinite(b) and b >= 0):
        raise ValueError(f"{op}: beta must be finite and non-negative; got {_float_text(b)}")


class OrthoBlock(NamedTuple):
    """One weight's place in the cache (ganfast_common.h's OrthoBlock): W is m x k; a tall W
    (m >= 2k) stores W^T W (k*k) then its squared row norms (m), any other W W^T (m*m)."""
    m: int
    k: int
    offset: int
    tall: bool


def ortho_is_tall(m: int, k: int) -> bool:
    return m >= 2 * k


def ortho_acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def ortho_layout(weights: Sequence[torch.Tensor]):
    """ganfast_common.h's ortho_layout: (blocks, total cache size)."""
    blocks, offset = [], 0
    for w in weights:
        m = int(w.shape[0])
        k = math.prod(int(s) for s in w.shape[1:])
        tall = ortho_is_tall(m, k)
        blocks.append(OrthoBlock(m, k, offset, tall))
        offset += k * k + m if tall else m * m
    return blocks, offset


def ortho_segments(blocks):
    """ganfast_common.h's ortho_segments: (offset, n, period, sign) per non-empty segment."""
    out = []
    for b in blocks:
        if b.tall:
            if b.k > 0:
                out.append((b.offset, b.k * b.k, 0, 1))
            if b.m > 0:
                out.append((b.offset + b.k * b.k, b.m, 0, -1))
        elif b.m > 0:
            out.append((b.offset, b.m * b.m, b.m + 1, 1))
    return out


def check_orthogonal_regularization_backward(op: str, grad_output: torch.Tensor, weights: Sequence[torch.Tensor],
                                             cache: torch.Tensor, total: int) -> None:
    """orthogonal_regularization_backward's grad_output (one value, floating, on the weights' device)
    and cache (1-D, of the layout's size, float32 / float64, on the weights' device)."""
    check_same_device(weights[0], grad_output, op, "weights[0]", "grad_output")
    check_floating(grad_output, op, "grad_output")
    if grad_output.numel() != 1:
        raise ValueError(f"{op}: grad_output must hold one value; got shape {format_sizes(grad_output.shape)}")
    check_same_device(weights[0], cache, op, "weights[0]", "cache")
    acc = ortho_acc_dtype(weights[0].dtype)
    if cache.dtype != acc:
        raise TypeError(f"{op}: cache must be {scalar_type_name(acc)} for weights of dtype "
                        f"{scalar_type_name(weights[0].dtype)}; got {scalar_type_name(cache.dtype)}")
    if cache.dim() != 1 or cache.shape[0] != total:
        raise ValueError(f"{op}: cache must be the 1-D cache orthogonal_regularization returned for these weights "
                         f"({total} values); got shape {format_sizes(cache.shape)}")


# ---- spectral_norm family ------------------------------------------------------------------------

class SpectralNormShape(NamedTuple):
    """weight viewed as (A, h, B): the matrix W (h, w = A * B) of torch's spectral norm, dim first."""
    A: int
    h: int
    B: int
    w: int
    dim: int


def spectral_norm_compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """sigma, u and v (the cache) and the accumulation: float32, float64 for float64 weights."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def spectral_norm_shape(op: str, weight: torch.Tensor, dim: int) -> SpectralNormShape:
    check_floating(weight, op, "weight")
    nd = weight.dim()
    if nd < 2:
        raise ValueError(f"{op}: weight must have at least 2 dimensions (torch normalizes a 1-D weight with "
                         f"F.normalize); got shape {format_sizes(weight.shape)}")
    if not -nd <= dim < nd:
        raise IndexError(f"{op}: Dimension out of range (expected to be in range of [{-nd}, {nd - 1}] but got {dim})")
    if weight.numel() == 0:
        raise ValueError(f"{op}: weight must have at least one element; got shape {format_sizes(weight.shape)}")
    dim = dim + nd if dim < 0 else dim
    A = math.prod(weight.shape[:dim])
    B = math.prod(weight.shape[dim + 1:])
    return SpectralNormShape(A, weight.shape[dim], B, A * B, dim)


def _check_spectral_norm_vector(op, weight, t, arg, size):
    if t.dtype != weight.dtype:
        raise TypeError(f"{op}: {arg} must have weight's dtype ({scalar_type_name(weight.dtype)}); "
                        f"got {scalar_type_name(t.dtype)}")
    check_same_device(weight, t, op, "weight", arg)
    if t.dim() != 1 or t.shape[0] != size:
        raise ValueError(f"{op}: {arg} must have shape ({size},); got {format_sizes(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{op}: {arg} must be contiguous (it is updated in place)")


def check_spectral_norm(op: str, weight, u, v, dim: int, n_power_iterations: int, eps: float) -> SpectralNormShape:
    s = spectral_norm_shape(op, weight, dim)
    _check_spectral_norm_vector(op, weight, u, "u", s.h)
    _check_spectral_norm_vector(op, weight, v, "v", s.w)
    if n_power_iterations < 1:
        raise ValueError(f"{op}: Expected n_power_iterations to be positive, but got "
                         f"n_power_iterations={n_power_iterations}")
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"{op}: eps must be positive and finite; got {_float_text(eps)}")
    return s


def check_spectral_norm_backward(op: str, grad_output, weight, cache, dim: int) -> SpectralNormShape:
    s = spectral_norm_shape(op, weight, dim)
    check_floating(grad_output, op, "grad_output")
    check_same_device(weight, grad_output, op, "weight", "grad_output")
    check_same_shape(weight, grad_output, op, "weight", "grad_output")
    if grad_output.dtype != weight.dtype:
        raise TypeError(f"{op}: grad_output must have weight's dtype ({scalar_type_name(weight.dtype)}); "
                        f"got {scalar_type_name(grad_output.dtype)}")
    compute = spectral_norm_compute_dtype(weight.dtype)
    if cache.dtype != compute:
        raise TypeError(f"{op}: cache must be {scalar_type_name(compute)} for {scalar_type_name(weight.dtype)} "
                        f"weight; got {scalar_type_name(cache.dtype)}")
    check_same_device(weight, cache, op, "weight", "cache")
    if cache.dim() != 1 or cache.shape[0] != 1 + s.h + s.w:
        raise ValueError(f"{op}: cache must have shape ({1 + s.h + s.w},) = (1 + h + w,), as spectral_norm returns "
                         f"it; got {format_sizes(cache.shape)}")
    return s
