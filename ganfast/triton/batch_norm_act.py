"""Triton kernels of the batch_norm_act family and their launchers.

The launchers take and return exactly what the C++ ops of csrc/ganfast.cpp do (batch_norm_act,
batch_norm_act_backward); finalize and normalize also serve the transposed-convolution block,
whose epilogue sums the statistics itself (conv_block.py); batch_statistics, normalize and
backward_passes also serve instance_norm_act (instance_norm_act.py), batch norm over the view
(1, N * C, S) whose channel c = n * C + channel takes the affine parameters at c % C (PERIODIC).
out = act(w[c] (x - mean[c]) invstd[c] + b[c]); the activations are bias_act.py's (gain 1, no
clamp), float32 math for float32 / float16 / bfloat16 and float64 math for float64.

Layout. An (N, C, *) input is walked as (outer, s, c) with strides (s_outer, s_s, s_c): NCHW
contiguous -> outer = n, s = the spatial position (stride 1), c stride prod(*); a 4-D channels_last
input -> outer = 0 (one), s = n H W + h W + w (stride C), c stride 1. Anything else is made
contiguous. Every kernel works on 2-D tiles [BLOCK_S, BLOCK_C] of one outer index: the per-channel
parameters are loaded once per tile as a [BLOCK_C] vector (no per-element channel division), and
the tile is contiguous along s (NCHW) or c (channels_last): the launcher makes that axis the long
one, so the accesses are coalesced 16-byte vectors either way. Offsets are int64.

Kernels:
  _bn_stats_kernel         grid (T, C blocks): per-tile [sum, sum of squares] of x - shift[c] into
                           partial (2, T, C), shift[c] = the channel's first value (the variance
                           is shift-invariant; the shift keeps E[x^2] - E[x]^2 from cancelling
                           when |mean| >> std). fp32 accumulation (fp64 for fp64).
  _bn_finalize_kernel      grid (R, C blocks): training: the T partials summed in float64 (the
                           tile sums are fp32, their combination need not lose more) in two
                           levels: R programs per channel block each sum a chunk of rows in index
                           order, the last of them (a ticket) sums the R chunk sums in index
                           order; then mean, biased variance, invstd = 1 / sqrt(var + eps),
                           running stats updated in place (unbiased variance); eval: mean, invstd
                           from the running statistics. Deterministic: a fixed order of sums.
  _bn_act_kernel           out = act((x - mean) * (w invstd) + b), one pass.
  _bn_act_backward_reduce_kernel
                           grid (T, C blocks): dz = dy act'(z) (z recomputed from x), per-tile sums
                           of dz and dz (x - mean); the last program of each channel block (a
                           ticket, as _common.py's reductions) adds the T partials in index order
                           and writes grad_bias, grad_weight and the two per-channel terms of the
                           input gradient. In eval it also writes grad_input = dz w invstd (one
                           launch in all).
  _bn_act_backward_kernel  training: grad_input = w invstd (dz - mean(dz) - (x - mean) k),
                           k = invstd^2 mean(dz (x - mean)) (gan_math.h batch_norm_grad_input).
Conditional BatchNorm (weight / bias (N, C), one per sample; issue 12): the statistics run over x
(made NCHW contiguous) as above; the elementwise passes and the backward's reduction run over its
instance view (1, N * C, S) with every operand per instance (_instance_operands: tiny device
tensors); the training input gradient takes PER_SAMPLE terms p, q (w-weighted sums over the
samples of the per-instance sums, made by torch ops between the two backward launches).
No host synchronisation anywhere: sizes come from shapes, statistics stay on the device.
"""

import torch
import triton
import triton.language as tl

from .. import _args
from ._common import (MAX_BLOCK_C, MAX_TILES, TILE, Walk, _cdiv, _channel_partials_sum, _div,  # noqa: F401
                      _last_ticket, _Launch, _num_warps, _pow2, _tile_offsets, acc_dtype, counters)
from .bias_act import _act_derivative, _act_value

