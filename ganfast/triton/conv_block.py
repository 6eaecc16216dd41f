"""Triton kernels of the transposed-convolution block: ConvTranspose2d as implicit GEMMs.

out[n, co, oh, ow] = sum over ci, kh, kw with oh = ih s_h - p_h + kh, ow = iw s_w - p_w + kw of
x[n, ci, ih, iw] w[ci, co, kh, kw] (weight (Cin, Cout, kh, kw) as nn.ConvTranspose2d; groups 1,
dilation 1, output_padding 0).

Forward, sub-pixel phases. The output rows with (oh + p_h) % s_h == ph receive exactly the taps
kh = ph, ph + s_h, ... (and likewise for columns), from the input rows ih = (oh + p_h - kh) / s_h.
So each of the s_h s_w phases (ph, pw) is a small dense convolution of the input with its own
taps: a GEMM of M = N Hq Wq output pixels (the phase's sub-grid oh = oh0 + qh s_h) by Cout with
K = Cin x taps(ph) x taps(pw). No zero is inserted and no multiply-add is wasted (only the border
taps that fall outside the input are masked). One launch covers every phase: grid (M tiles,
Cout tiles, phases).

  _conv_t_kernel     tiles [BLOCK_M=64 pixels, BLOCK_N=64 channels], K loop over taps then BLOCK_K=16
                     input channels, tl.dot with fp32 accumulation (fp64 for fp64; IEEE fp32 products
                     for fp32 inputs: no TF32, the result is the reference's). The weight is
                     pre-packed (kh, kw, Cin, Cout) so a K slice is a contiguous [BLOCK_K, BLOCK_N]
                     block. Epilogue: + bias[co]; STATS: the tile's per-channel [sum, sum of
                     squares] of that value (as rounded to the output dtype: the tensor BatchNorm
                     sees) minus shift[co] into partial (2, T, Cout), T = phases x M tiles,
                     deterministic (no atomics; empty tiles write zeros); shift[co] = the value at
                     output pixel (0, 0) of image 0, recomputed by each program (a Cin x taps dot
                     product) so a mean much larger than the spread keeps the variance's digits,
                     as batch_norm_act.py's statistics pass; EPI "affine": * scale[co] + shift[co];
                     EPI "bn": the eval BatchNorm (v - running_mean) w / sqrt(running_var + eps)
                     + b, folded per channel in the epilogue; then the activation; one store.
Backward:
  _conv_t_grad_x_kernel   grad_x = the matching strided convolution of grad_out: an implicit GEMM
                          of M = N H W input pixels by Cin, K = taps x Cout, reading grad_out at
                          oh = ih s_h - p_h + kh (weight packed (kh, kw, Cout, Cin)).
  _conv_t_grad_w_kernel   grad_weight[ci, co, kh, kw] = sum over the input pixels of x times
                          grad_out at the tap's output pixel: per tap a [Cin, M] x [M, Cout]
                          GEMM, the M reduction split into SPLIT fixed ranges (partials added by
                          one ordered torch sum: deterministic).
  grad_bias               the per-channel sum of grad_out (batch_norm_act.py's statistics kernel).
Indexing: pixel and channel index math in int32 within one image (the launchers check that the
pixel counts fit), the batch offset in int64; BIG (an image or the weight of 2**31 elements or
more): int64 throughout. Activations are bias_act.py's.
"""

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .. import _args
from ._common import _cdiv, _Launch, acc_dtype
from . import batch_norm_act as _bn  # (the module, not its kernels: each kernel has one home)
from .batch_norm_act import Walk, _num_warps, _rsqrt_rn
from .bias_act import _act_value

# Tile sizes, read at call time (tests shrink them to exercise several tiles on tiny shapes).
# BLOCK_K 16 and 2 pipeline stages: the gathered (implicit-GEMM) operand tiles carry one address
# per element. 64 x 64 tiles at 8 warps: at 4 warps ptxas -v (ganfast/bench/gpu_report.py) showed
# spills of 4-84 bytes on several float32 / float64 / bfloat16 configurations; with int64 index
# math 64-row tiles spilled 1.3-1.8 KB even so, hence 32 rows there. No launch configuration
# spills now (tests/test_triton_compile.py fails on any spill).
BLOCK_M = 64
BLOCK_N = 64
BLOCK_K = 16
BIG_BLOCK_M = 32            # BLOCK_M cap with int64 index math
NUM_WARPS = 8
NUM_STAGES = 2
MAXNREG = 255               # ptxas's own choice for 256 threads (128 registers) spilled 4-8 bytes


