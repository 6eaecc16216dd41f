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


# ---- synchronised BatchNorm: the statistics of a process group's global batch ---------------------
# As torch.nn.SyncBatchNorm, with no kernel of its own: the local per-channel count, sum and sum of
# squares (one var_mean pass) all-reduced once in float64, the global mean / biased variance handed to
# the fused op in eval mode (act((x - mean) * invstd * w + b)), so every backend's kernels normalise.
# Backward: the eval-mode fused backward gives dx_eval = dL/dx_hat * invstd (the statistics held
# constant); the two per-channel sums it lacks, A = sum(dx_eval) and B = sum(dx_eval * x_hat) over the
# local values, are all-reduced once, and
#     dx = dx_eval - (A + x_hat * B) / M_global
# (BatchNorm's backward, dx = invstd * (g - mean(g) - x_hat * mean(g * x_hat)) with g = dL/dx_hat,
# multiplied through by invstd). dweight / dbias are the eval backward's, local: DDP averages
# parameter gradients itself, as with torch.nn.SyncBatchNorm.

SYNC_OP = "ganfast.ops.batch_norm_act"
_NO_DOUBLE_BACKWARD = ("derivative of ganfast.ops.batch_norm_act's synchronised backward (process_group) is not "
                       "implemented: batch_norm_act has first derivatives only (no double backward)")


def check_process_group(process_group, op: str, none_means: str) -> None:
    """TypeError naming `process_group` unless it is None or a torch.distributed.ProcessGroup; the
    message says what None means where `op` takes it (`none_means`)."""
    if process_group is None:
        return
    if not (torch.distributed.is_available() and isinstance(process_group, torch.distributed.ProcessGroup)):
        raise TypeError(f"{op}: process_group must be None ({none_means}) or a torch.distributed.ProcessGroup; "
                        f"got {type(process_group).__name__}")


def sync_process_group(process_group, training: bool, op: str = SYNC_OP):
    """The group whose global batch gives the statistics, or None where no collective runs:
    process_group None, training False (eval normalises with the running statistics), or a group of
    one process (today's path exactly). TypeError naming `process_group` when it is neither None nor
    a torch.distributed.ProcessGroup."""
    check_process_group(process_group, op, "no synchronisation; torch.distributed.group.WORLD is the default group")
    if process_group is None:
        return None
    if not training or torch.distributed.get_world_size(process_group) <= 1:
        return None
    return process_group


def _reduce_dims(x: Tensor) -> list:
    return [0] + list(range(2, x.dim()))


def _channel_view(t: Tensor, x: Tensor) -> Tensor:
    return t.view((1, -1) + (1,) * (x.dim() - 2))


def _global_stats(x: Tensor, group, op: str = SYNC_OP):
    """(mean, biased var, count) per channel over the group's global batch, in float64 (count a 0-d
    tensor); one all-reduce of [count * mean, count * (var + mean^2), count]."""
    m, c = _args.batch_norm_values_per_channel(x), x.size(1)
    packed = x.new_zeros((2 * c + 1,), dtype=torch.float64)
    if m > 0:
        var, mean = torch.var_mean(x.to(_args.batch_norm_compute_dtype(x.dtype)), _reduce_dims(x), correction=0)
        mean, var = mean.to(torch.float64), var.to(torch.float64)
        packed[:c] = mean * m
        packed[c:2 * c] = (var + mean * mean) * m
        packed[2 * c] = m
    torch.distributed.all_reduce(packed, group=group)
    total = packed[2 * c]
    if m <= 1 and float(total) <= 1:  # read on the host only where this rank cannot tell (as torch does)
        raise ValueError(f"{op}: expected more than 1 value per channel when training; got {int(float(total))} "
                         f"over the process group (input of shape {_args.format_sizes(x.shape)} here)")
    mean = packed[:c] / total
    var = (packed[c:2 * c] / total - mean * mean).clamp_min(0)
    return mean, var, total


def _update_running(running_mean, running_var, mean, var, total, momentum: float) -> None:
    """BatchNorm's update with the global mean and the global unbiased variance."""
    if running_mean is None:
        return
    with torch.no_grad():
        unbiased = var * (total / (total - 1))
        running_mean.copy_(running_mean.to(torch.float64) * (1 - momentum) + mean * momentum)
        running_var.copy_(running_var.to(torch.float64) * (1 - momentum) + unbiased * momentum)


