"""The Triton transposed-convolution block: ConvTranspose2d -> BatchNorm2d -> activation as
ganfast_triton:: custom ops around ganfast/triton/conv_block.py and batch_norm_act.py. Runs under
the backend "triton" chosen by name only: "auto" on CUDA sends the convolution to cuDNN (see
ganfast.ops.conv_block.block_impl), as this GEMM multiplies float32 in IEEE, without tensor cores.

Ops (explicit fake kernels: triton_op's automatic one touches storage under the interpreter):
  conv_transpose_block           (out, saved, save_mean, save_invstd, batch_var); functional
                                 (torch.library allows register_autograd on functional ops only).
                                 norm False: out = act(convT(x) + b), one launch (saved is empty,
                                 or the pre-activation when act' cannot be read from out); norm
                                 True, training: convT with the statistics epilogue (saved = its
                                 output; sums of it minus each channel's first value), finalize
                                 (adding that shift back), then normalise + affine + act; norm True,
                                 eval: convT, then the BatchNorm with the running statistics (the
                                 differentiable eval path).
  batch_norm_running_update      running_mean / running_var updated in place from the block's
                                 batch mean and unbiased variance (training; one small launch).
  conv_transpose_block_backward  the gradients w.r.t. x, conv weight, conv bias, BN weight and
                                 bias (empty tensors where not asked for). Not differentiable:
                                 double backward raises.
  conv_transpose_block_infer     eval without autograd (sampling): the BatchNorm folded into the
                                 convolution's epilogue with the activation, one launch.
conv_transpose_block(...) below picks between them (interfaces.md B).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .. import _args

OP = "ganfast.ops.conv_transpose_block"
DEFAULT_ALPHA = {"lrelu": 0.2, "elu": 1.0}


def _triton():
    from ..triton import batch_norm_act, bias_act, conv_block

    return conv_block, batch_norm_act, bias_act


# ---- argument checks and shapes (shared by the real and the fake kernels) ------------------------

def _pair(v, name):
    if isinstance(v, int):
        return [int(v), int(v)]
    v = [int(e) for e in v]
    if len(v) != 2:
        raise ValueError(f"{OP}: {name} must be an int or a pair of ints; got {v}")
    return v


def _output_size(x: Tensor, w: Tensor, stride, padding):
    hout = (x.size(2) - 1) * stride[0] - 2 * padding[0] + w.size(2)
    wout = (x.size(3) - 1) * stride[1] - 2 * padding[1] + w.size(3)
    return hout, wout


def _check(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, norm, training,
           stride, padding, act):
    """Everything the kernels would refuse, checked before any launch, naming the argument."""
    _args.check_floating(x, OP, "x")
    if x.dim() != 4:
        raise ValueError(f"{OP}: x must be 4-D (N, Cin, H, W); got shape {_args.format_sizes(x.shape)}")
    _args.check_floating(conv_weight, OP, "conv_weight")
    if conv_weight.dim() != 4 or conv_weight.size(0) != x.size(1):
        raise ValueError(f"{OP}: conv_weight must have shape (Cin, Cout, kh, kw) with Cin = {x.size(1)} "
                         f"(x.size(1), the input channels); got {_args.format_sizes(conv_weight.shape)}")
    if conv_weight.dtype != x.dtype:
        raise TypeError(f"{OP}: x and conv_weight must have the same dtype; got "
                        f"{_args.scalar_type_name(x.dtype)} and {_args.scalar_type_name(conv_weight.dtype)}")
    if min(stride) < 1:
        raise ValueError(f"{OP}: stride must be >= 1; got {tuple(stride)}")
    if min(padding) < 0:
        raise ValueError(f"{OP}: padding must be >= 0; got {tuple(padding)}")
    _args.parse_act(act)
    cout = conv_weight.size(1)
    vectors = [(conv_bias, "conv_bias")]
    if norm:
        vectors += [(bn_weight, "bn_weight"), (bn_bias, "bn_bias"), (running_mean, "running_mean"),
                    (running_var, "running_var")]
    for t, name in vectors:
        if t is None:
            continue
        _args.check_floating(t, OP, name)
        _args.check_same_device(x, t, OP, "x", name)
        if t.dim() != 1 or t.size(0) != cout:
            raise ValueError(f"{OP}: {name} must have shape (Cout,) = ({cout},) (conv_weight.size(1)); "
                             f"got {_args.format_sizes(t.shape)}")
    _args.check_same_device(x, conv_weight, OP, "x", "conv_weight")
    hout, wout = _output_size(x, conv_weight, stride, padding)
    if hout < 1 or wout < 1:
        raise ValueError(f"{OP}: the output would be empty ({hout} x {wout}) for input {x.size(2)} x "
                         f"{x.size(3)}, kernel {conv_weight.size(2)} x {conv_weight.size(3)}, stride "
                         f"{tuple(stride)}, padding {tuple(padding)}")
    if norm:
        if (running_mean is None) != (running_var is None):
            raise ValueError(f"{OP}: running_mean and running_var must be given together (both or neither)")
        if training and x.size(0) * hout * wout == 1:
            raise ValueError(f"{OP}: expected more than 1 value per channel when training; the "
                             f"output would be of shape {_args.format_sizes((x.size(0), cout, hout, wout))}")
        if not training and running_mean is None:
            raise ValueError(f"{OP}: running_mean and running_var are required when training is False "
                             "(eval normalises with the running statistics)")
    return hout, wout


def _memory_format(x: Tensor):
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _saves_preactivation(norm: bool, act: str, alpha: float) -> bool:
    """norm False: whether the backward needs the pre-activation (act' not readable from out)."""
    return not norm and act != "linear" and not _args.act_derivatives_from_y(act, alpha)


# ---- the ops -------------------------------------------------------------------------------------

# The block op is functional (torch.library allows autograd only on functional ops): in training it
# returns the batch's unbiased variance beside the mean, and the running statistics are updated by
# the small mutating op after it (one launch).

@torch.library.custom_op("ganfast_triton::conv_transpose_block", mutates_args=())
def _t_block(x: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor], bn_weight: Optional[Tensor],
             bn_bias: Optional[Tensor], running_mean: Optional[Tensor], running_var: Optional[Tensor],
             norm: bool, training: bool, eps: float, stride: List[int], padding: List[int],
             act: str, alpha: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(out, saved, save_mean, save_invstd, batch_var): saved = the convolution's output (norm) or
    the pre-activation (norm False, act' not readable from out) or empty; batch_var = the batch's
    unbiased variance (norm and training) or empty."""
    hout, wout = _check(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, norm,
                        training, stride, padding, act)
    conv, bn, bias_act = _triton()
    empty = x.new_empty(0)
    if not norm:
        if _saves_preactivation(norm, act, alpha):
            z, _ = conv.conv_transpose2d(x, conv_weight, conv_bias, stride, padding)
            out = bias_act.bias_act(z, None, 1, act, alpha, 1.0, -1.0)
            return out, z, empty, empty.clone(), empty.clone()
        out, _ = conv.conv_transpose2d(x, conv_weight, conv_bias, stride, padding, act=act, alpha=alpha)
        return out, empty, empty.clone(), empty.clone(), empty.clone()
    y, stats = conv.conv_transpose2d(x, conv_weight, conv_bias, stride, padding, stats=training)
    acc = bn.acc_dtype(x.dtype)
    C = conv_weight.size(1)
    if training and x.size(0) == 0:  # an empty batch: nothing to normalise, no statistics
        z = torch.zeros(C, dtype=acc[0], device=x.device)
        return torch.empty_like(y), y, z, z.clone(), z.clone()
    if training:
        M = x.size(0) * hout * wout
        # the epilogue's sums are of y - stats.shift: finalize adds the shift back to the mean
        mean, invstd, var = bn.finalize(stats.partial, stats.partial.size(1), C, M, None, None, True, 0.0, eps,
                                        acc, x.device, shift=stats.shift, shift_stride=1, var_out=True)
    else:
        mean, invstd, _ = bn.finalize(None, 0, C, 0, running_mean, running_var, False, 0.0, eps, acc, x.device)
        var = empty.clone()
    out = bn.normalize(y, bn_weight, bn_bias, mean, invstd, act, alpha)
    return out, y, mean, invstd, var


@_t_block.register_fake
def _fake_block(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, norm, training,
                eps, stride, padding, act, alpha):
    hout, wout = _check(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, norm,
                        training, stride, padding, act)
    shape = (x.size(0), conv_weight.size(1), hout, wout)
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_memory_format(x))
    if not norm:
        saved = torch.empty_like(out) if _saves_preactivation(norm, act, alpha) else x.new_empty(0)
        return out, saved, x.new_empty(0), x.new_empty(0), x.new_empty(0)
    stat = x.new_empty((conv_weight.size(1),), dtype=_acc(x.dtype))
    var = torch.empty_like(stat) if training else x.new_empty(0)
    return out, torch.empty_like(out), stat, torch.empty_like(stat), var


@torch.library.custom_op("ganfast_triton::batch_norm_running_update", mutates_args=("running_mean", "running_var"))
def _t_running_update(running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor,
                      momentum: float) -> None:
    """running = (1 - momentum) running + momentum batch statistic, in place (var unbiased)."""
    _triton()[1].running_update(running_mean, running_var, mean, var, momentum)


@_t_running_update.register_fake
def _fake_running_update(running_mean, running_var, mean, var, momentum):
    return None


@torch.library.custom_op("ganfast_triton::conv_transpose_block_backward", mutates_args=())
def _t_block_backward(grad_out: Tensor, out: Tensor, saved: Tensor, x: Tensor, conv_weight: Tensor,
                      bn_weight: Optional[Tensor], bn_bias: Optional[Tensor], save_mean: Tensor,
                      save_invstd: Tensor, norm: bool, training: bool, stride: List[int], padding: List[int],
                      act: str, alpha: float, needs: List[bool]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(grad_x, grad_conv_weight, grad_conv_bias, grad_bn_weight, grad_bn_bias); needs: which of
    the five to compute (the others are empty tensors)."""
    conv, bn, bias_act = _triton()
    empty = x.new_empty(0)
    gbw = gbb = None
    if norm:
        g, gbw, gbb = bn.batch_norm_act_backward(grad_out, saved, bn_weight, bn_bias, save_mean, save_invstd,
                                                 training, act, alpha)
    elif act == "linear":
        g = grad_out
    elif _saves_preactivation(norm, act, alpha):  # act' from the saved pre-activation
        g = bias_act.bias_act_backward(grad_out, saved, None, out, 1, act, alpha, 1.0, -1.0, 1)
    else:  # act' from out
        g = bias_act.bias_act_backward(grad_out, None, None, out, 1, act, alpha, 1.0, -1.0, 1)
    gx, gw, gb = conv.conv_transpose2d_backward(g, x, conv_weight, stride, padding, needs[0], needs[1], needs[2])
    return tuple(t if t is not None else empty.clone() for t in
                 (gx, gw, gb, gbw if needs[3] else None, gbb if needs[4] else None))


@_t_block_backward.register_fake
def _fake_block_backward(grad_out, out, saved, x, conv_weight, bn_weight, bn_bias, save_mean, save_invstd,
                         norm, training, stride, padding, act, alpha, needs):
    cout = conv_weight.size(1)
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_memory_format(x)) \
        if needs[0] else x.new_empty(0)
    gw = torch.empty_like(conv_weight, memory_format=torch.contiguous_format) if needs[1] else x.new_empty(0)
    gb = conv_weight.new_empty((cout,)) if needs[2] else x.new_empty(0)
    gdt = bn_weight.dtype if bn_weight is not None else out.dtype
    gbw = x.new_empty((cout,), dtype=gdt) if needs[3] else x.new_empty(0)
    gbb = x.new_empty((cout,), dtype=gdt) if needs[4] else x.new_empty(0)
    return gx, gw, gb, gbw, gbb


@torch.library.custom_op("ganfast_triton::conv_transpose_block_infer", mutates_args=())
def _t_block_infer(x: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor], bn_weight: Optional[Tensor],
                   bn_bias: Optional[Tensor], running_mean: Optional[Tensor], running_var: Optional[Tensor],
                   norm: bool, eps: float, stride: List[int], padding: List[int], act: str,
                   alpha: float) -> Tensor:
    _check(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, norm, False,
           stride, padding, act)
    conv, _, _ = _triton()
    bnp = (running_mean, running_var, bn_weight, bn_bias, eps) if norm else None
    out, _ = conv.conv_transpose2d(x, conv_weight, conv_bias, stride, padding, act=act, alpha=alpha, bn=bnp)
    return out