BLOCK_T = 8          # rows of the partials summed at once by the finalize (float64)
FINALIZE_ROWS = 64   # the finalize's first level: at least this many partial rows per program
FINALIZE_CHUNKS = 64  # ... and at most about this many programs per channel block


# ---- device helpers ----------------------------------------------------------------------------

@triton.jit
def _channel(ptr, c, cmask, default, ACC: tl.constexpr, PRESENT: tl.constexpr):
    """A per-channel vector [BLOCK_C] in ACC (default where absent)."""
    if PRESENT:
        v = tl.load(ptr + c, mask=cmask, other=default).to(ACC)
    else:
        v = tl.full(c.shape, default, ACC)
    return v


@triton.jit
def _channel_affine(w_ptr, b_ptr, mean_ptr, invstd_ptr, pid_c, C, P, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                    PERIODIC: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr):
    """Channel block pid_c: (c, cmask, mean, invstd, scale = w invstd, shift = b), so that
    z = (x - mean) scale + shift. PERIODIC: channel c takes the affine parameters of c % P
    (instance_norm_act's instance c = n * P + channel; one division per channel vector)."""
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    mean = tl.load(mean_ptr + c, mask=cmask, other=0.0).to(ACC)
    invstd = tl.load(invstd_ptr + c, mask=cmask, other=0.0).to(ACC)
    if PERIODIC:
        pc = c % P
    else:
        pc = c
    scale = _channel(w_ptr, pc, cmask, 1.0, ACC, HAS_W) * invstd
    shift = _channel(b_ptr, pc, cmask, 0.0, ACC, HAS_B)
    return c, cmask, mean, invstd, scale, shift


@triton.jit
def _rsqrt_rn(v):
    """1 / sqrt(v) with both operations rounded to nearest (tl.rsqrt is approximate on the GPU)."""
    if v.dtype == tl.float64:
        r = 1.0 / tl.sqrt(v)
    else:
        r = _div(1.0, tl.sqrt_rn(v))
    return r


# ---- forward -----------------------------------------------------------------------------------

