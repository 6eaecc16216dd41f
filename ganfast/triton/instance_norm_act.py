"""The launchers of the instance_norm_act family on the Triton kernels of batch_norm_act.py.

Instance norm over x (N, C, *) is batch norm over the per-(n, c) axis: the view (1, N * C, S) of
contiguous x is an NCHW tensor of N * C channels (instance k = n * C + c, its S values contiguous),
which batch_norm_act's kernels walk as they walk any NCHW input (tiles [BLOCK_S, BLOCK_C] contiguous
along s: coalesced; int64 offsets; fp32 accumulation, fp64 for fp64). The affine parameters are read
at k % C (the kernels' PERIODIC mode). The launches: forward = statistics, finalize, normalise (as
batch_norm_act's training forward, no running statistics); backward = the reduction (whose last
programs write per-instance weight / bias gradients) and the elementwise pass, then the (N, C) ->
(C) sum of those per-instance gradients: a tiny torch reduction over n, kept out of the kernels
(folding it in would need a second ticket level over the instances of a channel). No host
synchronisation: sizes come from shapes.

A non-contiguous input (channels_last included) is made contiguous first: the view needs it.
"""
import torch

from .. import _args
from . import batch_norm_act as bn
from ._common import acc_dtype


def _instances(t, n, c, s):
    return t.contiguous().view(1, n * c, s)


def instance_norm_act(input, weight, bias, eps, act, alpha):
    """ganfast::instance_norm_act on the Triton kernels -> (out, save_mean, save_invstd)."""
    op = "ganfast::instance_norm_act"
    S = _args.check_instance_norm_act(op, input, weight, bias, eps)
    act = _args.parse_act(act)
    _args.check_kernel_dtype(input.dtype, "ganfast_instance_norm_act")
    N, C = input.shape[0], input.shape[1]
    x = _instances(input, N, C, S)
    acc = acc_dtype(x.dtype)
    if x.numel() == 0:  # nothing to normalise: S = 0 gives each instance mean 0, variance 0 (as the C++ kernels)
        mean = torch.zeros(N * C, dtype=acc[0], device=x.device)
        return torch.empty(input.shape, dtype=x.dtype, device=x.device), mean, torch.full_like(mean, float(eps) ** -0.5)
    mean, invstd = bn.batch_statistics(x, S, None, None, 0.0, eps, acc)
    out = bn.normalize(x, weight, bias, mean, invstd, act, alpha, period=C)
    return out.view(input.shape), mean, invstd


def instance_norm_act_backward(grad_output, input, weight, bias, save_mean, save_invstd, act, alpha):
    """ganfast::instance_norm_act_backward on the Triton kernels -> (grad_input, grad_weight, grad_bias)."""
    op = "ganfast::instance_norm_act_backward"
    S = _args.check_instance_norm_act_backward(op, grad_output, input, weight, bias, save_mean, save_invstd)
    act = _args.parse_act(act)
    _args.check_kernel_dtype(input.dtype, "ganfast_instance_norm_act_backward")
    N, C = input.shape[0], input.shape[1]
    gdtype = weight.dtype if weight is not None else input.dtype
    if input.numel() == 0:
        z = torch.zeros(C, dtype=gdtype, device=input.device)
        return torch.empty(input.shape, dtype=input.dtype, device=input.device), z, z.clone()
    x = _instances(input, N, C, S)
    g = _instances(grad_output.to(x.dtype), N, C, S)
    acc = acc_dtype(x.dtype)[0]
    # per-instance weight / bias gradients in the accumulation dtype, summed over the samples here
    grad_input, gw, gb = bn.backward_passes(g, x, weight, bias, save_mean, save_invstd, True, act, alpha, S, acc,
                                            period=C)
    return (grad_input.view(input.shape), gw.view(N, C).sum(0).to(gdtype), gb.view(N, C).sum(0).to(gdtype))