@_t_block_infer.register_fake
def _fake_block_infer(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, norm, eps,
                      stride, padding, act, alpha):
    hout, wout = _check(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, norm,
                        False, stride, padding, act)
    return torch.empty((x.size(0), conv_weight.size(1), hout, wout), dtype=x.dtype, device=x.device,
                       memory_format=_memory_format(x))


# ---- autograd ------------------------------------------------------------------------------------

def _setup_block(ctx, inputs, output):
    (x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, norm, training,
     eps, stride, padding, act, alpha) = inputs
    out, saved, mean, invstd, _ = output
    ctx.save_for_backward(out, saved, x, conv_weight, bn_weight, bn_bias, mean, invstd)
    ctx.params = (norm, training, stride, padding, act, alpha)
    ctx.has_conv_bias = conv_bias is not None


def _backward_block(ctx, grad_out, _g_saved, _g_mean, _g_invstd, _g_var):
    out, saved, x, conv_weight, bn_weight, bn_bias, mean, invstd = ctx.saved_tensors
    norm, training, stride, padding, act, alpha = ctx.params
    n = ctx.needs_input_grad
    needs = [n[0], n[1], n[2] and ctx.has_conv_bias, norm and n[3] and bn_weight is not None,
             norm and n[4] and bn_bias is not None]
    if grad_out is None or not any(needs):
        return (None,) * 14
    grads = _t_block_backward(grad_out, out, saved, x, conv_weight, bn_weight, bn_bias, mean, invstd, norm,
                              training, stride, padding, act, alpha, needs)
    return tuple(g if need else None for g, need in zip(grads, needs)) + (None,) * 9