@triton.jit
def _bn_stats_kernel(x_ptr, partial_ptr, S, C, per_outer, s_outer, s_s, s_c,
                     SHIFT: tl.constexpr, ACC: tl.constexpr, ITERS: tl.constexpr,
                     BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    T = tl.num_programs(0)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    if SHIFT:
        # the channel's first value (outer 0, s 0)
        shift = tl.load(x_ptr + c.to(tl.int64) * s_c, mask=cmask, other=0.0).to(ACC)
    else:
        shift = tl.zeros([BLOCK_C], ACC)
    acc = tl.zeros([BLOCK_S, BLOCK_C], ACC)
    acc2 = tl.zeros([BLOCK_S, BLOCK_C], ACC)
    for i in range(ITERS):
        offs, mask = _tile_offsets(pid_t, pid_c, i, S, C, per_outer, s_outer, s_s, s_c,
                                   ITERS, BLOCK_S, BLOCK_C)
        v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
        v = tl.where(mask, v - shift[None, :], 0.0)
        acc += v
        acc2 += v * v
    out = pid_t.to(tl.int64) * C + c
    tl.store(partial_ptr + out, tl.sum(acc, axis=0), mask=cmask)
    tl.store(partial_ptr + T.to(tl.int64) * C + out, tl.sum(acc2, axis=0), mask=cmask)


@triton.jit
def _rows_sum(ptr, t_lo, t_hi, nrows, C, c, cmask, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """float64 sums over rows [t_lo, t_hi) of both halves of ptr (2, nrows, C) at channels c:
    lane-wise over BLOCK_T rows in index order, then a tree (a fixed order: deterministic)."""
    acc = tl.zeros([BLOCK_T, BLOCK_C], tl.float64)
    acc2 = tl.zeros([BLOCK_T, BLOCK_C], tl.float64)
    half = tl.cast(nrows, tl.int64) * C
    for t0 in range(t_lo, t_hi, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        offs = t[:, None].to(tl.int64) * C + c[None, :]
        mask = (t[:, None] < t_hi) & cmask[None, :]
        # .cg: the second level reads rows other programs of this launch wrote
        acc += tl.load(ptr + offs, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float64)
        acc2 += tl.load(ptr + half + offs, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float64)
    return tl.sum(acc, axis=0), tl.sum(acc2, axis=0)


@triton.jit
def _bn_statistics(total, total2, shift_ptr, rm_ptr, rv_ptr, mean_ptr, invstd_ptr, var_ptr, c, cmask,
                   M, s_c, momentum, eps, SHIFT: tl.constexpr, RUNNING: tl.constexpr,
                   VAR_OUT: tl.constexpr, ACC: tl.constexpr):
    """mean, invstd (and the running statistics, the unbiased variance) from the float64 channel
    sums of x - shift and of its square."""
    m = tl.cast(M, tl.float64)
    d = total / m          # mean of x - shift
    var = total2 / m - d * d
    var = tl.maximum(var, 0.0)
    if SHIFT:
        d += tl.load(shift_ptr + c.to(tl.int64) * s_c, mask=cmask, other=0.0).to(tl.float64)
    mean = d.to(ACC)
    invstd = _rsqrt_rn(var.to(ACC) + tl.full([], eps, ACC))
    unbiased = (var * (m / tl.maximum(m - 1.0, 1.0))).to(ACC)
    if RUNNING:
        _running_update(rm_ptr, rv_ptr, c, cmask, mean, unbiased, momentum, ACC)
    if VAR_OUT:
        tl.store(var_ptr + c, unbiased, mask=cmask)
    tl.store(mean_ptr + c, mean, mask=cmask)
    tl.store(invstd_ptr + c, invstd, mask=cmask)


@triton.jit
def _bn_finalize_kernel(partial_ptr, chunk_ptr, counter_ptr, shift_ptr, rm_ptr, rv_ptr, mean_ptr,
                        invstd_ptr, var_ptr, T, C, M, s_c, rows, momentum: tl.float64, eps: tl.float64,
                        TRAINING: tl.constexpr, SHIFT: tl.constexpr, RUNNING: tl.constexpr,
                        VAR_OUT: tl.constexpr, ACC: tl.constexpr, BLOCK_T: tl.constexpr,
                        BLOCK_C: tl.constexpr):
    """Grid (R, C blocks). Training: program (r, cb) sums partial rows [r rows, (r + 1) rows);
    with R = 1 it finishes the statistics itself, else it stores its sums in chunk (2, R, C) and
    the last program of the channel block (a ticket) sums the R chunks and finishes."""
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    R = tl.num_programs(0)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    if TRAINING:
        t_lo = pid_r * rows
        s1, s2 = _rows_sum(partial_ptr, t_lo, tl.minimum(t_lo + rows, T), T, C, c, cmask, BLOCK_T, BLOCK_C)
        if R == 1:
            _bn_statistics(s1, s2, shift_ptr, rm_ptr, rv_ptr, mean_ptr, invstd_ptr, var_ptr, c, cmask,
                           M, s_c, momentum, eps, SHIFT, RUNNING, VAR_OUT, ACC)
        else:
            out = pid_r.to(tl.int64) * C + c
            tl.store(chunk_ptr + out, s1, mask=cmask)
            tl.store(chunk_ptr + R.to(tl.int64) * C + out, s2, mask=cmask)
            if _last_ticket(counter_ptr + pid_c, R):
                s1, s2 = _rows_sum(chunk_ptr, 0, R, R, C, c, cmask, BLOCK_T, BLOCK_C)
                _bn_statistics(s1, s2, shift_ptr, rm_ptr, rv_ptr, mean_ptr, invstd_ptr, var_ptr, c, cmask,
                               M, s_c, momentum, eps, SHIFT, RUNNING, VAR_OUT, ACC)
    else:
        mean = tl.load(rm_ptr + c, mask=cmask, other=0.0).to(ACC)
        rv = tl.load(rv_ptr + c, mask=cmask, other=1.0).to(ACC)
        tl.store(mean_ptr + c, mean, mask=cmask)
        tl.store(invstd_ptr + c, _rsqrt_rn(rv + tl.full([], eps, ACC)), mask=cmask)


@triton.jit
def _running_update(rm_ptr, rv_ptr, c, cmask, mean, unbiased, momentum, ACC: tl.constexpr):
    """r = (1 - momentum) r + momentum stat, in place (the variance stat unbiased)."""
    mo = tl.full([], momentum, ACC)
    rm = tl.load(rm_ptr + c, mask=cmask, other=0.0).to(ACC)
    rv = tl.load(rv_ptr + c, mask=cmask, other=0.0).to(ACC)
    tl.store(rm_ptr + c, ((1.0 - mo) * rm + mo * mean).to(rm_ptr.dtype.element_ty), mask=cmask)
    tl.store(rv_ptr + c, ((1.0 - mo) * rv + mo * unbiased).to(rv_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _bn_running_update_kernel(rm_ptr, rv_ptr, mean_ptr, var_ptr, C, momentum: tl.float64,
                              ACC: tl.constexpr, BLOCK_C: tl.constexpr):
    """The running statistics' update from a batch's mean and unbiased variance (finalize's
    VAR_OUT), as its own launch for callers whose statistics pass must not mutate."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    mean = tl.load(mean_ptr + c, mask=cmask, other=0.0).to(ACC)
    var = tl.load(var_ptr + c, mask=cmask, other=0.0).to(ACC)
    _running_update(rm_ptr, rv_ptr, c, cmask, mean, var, momentum, ACC)


@triton.jit
def _bn_act_kernel(x_ptr, w_ptr, b_ptr, mean_ptr, invstd_ptr, out_ptr,
                   S, C, per_outer, s_outer, s_s, s_c, P, alpha: tl.float64,
                   ACT: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, PERIODIC: tl.constexpr,
                   ACC: tl.constexpr, ITERS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    c, cmask, mean, invstd, scale, shift = _channel_affine(w_ptr, b_ptr, mean_ptr, invstd_ptr, pid_c, C, P,
                                                           HAS_W, HAS_B, PERIODIC, ACC, BLOCK_C)
    a = tl.full([], alpha, ACC)
    for i in range(ITERS):
        offs, mask = _tile_offsets(pid_t, pid_c, i, S, C, per_outer, s_outer, s_s, s_c,
                                   ITERS, BLOCK_S, BLOCK_C)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
        z = (x - mean[None, :]) * scale[None, :] + shift[None, :]
        tl.store(out_ptr + offs, _act_value(z, a, ACT).to(out_ptr.dtype.element_ty), mask=mask)


# ---- backward ----------------------------------------------------------------------------------

@triton.jit
def _bn_act_backward_reduce_kernel(g_ptr, x_ptr, w_ptr, b_ptr, mean_ptr, invstd_ptr,
                                   partial_ptr, counter_ptr, gw_ptr, gb_ptr, terms_ptr, dx_ptr,
                                   S, C, M, per_outer, s_outer, s_s, s_c, P, alpha: tl.float64,
                                   ACT: tl.constexpr, TRAINING: tl.constexpr, HAS_W: tl.constexpr,
                                   HAS_B: tl.constexpr, PERIODIC: tl.constexpr, ACC: tl.constexpr,
                                   ITERS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr,
                                   BLOCK_C: tl.constexpr):
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    T = tl.num_programs(0)
    c, cmask, mean, invstd, scale, shift = _channel_affine(w_ptr, b_ptr, mean_ptr, invstd_ptr, pid_c, C, P,
                                                           HAS_W, HAS_B, PERIODIC, ACC, BLOCK_C)
    a = tl.full([], alpha, ACC)
    acc = tl.zeros([BLOCK_S, BLOCK_C], ACC)
    acc2 = tl.zeros([BLOCK_S, BLOCK_C], ACC)
    for i in range(ITERS):
        offs, mask = _tile_offsets(pid_t, pid_c, i, S, C, per_outer, s_outer, s_s, s_c,
                                   ITERS, BLOCK_S, BLOCK_C)
        xc = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC) - mean[None, :]
        dy = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)
        dz = dy * _act_derivative(xc * scale[None, :] + shift[None, :], a, ACT, 1)
        dz = tl.where(mask, dz, 0.0)
        acc += dz
        acc2 += dz * xc
        if not TRAINING:
            tl.store(dx_ptr + offs, (dz * scale[None, :]).to(dx_ptr.dtype.element_ty), mask=mask)
    out = pid_t.to(tl.int64) * C + c
    tl.store(partial_ptr + out, tl.sum(acc, axis=0), mask=cmask)
    tl.store(partial_ptr + T.to(tl.int64) * C + out, tl.sum(acc2, axis=0), mask=cmask)
    if _last_ticket(counter_ptr + pid_c, T):
        # the last program of this channel block: the T partials added in index order
        sum_dz = _channel_partials_sum(partial_ptr, T, C, c, cmask, ACC, BLOCK_T, BLOCK_C)
        sum_dzx = _channel_partials_sum(partial_ptr + T.to(tl.int64) * C, T, C, c, cmask, ACC, BLOCK_T, BLOCK_C)
        tl.store(gb_ptr + c, sum_dz.to(gb_ptr.dtype.element_ty), mask=cmask)
        tl.store(gw_ptr + c, (sum_dzx * invstd).to(gw_ptr.dtype.element_ty), mask=cmask)
        if TRAINING:
            m = M.to(ACC)
            tl.store(terms_ptr + c, _div(sum_dz, m), mask=cmask)
            tl.store(terms_ptr + C + c, _div(sum_dzx, m) * invstd * invstd, mask=cmask)


@triton.jit
def _bn_act_backward_kernel(g_ptr, x_ptr, w_ptr, b_ptr, mean_ptr, invstd_ptr, terms_ptr, dx_ptr,
                            S, C, per_outer, s_outer, s_s, s_c, P, alpha: tl.float64,
                            ACT: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                            PERIODIC: tl.constexpr, ACC: tl.constexpr, ITERS: tl.constexpr,
                            BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, PER_SAMPLE: tl.constexpr = False):
    """training grad_input. PER_SAMPLE (conditional BatchNorm over the instance view, weight per
    (n, c)): terms hold p, q and dx = scale dz - p - (x - mean) q (gan_math.h
    batch_norm_grad_input_per_sample); else terms hold mean(dz), k and dx = scale (dz - mean(dz) - (x - mean) k)."""
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    c, cmask, mean, invstd, scale, shift = _channel_affine(w_ptr, b_ptr, mean_ptr, invstd_ptr, pid_c, C, P,
                                                           HAS_W, HAS_B, PERIODIC, ACC, BLOCK_C)
    a = tl.full([], alpha, ACC)
    mean_dz = tl.load(terms_ptr + c, mask=cmask, other=0.0)
    k = tl.load(terms_ptr + C + c, mask=cmask, other=0.0)
    for i in range(ITERS):
        offs, mask = _tile_offsets(pid_t, pid_c, i, S, C, per_outer, s_outer, s_s, s_c,
                                   ITERS, BLOCK_S, BLOCK_C)
        xc = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC) - mean[None, :]
        dy = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)
        dz = dy * _act_derivative(xc * scale[None, :] + shift[None, :], a, ACT, 1)
        if PER_SAMPLE:
            dx = scale[None, :] * dz - mean_dz[None, :] - xc * k[None, :]
        else:
            dx = scale[None, :] * (dz - mean_dz[None, :] - xc * k[None, :])
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ---- launch helpers ----------------------------------------------------------------------------

def walkable(t):
    """NCHW contiguous, or 4-D channels_last: walked in place; anything else is copied."""
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def _like(t, ref, dtype):
    """t in ref's memory layout and dtype (t itself when it already is)."""
    if t.dtype == dtype and t.stride() == ref.stride():
        return t
    return torch.empty_like(ref, dtype=dtype).copy_(t)


# ---- launchers ---------------------------------------------------------------------------------

def finalize_rows(T, rows=None):
    """(partial rows per finalize program, programs R) for T partial rows: at least FINALIZE_ROWS
    rows each (a multiple of BLOCK_T), and at most about FINALIZE_CHUNKS programs, so the second
    level sums few rows too. From T alone: the same order of sums on every run and device."""
    rows = FINALIZE_ROWS if rows is None else rows
    rows = _cdiv(max(rows, _cdiv(T, FINALIZE_CHUNKS), 1), BLOCK_T) * BLOCK_T
    return rows, max(1, _cdiv(T, rows))


def finalize(partial, T, C, M, running_mean, running_var, training, momentum, eps, acc, device,
             shift=None, shift_stride=0, var_out=False, rows=None):
    """(mean, invstd, var or None) of C channels from partial (2, T, C) (training) or the running
    statistics (eval); running statistics updated in place in training when given; var_out: also
    the batch's unbiased variance (training). One launch: the T rows summed in parallel chunks of
    `rows` (finalize_rows), then the chunks. The sums are float64 whatever partial's dtype."""
    torch_acc, tl_acc = acc
    mean = torch.empty(C, dtype=torch_acc, device=device)
    invstd = torch.empty(C, dtype=torch_acc, device=device)
    var = torch.empty(C, dtype=torch_acc, device=device) if var_out else None
    if C == 0:
        return mean, invstd, var
    running = running_mean is not None
    dummy = mean
    block_c = min(_pow2(C), 128)
    cblocks = _cdiv(C, block_c)
    rows, chunks = finalize_rows(T, rows) if training else (1, 1)
    chunk = torch.empty((2, chunks, C), dtype=torch.float64, device=device) if chunks > 1 else dummy
    with _Launch(device):
        _bn_finalize_kernel[(chunks, cblocks)](
            partial if partial is not None else dummy, chunk, counters(device, cblocks),
            shift if shift is not None else dummy,
            running_mean if running else dummy, running_var if running else dummy, mean, invstd,
            var if var_out else dummy, T, C, M, shift_stride, rows, float(momentum), float(eps),
            TRAINING=training, SHIFT=shift is not None, RUNNING=running, VAR_OUT=var_out, ACC=tl_acc,
            BLOCK_T=BLOCK_T, BLOCK_C=block_c, num_warps=4)
    return mean, invstd, var


def running_update(running_mean, running_var, mean, var, momentum):
    """running_mean / running_var updated in place from a batch's mean and unbiased variance."""
    C = mean.numel()
    if C == 0:
        return
    block_c = min(_pow2(C), 128)
    with _Launch(mean.device):
        _bn_running_update_kernel[(_cdiv(C, block_c),)](
            running_mean, running_var, mean, var, C, float(momentum),
            ACC=acc_dtype(mean.dtype)[1], BLOCK_C=block_c, num_warps=4)


def normalize(x, weight, bias, mean, invstd, act, alpha, period=None):
    """out = act((x - mean) w invstd + b) of a walkable x, one launch (batch_norm_act's last pass).
    period: channel c takes weight / bias c % period (instance_norm_act's instances); None: c."""
    out = torch.empty_like(x)
    if out.numel() == 0:
        return out
    walk = Walk(x)
    w = weight if weight is not None else mean
    b = bias if bias is not None else mean
    with _Launch(x.device):
        _bn_act_kernel[(walk.T, walk.cblocks)](
            x, w, b, mean, invstd, out, *walk.args(), period or walk.C, float(alpha),
            ACT=act, HAS_W=weight is not None, HAS_B=bias is not None, PERIODIC=period is not None,
            ACC=acc_dtype(x.dtype)[1],
            ITERS=walk.iters, BLOCK_S=walk.block_s, BLOCK_C=walk.block_c,
            num_warps=_num_warps(walk.block_s * walk.block_c))
    return out


def batch_statistics(x, M, running_mean, running_var, momentum, eps, acc):
    """(mean, invstd) of each channel of a walkable x (M > 0 values per channel): the statistics
    pass and the finalize (running statistics updated when given). Shared with instance_norm_act,
    whose channels are the instances of the view (1, N * C, S)."""
    walk = Walk(x)
    partial = torch.empty((2, walk.T, walk.C), dtype=acc[0], device=x.device)
    with _Launch(x.device):
        _bn_stats_kernel[(walk.T, walk.cblocks)](
            x, partial, *walk.args(), SHIFT=True, ACC=acc[1], ITERS=walk.iters,
            BLOCK_S=walk.block_s, BLOCK_C=walk.block_c, num_warps=_num_warps(walk.block_s * walk.block_c))
    mean, invstd, _ = finalize(partial, walk.T, walk.C, M, running_mean, running_var, True, momentum, eps, acc,
                               x.device, shift=x, shift_stride=walk.strides[2])
    return mean, invstd


def _instance_operands(x, weight, bias, mean, invstd):
    """Conditional BatchNorm's operands over the instance view (1, N * C, S) of NCHW-contiguous x:
    (x view, weight, bias, mean, invstd) each with one value per instance k = n * C + c (a (C,)
    operand repeated over the samples; None stays None). Tiny device tensors, no synchronisation."""
    n, c = x.size(0), x.size(1)
    s = x.numel() // max(n * c, 1)

    def per_instance(t):
        if t is None:
            return None
        return t.reshape(-1) if t.dim() == 2 else t.repeat(n)

    return (x.view(1, n * c, s), per_instance(weight), per_instance(bias), mean.repeat(n), invstd.repeat(n))


def batch_norm_act(input, weight, bias, running_mean, running_var, training, momentum, eps, act, alpha):
    """ganfast::batch_norm_act on the Triton kernels -> (out, save_mean, save_invstd). (The conv
    block, whose epilogue already summed the statistics, calls finalize and normalize itself.)"""
    op = "ganfast::batch_norm_act"
    M = _args.check_batch_norm_act(op, input, weight, bias, running_mean, running_var, training, eps)
    act = _args.parse_act(act)
    _args.check_kernel_dtype(input.dtype, "ganfast_batch_norm_act")
    per_sample = _args.batch_norm_per_sample(weight, bias)
    x = input if walkable(input) and not (per_sample and not input.is_contiguous()) else input.contiguous()
    C = x.size(1)
    acc = acc_dtype(x.dtype)
    device = x.device
    if training and M == 0:  # nothing to normalise; running statistics unchanged (as torch)
        z = torch.zeros(C, dtype=acc[0], device=device)
        return torch.empty_like(x), z, z.clone()
    if training:
        mean, invstd = batch_statistics(x, M, running_mean, running_var, momentum, eps, acc)
    else:
        mean, invstd, _ = finalize(None, 0, C, M, running_mean, running_var, False, momentum, eps, acc, device)
    if per_sample:
        # the elementwise pass over the instance view, every operand per instance (n, c)
        xi, wi, bi, mi, ii = _instance_operands(x, weight, bias, mean, invstd)
        return normalize(xi, wi, bi, mi, ii, act, alpha).view(x.shape), mean, invstd
    return normalize(x, weight, bias, mean, invstd, act, alpha), mean, invstd


def backward_passes(g, x, weight, bias, save_mean, save_invstd, training, act, alpha, M, gdtype, period=None,
                    per_sample=None):
    """(grad_input, grad_weight, grad_bias) of a walkable x and g in x's layout and dtype (x not
    empty): the reduction (whose last programs write the per-channel weight / bias gradients, one per
    channel of x, in gdtype) and, training, the elementwise pass. period: as normalize's.
    per_sample: (N, C, weight (N, C) or None) where x is conditional BatchNorm's instance view
    (1, N * C, S) (every operand per instance; M values per channel c): the training terms p, q are
    then w-weighted sums over the samples of the per-instance sums, made between the two launches
    (tiny torch ops on the device, no host synchronisation)."""
    walk = Walk(x)
    C, device = walk.C, x.device
    acc = acc_dtype(x.dtype)
    grad_input = torch.empty_like(x)
    grad_weight = torch.empty(C, dtype=gdtype, device=device)
    grad_bias = torch.empty(C, dtype=gdtype, device=device)
    partial = torch.empty((2, walk.T, C), dtype=acc[0], device=device)
    terms = torch.empty((2, C), dtype=acc[0], device=device)
    counter = counters(device, walk.cblocks)  # one per channel block
    w = weight if weight is not None else save_mean
    b = bias if bias is not None else save_mean
    P = period or C
    nw = _num_warps(walk.block_s * walk.block_c)
    with _Launch(device):
        _bn_act_backward_reduce_kernel[(walk.T, walk.cblocks)](
            g, x, w, b, save_mean, save_invstd, partial, counter, grad_weight, grad_bias, terms, grad_input,
            walk.S, C, M, walk.per_outer, *walk.strides, P, float(alpha),
            ACT=act, TRAINING=bool(training), HAS_W=weight is not None, HAS_B=bias is not None,
            PERIODIC=period is not None, ACC=acc[1], ITERS=walk.iters, BLOCK_T=max(1, min(32, TILE // walk.block_c)),
            BLOCK_S=walk.block_s, BLOCK_C=walk.block_c, num_warps=nw)
    if training and per_sample is not None:
        n, c, wv = per_sample
        # grad_bias = sum_s dz, grad_weight = invstd sum_s dz (x - mean) per instance (acc dtype here)
        wv = torch.ones((n, c), dtype=acc[0], device=device) if wv is None else wv.to(acc[0]).reshape(n, c)
        inv = save_invstd[:c]
        m1 = (wv * grad_bias.view(n, c)).sum(0) / M      # mean(w dz)
        m2 = (wv * grad_weight.view(n, c)).sum(0) / M    # mean(w dz x_hat)
        terms = torch.stack([(inv * m1).repeat(n), (inv * inv * m2).repeat(n)])
    if training:
        with _Launch(device):
            _bn_act_backward_kernel[(walk.T, walk.cblocks)](
                g, x, w, b, save_mean, save_invstd, terms, grad_input, *walk.args(), P, float(alpha),
                ACT=act, HAS_W=weight is not None, HAS_B=bias is not None, PERIODIC=period is not None, ACC=acc[1],
                ITERS=walk.iters, BLOCK_S=walk.block_s, BLOCK_C=walk.block_c, PER_SAMPLE=per_sample is not None,
                num_warps=nw)
    return grad_input, grad_weight, grad_bias


def batch_norm_act_backward(grad_output, input, weight, bias, save_mean, save_invstd, training, act, alpha):
    """ganfast::batch_norm_act_backward on the Triton kernels -> (grad_input, grad_weight, grad_bias)."""
    op = "ganfast::batch_norm_act_backward"
    M = _args.check_batch_norm_act_backward(op, grad_output, input, weight, bias, save_mean, save_invstd)
    act = _args.parse_act(act)
    _args.check_kernel_dtype(input.dtype, "ganfast_batch_norm_act_backward")
    per_sample = _args.batch_norm_per_sample(weight, bias)
    x = input if walkable(input) and not (per_sample and not input.is_contiguous()) else input.contiguous()
    N, C = x.size(0), x.size(1)
    gdtype = weight.dtype if weight is not None else x.dtype
    shape = lambda t: tuple(t.shape) if per_sample and t is not None and t.dim() == 2 else (C,)  # noqa: E731
    if x.numel() == 0:
        return (torch.empty_like(x), torch.zeros(shape(weight), dtype=gdtype, device=x.device),
                torch.zeros(shape(bias), dtype=gdtype, device=x.device))
    g = _like(grad_output, x, x.dtype)
    if not per_sample:
        return backward_passes(g, x, weight, bias, save_mean, save_invstd, training, act, alpha, M, gdtype)
    # conditional BatchNorm: per-instance sums over the instance view, then (N, C) or summed to (C,)
    xi, wi, bi, mi, ii = _instance_operands(x, weight, bias, save_mean, save_invstd)
    dx, gw, gb = backward_passes(g.view(xi.shape), xi, wi, bi, mi, ii, training, act, alpha, M, ii.dtype,
                                 per_sample=(N, C, wi))

    def fold(grad, t):  # the operand's shape, its dtype
        grad = grad.view(N, C)
        return (grad if shape(t) != (C,) else grad.sum(0)).to(gdtype)

    return dx.view(x.shape), fold(gw, weight), fold(gb, bias)
