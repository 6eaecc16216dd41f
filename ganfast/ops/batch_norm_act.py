"""The batch_norm_act op family: BatchNorm (batch statistics and running-statistics update in
training, running statistics in eval) + affine + activation in one fused forward and one fused
backward; first derivatives only (double backward is a clear error).

Same layout as ganfast/ops/bias_act.py: fake kernels of the C++ ops (autograd: csrc/autograd/
batch_norm_act.cpp), the ganfast_triton:: custom ops around ganfast/triton/batch_norm_act.py with
the same autograd, and the entry point.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _args, backend
from ..reference import batch_norm_act as reference

_C = torch.ops.ganfast

# Defaults where the caller passes alpha=None (as bias_act's).
DEFAULT_ALPHA = {"lrelu": 0.2, "elu": 1.0}


def _channels_fastest(t: Tensor) -> bool:
    """Whether element (n, c, s) of t sits at (n * S + s) * C + c: channels_last and the like."""
    expected = 1
    for d in [1] + list(range(t.dim() - 1, 1, -1)) + [0]:
        if t.size(d) != 1 and t.stride(d) != expected:
            return False
        expected *= t.size(d)
    return True


def _output_like(x: Tensor, per_sample: bool = False) -> Tensor:
    """The layout the kernels give the output (and grad_input): x's own where x is NCHW contiguous or
    channels-fastest (channels_last), else contiguous; always contiguous with a per-sample weight or
    bias (those kernels walk x by instance (n, c), which needs NCHW)."""
    if not per_sample and (x.is_contiguous() or _channels_fastest(x)):
        return torch.empty_like(x)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _fake_batch_norm_act(input, weight, bias, running_mean, running_var, training, momentum, eps, act, alpha):
    _args.check_batch_norm_act("ganfast::batch_norm_act", input, weight, bias, running_mean, running_var, training,
                               eps)
    _args.parse_act(act)
    compute = _args.batch_norm_compute_dtype(input.dtype)
    c = input.size(1)
    return (_output_like(input, _args.batch_norm_per_sample(weight, bias)), input.new_empty((c,), dtype=compute),
            input.new_empty((c,), dtype=compute))


def _fake_batch_norm_act_backward(grad_output, input, weight, bias, save_mean, save_invstd, training, act, alpha):
    _args.check_batch_norm_act_backward("ganfast::batch_norm_act_backward", grad_output, input, weight, bias,
                                        save_mean, save_invstd)
    _args.parse_act(act)
    dtype = weight.dtype if weight is not None else input.dtype
    c = input.size(1)
    # each parameter gradient has its operand's shape: (N, C) per sample, else (C,) (also when absent)
    shape = lambda t: tuple(t.shape) if t is not None and t.dim() == 2 else (c,)  # noqa: E731
    return (_output_like(input, _args.batch_norm_per_sample(weight, bias)), input.new_empty(shape(weight), dtype=dtype),
            input.new_empty(shape(bias), dtype=dtype))


torch.library.register_fake("ganfast::batch_norm_act", _fake_batch_norm_act)
torch.library.register_fake("ganfast::batch_norm_act_backward", _fake_batch_norm_act_backward)


# ---- the Triton ops ------------------------------------------------------------------------------


def _triton():
    from ..triton import batch_norm_act as triton_batch_norm_act

    return triton_batch_norm_act


@torch.library.custom_op("ganfast_triton::batch_norm_act", mutates_args=("running_mean", "running_var"))
def _t_batch_norm_act(input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                      running_mean: Optional[Tensor], running_var: Optional[Tensor], training: bool,
                      momentum: float, eps: float, act: str, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    return _triton().batch_norm_act(input, weight, bias, running_mean, running_var, training, momentum, eps, act,
                                    alpha)


@torch.library.custom_op("ganfast_triton::batch_norm_act_backward", mutates_args=())
def _t_batch_norm_act_backward(grad_output: Tensor, input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                               save_mean: Tensor, save_invstd: Tensor, training: bool, act: str,
                               alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    return _triton().batch_norm_act_backward(grad_output, input, weight, bias, save_mean, save_invstd, training,
                                             act, alpha)


_t_batch_norm_act.register_fake(_fake_batch_norm_act)
_t_batch_norm_act_backward.register_fake(_fake_batch_norm_act_backward)


# Autograd of the Triton ops: the formulas of csrc/autograd/batch_norm_act.cpp. torch.library
# refuses an autograd formula on a custom op that mutates its arguments (the running statistics),
# so the forward op runs inside an autograd.Function (grad mode off there, so the op itself never
# records anything); the backward op is functional and gets a formula that raises.

class _TritonBatchNormAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, training, momentum, eps, act, alpha):
        out, save_mean, save_invstd = _t_batch_norm_act(input, weight, bias, running_mean, running_var, training,
                                                        momentum, eps, act, alpha)
        ctx.save_for_backward(input, weight, bias, save_mean, save_invstd)
        ctx.params = (training, act, alpha)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        input, weight, bias, save_mean, save_invstd = ctx.saved_tensors
        none = (None,) * 7
        if grad_out is None:
            return (None, None, None) + none
        dx, dw, db = _t_batch_norm_act_backward(grad_out, input, weight, bias, save_mean, save_invstd, *ctx.params)
        return (dx if ctx.needs_input_grad[0] else None, dw if weight is not None and ctx.needs_input_grad[1] else None,
                db if bias is not None and ctx.needs_input_grad[2] else None) + none


def _backward_batch_norm_act_backward(ctx, *grads):
    # The C++ op's autogradNotImplementedFallback says the same.
    raise RuntimeError("derivative for ganfast_triton::batch_norm_act_backward is not implemented: batch_norm_act "
                       "has first derivatives only (no double backward)")


_t_batch_norm_act_backward.register_autograd(_backward_batch_norm_act_backward)


# ---- entry point ---------------------------------------------------------------------------------

_cpp_batch_norm_act = _C.batch_norm_act.default


def batch_norm_act(x: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                   running_mean: Optional[Tensor] = None, running_var: Optional[Tensor] = None,
                   training: bool = True, momentum: float = 0.1, eps: float = 1e-5, act: str = "relu",
                   alpha: Optional[float] = None) -> Tensor:
    """act(F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)) fused.

    weight / bias: None, (C,), or (N, C) (one per sample: conditional BatchNorm, as BigGAN's class-
    conditional gains), independently: out = act(x_hat[n, c] * weight[n, c] + bias[n, c]); the
    gradients of (N, C) operands are (N, C) (summed over the spatial dims only). With a per-sample
    operand the output is NCHW contiguous whatever x's layout.

    x: (N, C, *), any float dtype, NCHW contiguous or channels_last (kept). training: batch
    statistics, and running_mean / running_var (if given) updated in place as BatchNorm does (the
    variance unbiased); eval (training=False): the running statistics, which are then required.
    act: 'linear', 'relu', 'lrelu', 'tanh', 'sigmoid', 'elu', 'selu', 'softplus', 'swish' (gain 1);
    alpha: lrelu's negative slope (default 0.2) or elu's alpha (default 1.0). Differentiable once
    w.r.t. x, weight and bias; double backward raises.
    """
    alpha = DEFAULT_ALPHA.get(act, 0.0) if alpha is None else float(alpha)
    momentum, eps = float(momentum), float(eps)
    impl = backend.resolve(x)
    if impl == backend.CPP:
        return _cpp_batch_norm_act(x, weight, bias, running_mean, running_var, training, momentum, eps, act, alpha)[0]
    if impl == backend.TRITON:
        return _TritonBatchNormAct.apply(x, weight, bias, running_mean, running_var, training, momentum, eps, act, alpha)
    return reference.batch_norm_act(x, weight, bias, running_mean, running_var, training, momentum, eps, act, alpha)