def _setup_block_backward(ctx, inputs, output):
    pass


def _no_double_backward(ctx, *grads):
    raise RuntimeError("ganfast_triton::conv_transpose_block: double backward is not supported (the "
                       "gradient of the block's gradient is not implemented); use the reference backend "
                       "(ganfast.use_backend('reference')) for higher-order derivatives")


def _no_infer_backward(ctx, *grads):
    raise RuntimeError("ganfast_triton::conv_transpose_block_infer is the no-grad eval path and has no "
                       "gradient; call ganfast.ops.triton_conv_block.conv_transpose_block, which picks the "
                       "differentiable path when gradients are needed")


_t_block.register_autograd(_backward_block, setup_context=_setup_block)
_t_block_backward.register_autograd(_no_double_backward, setup_context=_setup_block_backward)
_t_block_infer.register_autograd(_no_infer_backward, setup_context=_setup_block_backward)


# ---- entry point ---------------------------------------------------------------------------------

def conv_transpose_block(x: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor], bn_weight: Optional[Tensor],
                         bn_bias: Optional[Tensor], running_mean: Optional[Tensor], running_var: Optional[Tensor], *,
                         norm: bool, training: bool, momentum: float, eps: float, stride, padding,
                         act: Optional[str], alpha: Optional[float]) -> Tensor:
    """act(BN(conv_transpose2d(x, conv_weight, conv_bias))) on the Triton kernels (interfaces.md B).

    norm False: act(convT(x) + conv_bias), one launch (bn_* and running_* unused). norm True,
    training: batch statistics, running_mean / running_var updated in place (unbiased variance;
    num_batches_tracked is the caller's); eval: the running statistics, and without autograd the
    BatchNorm and the activation folded into the convolution's epilogue (one launch).
    Differentiable w.r.t. x, conv_weight, conv_bias, bn_weight, bn_bias; double backward raises."""
    act = "linear" if act is None else act
    alpha = DEFAULT_ALPHA.get(act, 0.0) if alpha is None else float(alpha)
    stride = _pair(stride, "stride")
    padding = _pair(padding, "padding")
    norm, training = bool(norm), bool(training)
    if not norm:
        bn_weight = bn_bias = running_mean = running_var = None
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, conv_weight, conv_bias, bn_weight, bn_bias))
    if not grad and not (norm and training):
        return _t_block_infer(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, norm,
                              float(eps), stride, padding, act, alpha)
    out, _, mean, _, var = _t_block(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var,
                                    norm, training, float(eps), stride, padding, act, alpha)
    if norm and training and running_mean is not None and x.size(0) > 0:  # (torch: an empty batch updates nothing)
        _t_running_update(running_mean, running_var, mean.detach(), var.detach(), float(momentum))
    return out