def launch_options():
    """num_warps / num_stages / maxnreg of every conv kernel launch (and of its AOT compilation)."""
    return {"num_warps": NUM_WARPS, "num_stages": NUM_STAGES, "maxnreg": MAXNREG}

GRAD_W_MIN_PROGRAMS = 256   # the grad_weight reduction is split until about this many programs
GRAD_W_MIN_CHUNK = 8        # ... keeping at least this many BLOCK_K steps per split


def _pow2(n):
    return triton.next_power_of_2(max(int(n), 1))


@triton.jit
def _wide(v, BIG: tl.constexpr):
    """Index math is int32 within one image (sizes checked by the launchers) and int64 across the
    batch; BIG (an image of 2**31 elements or more): int64 throughout."""
    if BIG:
        v = v.to(tl.int64)
    return v


@triton.jit
def _dot(a, b, acc, ACC: tl.constexpr, DOT_IEEE: tl.constexpr):
    """acc + a @ b; DOT_IEEE: float32 operands with IEEE products (float32 inputs, and bfloat16
    under the interpreter, which has no bfloat16 arithmetic)."""
    if DOT_IEEE:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee", out_dtype=ACC)
    else:
        acc = tl.dot(a, b, acc, out_dtype=ACC)
    return acc


@triton.jit
def _origin_value(x_ptr, w_ptr, bias_ptr, co, comask, Cin, H, W, Cout, sxc, sxh, sxw,
                  KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                  PH: tl.constexpr, PW: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr,
                  BIG: tl.constexpr, BLOCK_K: tl.constexpr):
    """conv_transpose2d(x, w) + bias at output pixel (0, 0) of image 0, channels co (the statistics'
    shift). Its taps: kh = PH - SH ih for the input rows ih >= 0 with kh < KH (likewise kw)."""
    kk = tl.arange(0, BLOCK_K)
    s = tl.zeros(co.shape, ACC)
    for ih in range(0, PH // SH + 1):
        kh = PH - SH * ih
        for iw in range(0, PW // SW + 1):
            kw = PW - SW * iw
            inside = (kh < KH) & (kw < KW) & (ih < H) & (iw < W)
            x_pix = x_ptr + (_wide(ih, BIG) * sxh + _wide(iw, BIG) * sxw)
            w_tap = w_ptr + _wide(kh * KW + kw, BIG) * Cin * Cout
            for c0 in range(0, Cin, BLOCK_K):
                k = c0 + kk
                kmask = (k < Cin) & inside
                a = tl.load(x_pix + _wide(k, BIG) * sxc, mask=kmask, other=0.0).to(ACC)
                b = tl.load(w_tap + _wide(k, BIG)[:, None] * Cout + co[None, :],
                            mask=kmask[:, None] & comask[None, :], other=0.0).to(ACC)
                s += tl.sum(a[:, None] * b, axis=0)
    if HAS_BIAS:
        s += tl.load(bias_ptr + co, mask=comask, other=0.0).to(ACC)
    return s


@triton.jit
def _conv_t_kernel(x_ptr, w_ptr, bias_ptr, p0_ptr, p1_ptr, p2_ptr, p3_ptr, out_ptr, partial_ptr,
                   N, Cin, H, W, Cout, Hout, Wout, tiles_m,
                   sxn, sxc, sxh, sxw, son, soc, soh, sow, alpha: tl.float64, eps: tl.float64,
                   KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                   PH: tl.constexpr, PW: tl.constexpr, HAS_BIAS: tl.constexpr, EPI: tl.constexpr,
                   ACT: tl.constexpr, STATS: tl.constexpr, ACC: tl.constexpr, DOT_IEEE: tl.constexpr,
                   BIG: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    phase = tl.program_id(2)
    ph = phase // SW
    pw = phase % SW
    # the phase's first output row / column and its sub-grid size
    oh0 = (ph - PH % SH + SH) % SH
    ow0 = (pw - PW % SW + SW) % SW
    Hq = (Hout - oh0 + SH - 1) // SH
    Wq = (Wout - ow0 + SW - 1) // SW  # 0 for a phase with no column (then Mq = 0)
    base_h = (oh0 + PH - ph) // SH   # input row of tap 0 at qh = 0
    base_w = (ow0 + PW - pw) // SW
    taps_h = (KH - ph + SH - 1) // SH
    taps_w = (KW - pw + SW - 1) // SW
    hw = tl.maximum(Hq * Wq, 1)
    Mq = N * Hq * Wq                 # < 2**31 (the launcher checks N Hout Wout)

    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = m < Mq
    n = m // hw
    r = m - n * hw
    qh = r // tl.maximum(Wq, 1)
    qw = r - qh * Wq
    co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    comask = co < Cout
    kk = tl.arange(0, BLOCK_K)

    # an empty tile of a smaller phase: no K loop (its statistics are zeros)
    taps_h = tl.where(pid_m * BLOCK_M < Mq, taps_h, 0)
    acc = tl.zeros([BLOCK_M, BLOCK_N], ACC)
    x_n = x_ptr + n.to(tl.int64) * sxn
    for jh in range(0, taps_h):
        ih = base_h + qh - jh
        vh = mmask & (ih >= 0) & (ih < H)
        kh = ph + jh * SH
        for jw in range(0, taps_w):
            iw = base_w + qw - jw
            valid = vh & (iw >= 0) & (iw < W)
            kw = pw + jw * SW
            x_row = x_n + (_wide(ih, BIG) * sxh + _wide(iw, BIG) * sxw)
            w_tap = w_ptr + _wide(kh * KW + kw, BIG) * Cin * Cout
            for c0 in range(0, Cin, BLOCK_K):
                k = c0 + kk
                kmask = k < Cin
                a = tl.load(x_row[:, None] + _wide(k, BIG)[None, :] * sxc,
                            mask=valid[:, None] & kmask[None, :], other=0.0)
                b = tl.load(w_tap + _wide(k, BIG)[:, None] * Cout + co[None, :],
                            mask=kmask[:, None] & comask[None, :], other=0.0)
                acc = _dot(a, b, acc, ACC, DOT_IEEE)

    # ---- epilogue ----
    v = acc
    if HAS_BIAS:
        v += tl.load(bias_ptr + co, mask=comask, other=0.0).to(ACC)[None, :]
    if STATS:
        # Sums of v - first[co], the channel's first value (every program computes the same
        # one, in the same order): plain sums of v and v^2 would lose the variance's digits when the
        # mean dwarfs the spread (as batch_norm_act.py's statistics). Rounded to the output dtype
        # like v, so v - first is exact near it. Stored after the 2 T partial rows (Stats.shift).
        first = _origin_value(x_ptr, w_ptr, bias_ptr, co, comask, Cin, H, W, Cout, sxc, sxh, sxw,
                              KH, KW, SH, SW, PH, PW, HAS_BIAS, ACC, BIG, BLOCK_K)
        first = first.to(out_ptr.dtype.element_ty).to(ACC)
        keep = mmask[:, None] & comask[None, :]
        vs = tl.where(keep, v.to(out_ptr.dtype.element_ty).to(ACC) - first[None, :], 0.0)
        t = phase * tiles_m + pid_m
        T = tiles_m * (SH * SW)
        tl.store(partial_ptr + t * Cout + co, tl.sum(vs, axis=0), mask=comask)
        tl.store(partial_ptr + (T + t) * Cout + co, tl.sum(vs * vs, axis=0), mask=comask)
        tl.store(partial_ptr + 2 * T * Cout + co, first, mask=comask & (t == 0))
    if EPI == "affine":
        scale = tl.load(p0_ptr + co, mask=comask, other=1.0).to(ACC)
        shift = tl.load(p1_ptr + co, mask=comask, other=0.0).to(ACC)
        v = v * scale[None, :] + shift[None, :]
    elif EPI == "bn":
        mean = tl.load(p0_ptr + co, mask=comask, other=0.0).to(ACC)
        invstd = _rsqrt_rn(tl.load(p1_ptr + co, mask=comask, other=1.0).to(ACC) + tl.full([], eps, ACC))
        scale = tl.load(p2_ptr + co, mask=comask, other=1.0).to(ACC) * invstd
        shift = tl.load(p3_ptr + co, mask=comask, other=0.0).to(ACC)
        v = (v - mean[None, :]) * scale[None, :] + shift[None, :]
    v = _act_value(v, tl.full([], alpha, ACC), ACT)
    oh = oh0 + qh * SH
    ow = ow0 + qw * SW
    o = out_ptr + n.to(tl.int64) * son + (_wide(oh, BIG) * soh + _wide(ow, BIG) * sow)
    tl.store(o[:, None] + _wide(co, BIG)[None, :] * soc, v.to(out_ptr.dtype.element_ty),
             mask=mmask[:, None] & comask[None, :])


@triton.jit
def _conv_t_grad_x_kernel(g_ptr, w_ptr, dx_ptr, N, Cin, H, W, Cout, Hout, Wout,
                          sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw,
                          KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                          PH: tl.constexpr, PW: tl.constexpr, ACC: tl.constexpr, DOT_IEEE: tl.constexpr,
                          BIG: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr):
    """grad_x[n, ci, ih, iw] = sum over kh, kw, co of g[n, co, ih s - p + kh, iw s - p + kw] w[ci, co, kh, kw]."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    M = N * H * W                    # < 2**31 (checked by the launcher)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = m < M
    n = m // (H * W)
    r = m - n * (H * W)
    ih = r // W
    iw = r - ih * W
    ci = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cimask = ci < Cin
    kk = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], ACC)
    g_n = g_ptr + n.to(tl.int64) * sgn
    for kh in range(0, KH):
        oh = ih * SH - PH + kh
        vh = mmask & (oh >= 0) & (oh < Hout)
        for kw in range(0, KW):
            ow = iw * SW - PW + kw
            valid = vh & (ow >= 0) & (ow < Wout)
            g_row = g_n + (_wide(oh, BIG) * sgh + _wide(ow, BIG) * sgw)
            w_tap = w_ptr + _wide(kh * KW + kw, BIG) * Cout * Cin   # packed (kh, kw, Cout, Cin)
            for c0 in range(0, Cout, BLOCK_K):
                k = c0 + kk
                kmask = k < Cout
                a = tl.load(g_row[:, None] + _wide(k, BIG)[None, :] * sgc,
                            mask=valid[:, None] & kmask[None, :], other=0.0)
                b = tl.load(w_tap + _wide(k, BIG)[:, None] * Cin + ci[None, :],
                            mask=kmask[:, None] & cimask[None, :], other=0.0)
                acc = _dot(a, b, acc, ACC, DOT_IEEE)
    o = dx_ptr + n.to(tl.int64) * sxn + (_wide(ih, BIG) * sxh + _wide(iw, BIG) * sxw)
    tl.store(o[:, None] + _wide(ci, BIG)[None, :] * sxc, acc.to(dx_ptr.dtype.element_ty),
             mask=mmask[:, None] & cimask[None, :])


@triton.jit
def _conv_t_grad_w_kernel(x_ptr, g_ptr, partial_ptr, N, Cin, H, W, Cout, Hout, Wout, chunk,
                          sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw,
                          KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                          PH: tl.constexpr, PW: tl.constexpr, ACC: tl.constexpr, DOT_IEEE: tl.constexpr,
                          BIG: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr):
    """partial[split, kh, kw, ci, co] = sum over the input pixels m of split's range of
    x[n, ci, ih, iw] g[n, co, ih s - p + kh, iw s - p + kw]."""
    pid_m = tl.program_id(0)   # ci tile
    pid_n = tl.program_id(1)   # co tile
    pid_z = tl.program_id(2)   # tap x split
    tap = pid_z % (KH * KW)
    split = pid_z // (KH * KW)
    kh = tap // KW
    kw = tap % KW
    M = N * H * W                    # < 2**31 (checked by the launcher)
    ci = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cimask = ci < Cin
    co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    comask = co < Cout
    kk = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], ACC)
    start = split * chunk
    stop = tl.minimum(start + chunk, M)
    x_c = _wide(ci, BIG)[:, None] * sxc
    g_c = _wide(co, BIG)[None, :] * sgc
    for m0 in range(start, stop, BLOCK_K):
        m = m0 + kk
        n = m // (H * W)
        r = m - n * (H * W)
        ih = r // W
        iw = r - ih * W
        oh = ih * SH - PH + kh
        ow = iw * SW - PW + kw
        valid = (m < stop) & (oh >= 0) & (oh < Hout) & (ow >= 0) & (ow < Wout)
        nn = n.to(tl.int64)
        a = tl.load(x_ptr + (nn * sxn + (_wide(ih, BIG) * sxh + _wide(iw, BIG) * sxw))[None, :] + x_c,
                    mask=cimask[:, None] & valid[None, :], other=0.0)
        b = tl.load(g_ptr + (nn * sgn + (_wide(oh, BIG) * sgh + _wide(ow, BIG) * sgw))[:, None] + g_c,
                    mask=valid[:, None] & comask[None, :], other=0.0)
        acc = _dot(a, b, acc, ACC, DOT_IEEE)
    o = ((split * (KH * KW) + tap) * Cin + ci[:, None]).to(tl.int64) * Cout + co[None, :]
    tl.store(partial_ptr + o, acc, mask=cimask[:, None] & comask[None, :])


# ---- launch helpers ----------------------------------------------------------------------------

def _pair(v, name, op):
    if isinstance(v, int):
        v = (v, v)
    v = tuple(int(e) for e in v)
    if len(v) != 2:
        raise ValueError(f"{op}: {name} must be an int or a pair of ints; got {v}")
    return v


def _layout_like(x):
    """Outputs keep a channels_last x's layout; anything else is NCHW contiguous."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _dot_ieee(t):
    """float32: IEEE products (no TF32, as the reference); bfloat16 on CPU tensors (the
    interpreter): upcast to float32, as the interpreter has no bfloat16 arithmetic."""
    return t.dtype == torch.float32 or (t.device.type == "cpu" and t.dtype == torch.bfloat16)


def _blocks(m, n, k, big=False):
    """Tile sizes: the module's (BLOCK_M, BLOCK_N, BLOCK_K) shrunk to small GEMM dims (>= 16, the
    tensor-core minimum); at most BIG_BLOCK_M rows with int64 index math (big)."""
    block_m = min(BLOCK_M, BIG_BLOCK_M) if big else BLOCK_M
    return (min(block_m, max(16, _pow2(m))), min(BLOCK_N, max(16, _pow2(n))), min(BLOCK_K, max(16, _pow2(k))))


def check_conv_transpose2d(op, x, weight, bias, stride, padding):
    """x (N, Cin, H, W), weight (Cin, Cout, kh, kw) as nn.ConvTranspose2d, bias (Cout,) or None."""
    _args.check_floating(x, op, "x")
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be 4-D (N, Cin, H, W); got shape {_args.format_sizes(x.shape)}")
    _args.check_floating(weight, op, "weight")
    _args.check_same_device(x, weight, op, "x", "weight")
    if weight.dim() != 4 or weight.size(0) != x.size(1):
        raise ValueError(f"{op}: weight must have shape (Cin, Cout, kh, kw) with Cin = {x.size(1)} "
                         f"(x.size(1)); got {_args.format_sizes(weight.shape)}")
    if weight.dtype != x.dtype:
        raise TypeError(f"{op}: x and weight must have the same dtype; got "
                        f"{_args.scalar_type_name(x.dtype)} and {_args.scalar_type_name(weight.dtype)}")
    if bias is not None:
        _args.check_floating(bias, op, "bias")
        _args.check_same_device(x, bias, op, "x", "bias")
        if bias.dim() != 1 or bias.size(0) != weight.size(1):
            raise ValueError(f"{op}: bias must have shape (Cout,) = ({weight.size(1)},); got "
                             f"{_args.format_sizes(bias.shape)}")
    stride = _pair(stride, "stride", op)
    padding = _pair(padding, "padding", op)
    if min(stride) < 1:
        raise ValueError(f"{op}: stride must be >= 1; got {stride}")
    if min(padding) < 0:
        raise ValueError(f"{op}: padding must be >= 0; got {padding}")
    kh, kw = weight.shape[2], weight.shape[3]
    hout = (x.size(2) - 1) * stride[0] - 2 * padding[0] + kh
    wout = (x.size(3) - 1) * stride[1] - 2 * padding[1] + kw
    if hout < 1 or wout < 1:
        raise ValueError(f"{op}: the output would be empty ({hout} x {wout}) for input "
                         f"{x.size(2)} x {x.size(3)}, kernel {kh} x {kw}, stride {stride}, padding {padding}")
    _args.check_kernel_dtype(x.dtype, "ganfast_conv_transpose2d")
    return stride, padding, hout, wout


_INT32 = 2 ** 31


def _index_mode(op, N, Cin, H, W, Cout, hout, wout, KH, KW):
    """The BIG constexpr (an image or the weight of 2**31 elements or more: int64 index math
    throughout; the batch offset is always int64); pixel counts must fit int32."""
    if N * hout * wout >= _INT32 or N * H * W >= _INT32:
        raise ValueError(f"{op}: at most 2**31 - 1 pixels per batch are supported; got N H W = {N * H * W}, "
                         f"N Hout Wout = {N * hout * wout}")
    return max(Cin * H * W, Cout * hout * wout, Cin * Cout * KH * KW) >= _INT32


def _channel_param(t, C, dtype, device, default):
    return t if t is not None else torch.full((C,), default, dtype=dtype, device=device)


# ---- launchers ---------------------------------------------------------------------------------

class Stats(NamedTuple):
    """The statistics epilogue's output, in the accumulation dtype (float32; float64 for float64):
    partial (2, T, Cout), per tile and channel [sum, sum of squares] of v - shift[co], v =
    conv_transpose2d(x, weight) + bias as stored; shift (Cout,), v at output pixel (0, 0) of image 0
    (what batch_norm_act.finalize takes as shift, stride 1)."""
    partial: torch.Tensor
    shift: torch.Tensor


def conv_transpose2d(x, weight, bias, stride, padding, scale=None, shift=None, act="linear", alpha=0.0,
                     stats=False, *, bn=None):
    """(out, Stats or None): out = act(scale[co] (conv_transpose2d(x, weight) + bias[co]) +
    shift[co]) in one launch; stats=True: also the shifted per-tile sums of Stats (one buffer).
    bn=(running_mean, running_var, bn_weight, bn_bias, eps) instead of scale/shift: the eval
    BatchNorm in the epilogue."""
    op = "ganfast::conv_transpose2d"
    (sh, sw), (ph, pw), hout, wout = check_conv_transpose2d(op, x, weight, bias, stride, padding)
    act = _args.parse_act(act)
    N, Cin, H, W = x.shape
    Cout, KH, KW = weight.shape[1], weight.shape[2], weight.shape[3]
    device = x.device
    torch_acc, tl_acc = acc_dtype(x.dtype)
    out = torch.empty((N, Cout, hout, wout), dtype=x.dtype, device=device, memory_format=_layout_like(x))
    big = _index_mode(op, N, Cin, H, W, Cout, hout, wout, KH, KW)
    bm, bn_, bk = _blocks(N * _cdiv(hout, sh) * _cdiv(wout, sw), Cout, Cin, big)
    tiles_m = _cdiv(N * _cdiv(hout, sh) * _cdiv(wout, sw), bm)
    T = tiles_m * sh * sw
    partial = torch.empty((2 * T + 1, Cout), dtype=torch_acc, device=device) if stats else None
    result = Stats(partial[:2 * T].view(2, T, Cout), partial[2 * T]) if stats else None
    if out.numel() == 0:
        return out, result
    if bn is not None:
        epi = "bn"
        rm, rv, bw, bb, eps = bn
        params = (rm, rv, _channel_param(bw, Cout, rm.dtype, device, 1.0),
                  _channel_param(bb, Cout, rm.dtype, device, 0.0))
    elif scale is not None or shift is not None:
        epi, eps = "affine", 0.0
        params = (_channel_param(scale, Cout, torch_acc, device, 1.0),
                  _channel_param(shift, Cout, torch_acc, device, 0.0), out, out)
    else:
        epi, eps, params = "none", 0.0, (out, out, out, out)
    wp = weight.permute(2, 3, 0, 1).contiguous()  # (kh, kw, Cin, Cout): K slices contiguous in Cout
    with _Launch(device):
        _conv_t_kernel[(tiles_m, _cdiv(Cout, bn_), sh * sw)](
            x, wp, bias if bias is not None else out, *params, out,
            partial if stats else out,
            N, Cin, H, W, Cout, hout, wout, tiles_m, *x.stride(), *out.stride(), float(alpha), float(eps),
            KH=KH, KW=KW, SH=sh, SW=sw, PH=ph, PW=pw, HAS_BIAS=bias is not None, EPI=epi, ACT=act,
            STATS=bool(stats), ACC=tl_acc, DOT_IEEE=_dot_ieee(x), BIG=big, BLOCK_M=bm, BLOCK_N=bn_, BLOCK_K=bk,
            **launch_options())
    return out, result


def channel_sum(t):
    """Per-channel sum of an (N, C, *) tensor in the accumulation dtype: per-tile partials from
    batch_norm_act.py's statistics kernel, then one ordered torch sum (deterministic)."""
    torch_acc, tl_acc = acc_dtype(t.dtype)
    tw = t if (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)) else t.contiguous()
    C = tw.size(1)
    if tw.numel() == 0:
        return torch.zeros(C, dtype=torch_acc, device=t.device)
    walk = Walk(tw)
    partial = torch.empty((2, walk.T, C), dtype=torch_acc, device=t.device)
    with _Launch(t.device):
        _bn._bn_stats_kernel[(walk.T, walk.cblocks)](
            tw, partial, *walk.args(), SHIFT=False, ACC=tl_acc, ITERS=walk.iters,
            BLOCK_S=walk.block_s, BLOCK_C=walk.block_c, num_warps=_num_warps(walk.block_s * walk.block_c))
    return partial[0].sum(0)


def conv_transpose2d_backward(grad_out, x, weight, stride, padding, need_input, need_weight, need_bias):
    """(grad_x, grad_weight, grad_bias) of conv_transpose2d(x, weight, bias) (None where not needed)."""
    op = "ganfast::conv_transpose2d_backward"
    (sh, sw), (ph, pw), hout, wout = check_conv_transpose2d(op, x, weight, None, stride, padding)
    N, Cin, H, W = x.shape
    Cout, KH, KW = weight.shape[1], weight.shape[2], weight.shape[3]
    if tuple(grad_out.shape) != (N, Cout, hout, wout):
        raise ValueError(f"{op}: grad_out must have shape {_args.format_sizes((N, Cout, hout, wout))}; got "
                         f"{_args.format_sizes(grad_out.shape)}")
    device = x.device
    torch_acc, tl_acc = acc_dtype(x.dtype)
    g = grad_out if grad_out.dtype == x.dtype else grad_out.to(x.dtype)
    grad_x = grad_w = grad_b = None
    ieee = _dot_ieee(x)
    big = _index_mode(op, N, Cin, H, W, Cout, hout, wout, KH, KW)
    if need_input:
        grad_x = torch.empty_like(x, memory_format=_layout_like(x))
        if grad_x.numel() > 0:
            wp = weight.permute(2, 3, 1, 0).contiguous()  # (kh, kw, Cout, Cin)
            bm, bn_, bk = _blocks(N * H * W, Cin, Cout, big)
            with _Launch(device):
                _conv_t_grad_x_kernel[(_cdiv(N * H * W, bm), _cdiv(Cin, bn_))](
                    g, wp, grad_x, N, Cin, H, W, Cout, hout, wout, *g.stride(), *grad_x.stride(),
                    KH=KH, KW=KW, SH=sh, SW=sw, PH=ph, PW=pw, ACC=tl_acc, DOT_IEEE=ieee, BIG=big,
                    BLOCK_M=bm, BLOCK_N=bn_, BLOCK_K=bk, **launch_options())
    if need_weight:
        M = N * H * W
        bm, bn_, bk = _blocks(Cin, Cout, M, big)
        base = _cdiv(Cin, bm) * _cdiv(Cout, bn_) * KH * KW
        steps = _cdiv(M, bk)
        split = max(1, min(_cdiv(GRAD_W_MIN_PROGRAMS, base), steps // GRAD_W_MIN_CHUNK))
        chunk = _cdiv(steps, split) * bk
        split = max(1, _cdiv(M, chunk))
        buf = torch.empty((split, KH, KW, Cin, Cout), dtype=torch_acc, device=device)
        if M == 0:
            buf.zero_()
        else:
            with _Launch(device):
                _conv_t_grad_w_kernel[(_cdiv(Cin, bm), _cdiv(Cout, bn_), KH * KW * split)](
                    x, g, buf, N, Cin, H, W, Cout, hout, wout, chunk, *x.stride(), *g.stride(),
                    KH=KH, KW=KW, SH=sh, SW=sw, PH=ph, PW=pw, ACC=tl_acc, DOT_IEEE=ieee, BIG=big,
                    BLOCK_M=bm, BLOCK_N=bn_, BLOCK_K=bk, **launch_options())
        total = buf[0] if split == 1 else buf.sum(0)
        grad_w = total.permute(2, 3, 0, 1).to(weight.dtype).contiguous()
    if need_bias:
        grad_b = channel_sum(g).to(weight.dtype)
    return grad_x, grad_w, grad_b