class _SyncBatchNormAct(torch.autograd.Function):
    """The synchronised path, autograd included (see above). The eval-mode fused op runs under
    enable_grad on detached inputs; its graph is kept for the backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, act, alpha, group, grad):
        mean64, var64, total = _global_stats(x, group)
        compute = _args.batch_norm_compute_dtype(x.dtype)
        mean, var = mean64.to(compute), var64.to(compute)
        # grad: whether the caller records a graph (no graph kept under no_grad, e.g. sampling in train mode)
        detached = [None if t is None else t.detach().requires_grad_(need and grad)
                    for t, need in zip((x, weight, bias), ctx.needs_input_grad[:3])]
        with torch.enable_grad():
            out = _dispatch(*detached, mean, var, False, 0.0, eps, act, alpha)
        _update_running(running_mean, running_var, mean64, var64, total, momentum)
        ctx.graph = (out, detached)
        ctx.group, ctx.total = group, total
        ctx.save_for_backward(x, mean, torch.rsqrt(var + eps))
        return out.detach()

    @staticmethod
    def backward(ctx, grad_out):
        out, detached = ctx.graph
        wanted = [t for t in detached if t is not None and t.requires_grad]
        grads = {}
        if grad_out is not None and wanted and out.requires_grad:
            with torch.no_grad():
                found = torch.autograd.grad(out, wanted, grad_out, retain_graph=True, allow_unused=True)
            grads = {id(t): g for t, g in zip(wanted, found)}
        dx, dw, db = (None if t is None else grads.get(id(t)) for t in detached)
        if dx is not None:
            x, mean, invstd = ctx.saved_tensors
            with torch.no_grad():
                dims, c = _reduce_dims(x), x.size(1)
                x_hat = (x.to(mean.dtype) - _channel_view(mean, x)) * _channel_view(invstd, x)
                dxe = dx.to(mean.dtype)
                sums = torch.cat([dxe.sum(dims), (dxe * x_hat).sum(dims)])
                torch.distributed.all_reduce(sums, group=ctx.group)
                a, b = _channel_view(sums[:c], x), _channel_view(sums[c:], x)
                dx = (dxe - (a + x_hat * b) / ctx.total.to(mean.dtype)).to(x.dtype)
        grads = (dx, dw, db)
        if torch.is_grad_enabled():  # create_graph: these gradients are not differentiable; say so when used
            err = torch._C._functions.DelayedError(_NO_DOUBLE_BACKWARD, 3)
            grads = err(*[None if g is None else g.detach().requires_grad_() for g in grads])
        return tuple(grads) + (None,) * 8


def _sync_batch_norm_act(x, weight, bias, running_mean, running_var, momentum, eps, act, alpha, group):
    _args.check_batch_norm_act(SYNC_OP, x, weight, bias, running_mean, running_var, True, eps, synced=True)
    _args.parse_act(act)
    return _SyncBatchNormAct.apply(x, weight, bias, running_mean, running_var, momentum, eps, act, alpha, group,
                                   torch.is_grad_enabled())


# ---- entry point ---------------------------------------------------------------------------------

_cpp_batch_norm_act = _C.batch_norm_act.default


def _dispatch(x, weight, bias, running_mean, running_var, training, momentum, eps, act, alpha):
    impl = backend.resolve(x)
    if impl == backend.CPP:
        return _cpp_batch_norm_act(x, weight, bias, running_mean, running_var, training, momentum, eps, act, alpha)[0]
    if impl == backend.TRITON:
        return _TritonBatchNormAct.apply(x, weight, bias, running_mean, running_var, training, momentum, eps, act, alpha)
    return reference.batch_norm_act(x, weight, bias, running_mean, running_var, training, momentum, eps, act, alpha)


def batch_norm_act(x: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                   running_mean: Optional[Tensor] = None, running_var: Optional[Tensor] = None,
                   training: bool = True, momentum: float = 0.1, eps: float = 1e-5, act: str = "relu",
                   alpha: Optional[float] = None, *, process_group=None) -> Tensor:
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

    process_group: None, or a torch.distributed.ProcessGroup (torch.distributed.group.WORLD for the
    default group) to synchronise over, as torch.nn.SyncBatchNorm: in training the statistics (and
    the running-statistics update, unbiased with the global count) are the group's global batch's,
    and the backward's two per-channel sums are all-reduced too (one all-reduce each way; every rank
    of the group must call). The gradients w.r.t. weight / bias stay local (DDP averages them). Eval
    or a group of one process: no collective, exactly the unsynchronised op.
    """
    alpha = DEFAULT_ALPHA.get(act, 0.0) if alpha is None else float(alpha)
    momentum, eps = float(momentum), float(eps)
    group = sync_process_group(process_group, training)
    if group is not None:
        return _sync_batch_norm_act(x, weight, bias, running_mean, running_var, momentum, eps, act, alpha, group)
    return _dispatch(x, weight, bias, running_mean, running_var, training, momentum, eps, act, alpha)
