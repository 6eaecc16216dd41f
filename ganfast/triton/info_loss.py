"""Triton kernels of the info_loss family (InfoGAN's mutual-information loss) and their launchers.

The launchers mirror the C++ ops (csrc/ganfast.cpp: info_loss, info_loss_backward; same argument
order, same checks via ganfast/_args.py's check_info_loss, same empty-batch result). The math is
csrc/gan_math.h's: e^(x - m) by _exp_nonpos (every exponent <= 0), e^(-logstd) as exp_neg (e^-|s|,
inverted where s < 0), log of the row's sum of exponentials by tl.log (libdevice logf on the GPU).

Kernels (one launch each):

  _info_forward_kernel   program p takes iters_r tiles of ROWS categorical rows (each row's K
                         logits in chunks of BLOCK_K: the max, then the sum of exponentials, so
                         log-softmax stays in registers) and iters_c blocks of BLOCK continuous
                         terms; cat_weight * its row sum + cont_weight * its term sum is its
                         partial. One program writes the result directly; several publish their
                         partials, take a ticket (_common's counters), and the last one adds the
                         partials in index order and divides by B. The partition depends only on
                         the sizes: the same result on every run and every GPU.
  _info_backward_kernel  program p writes the gradients of row tile p (softmax - one-hot, scaled)
                         and of continuous block p (grad_cont_codes = -grad_cont_mean in the same
                         pass); the upstream gradient is read from its pointer: no host sync.

Class indices outside [0, K): on CPU tensors (the interpreter) the launcher reads them (CPU memory,
no synchronisation) and raises the C++ op's IndexError; on the GPU the kernels carry a
tl.device_assert, compiled in by launching with debug=True (a device-side assert, as torch's own
cross_entropy on CUDA and ganfast's CUDA kernel).
"""

import math

import torch
import triton
import triton.language as tl

from .._args import check_info_grad_output, check_info_loss, check_kernel_dtype, info_codes_error
from ._common import (BLOCK, MAX_PARTIALS, PBLOCK, _cdiv, _div, _exp_nonpos, _Launch, _mean, _scratch,
                      _sum_partials, _take_ticket, acc_dtype, num_warps)

TILE = 2048          # logits per categorical tile: ROWS x BLOCK_K
MAX_BLOCK_K = 128    # logits of one row per chunk (tiles of at least 16 rows); larger K loops
MIN_BLOCK_K = 16
_CODES_MSG = tl.constexpr("ganfast::info_loss: cat_codes must be class indices in [0, K)")


def tile_shape(K):
    """(ROWS, BLOCK_K) of the categorical tiles for K classes: BLOCK_K the power of two >= K
    within [MIN_BLOCK_K, MAX_BLOCK_K], ROWS = TILE / BLOCK_K."""
    block_k = min(max(triton.next_power_of_2(max(int(K), 1)), MIN_BLOCK_K), MAX_BLOCK_K)
    return TILE // block_k, block_k


@triton.jit
def _exp_neg(s):
    """e^(-s) for any s (gan_math.h exp_neg)."""
    e = _exp_nonpos(-tl.abs(s))
    return tl.where(s >= 0.0, e, _div(tl.full(s.shape, 1.0, s.dtype), e))


@triton.jit
def _row_tile(x_ptr, c_ptr, r, B, K, ACC: tl.constexpr, BLOCK_K: tl.constexpr):
    """Rows r (int64 [ROWS]) of the logits: (max m, sum of e^(x - m), class index, whether the
    row exists)."""
    rmask = r < B
    row = r[:, None] * K
    m = tl.full(r.shape, float("-inf"), ACC)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        msk = rmask[:, None] & (k[None, :] < K)
        x = tl.load(x_ptr + row + k[None, :], mask=msk, other=float("-inf")).to(ACC)
        m = tl.maximum(m, tl.max(x, axis=1))
    s = tl.zeros(r.shape, ACC)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        msk = rmask[:, None] & (k[None, :] < K)
        x = tl.load(x_ptr + row + k[None, :], mask=msk, other=float("-inf")).to(ACC)
        s += tl.sum(tl.where(msk, _exp_nonpos(x - m[:, None]), 0.0), axis=1)
    c = tl.load(c_ptr + r, mask=rmask, other=0)
    ok = (c >= 0) & (c < K)
    tl.device_assert(ok | (rmask == 0), _CODES_MSG)
    return m, s, c, rmask & ok


@triton.jit
def _gauss(mu_ptr, cc_ptr, ls_ptr, offs, msk, HAS_LOGSTD: tl.constexpr, ACC: tl.constexpr):
    """The Gaussian terms (gan_math.h info_gauss) at offs; 0 where masked."""
    mu = tl.load(mu_ptr + offs, mask=msk, other=0.0).to(ACC)
    cc = tl.load(cc_ptr + offs, mask=msk, other=0.0).to(ACC)
    if HAS_LOGSTD:
        ls = tl.load(ls_ptr + offs, mask=msk, other=0.0).to(ACC)
        z = (cc - mu) * _exp_neg(ls)
        t = ls + 0.5 * z * z
    else:
        d = cc - mu
        t = 0.5 * d * d
    return tl.where(msk, t, 0.0)


@triton.jit
def _info_forward_kernel(
    x_ptr, c_ptr, mu_ptr, cc_ptr, ls_ptr, out_ptr, partial_ptr, counter_ptr,
    B, K, n, iters_r, iters_c, cat_weight: tl.float64, cont_weight: tl.float64,
    HAS_CAT: tl.constexpr, HAS_CONT: tl.constexpr, HAS_LOGSTD: tl.constexpr, ACC: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK: tl.constexpr, PBLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    total = tl.zeros([], ACC)
    if HAS_CAT:
        acc = tl.zeros([ROWS], ACC)
        for i in range(0, iters_r):
            r = (pid.to(tl.int64) * iters_r + i) * ROWS + tl.arange(0, ROWS)
            m, s, c, ok = _row_tile(x_ptr, c_ptr, r, B, K, ACC, BLOCK_K)
            xc = tl.load(x_ptr + r * K + c, mask=ok, other=float("nan")).to(ACC)
            acc += tl.where(r < B, m + tl.log(s) - xc, 0.0)
        total += tl.full([], cat_weight, ACC) * tl.sum(acc, axis=0)
    if HAS_CONT:
        acc2 = tl.zeros([BLOCK], ACC)
        for i in range(0, iters_c):
            offs = (pid.to(tl.int64) * iters_c + i) * BLOCK + tl.arange(0, BLOCK)
            acc2 += _gauss(mu_ptr, cc_ptr, ls_ptr, offs, offs < n, HAS_LOGSTD, ACC)
        total += tl.full([], cont_weight, ACC) * tl.sum(acc2, axis=0)
    G = tl.num_programs(0)
    if G == 1:
        tl.store(out_ptr, _mean(total, B, ACC).to(out_ptr.dtype.element_ty))
    else:
        if _take_ticket(partial_ptr, counter_ptr, pid, total, total, False):
            s_all = _sum_partials(partial_ptr, G, ACC, PBLOCK)
            tl.store(out_ptr, _mean(s_all, B, ACC).to(out_ptr.dtype.element_ty))


@triton.jit
def _info_backward_kernel(
    g_ptr, x_ptr, c_ptr, mu_ptr, cc_ptr, ls_ptr, gx_ptr, gmu_ptr, gcc_ptr, gls_ptr,
    B, K, n, cat_scale: tl.float64, cont_scale: tl.float64,
    HAS_CAT: tl.constexpr, HAS_CONT: tl.constexpr, HAS_LOGSTD: tl.constexpr, ACC: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK: tl.constexpr,
):
    """cat_scale = cat_weight / B, cont_scale = cont_weight / B (host, in double)."""
    pid = tl.program_id(0)
    g = tl.load(g_ptr).to(ACC).to(tl.float64)
    if HAS_CAT:
        scale = (g * cat_scale).to(ACC)
        r = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
        m, s, c, ok = _row_tile(x_ptr, c_ptr, r, B, K, ACC, BLOCK_K)
        rs = _div(tl.full(s.shape, 1.0, ACC) * scale, s)
        rmask = r < B
        row = r[:, None] * K
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            msk = rmask[:, None] & (k[None, :] < K)
            x = tl.load(x_ptr + row + k[None, :], mask=msk, other=float("-inf")).to(ACC)
            p = rs[:, None] * _exp_nonpos(x - m[:, None])
            hit = (k[None, :] == c[:, None]) & ok[:, None]
            d = tl.where(hit, p - scale, p)
            tl.store(gx_ptr + row + k[None, :], d.to(gx_ptr.dtype.element_ty), mask=msk)
    if HAS_CONT:
        scale2 = (g * cont_scale).to(ACC)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        msk = offs < n
        mu = tl.load(mu_ptr + offs, mask=msk, other=0.0).to(ACC)
        cc = tl.load(cc_ptr + offs, mask=msk, other=0.0).to(ACC)
        if HAS_LOGSTD:
            ls = tl.load(ls_ptr + offs, mask=msk, other=0.0).to(ACC)
            inv = _exp_neg(ls)
            z = (cc - mu) * inv
            dmu = -z * inv
            tl.store(gls_ptr + offs, (scale2 * (1.0 - z * z)).to(gls_ptr.dtype.element_ty), mask=msk)
        else:
            dmu = mu - cc
        gm = scale2 * dmu
        tl.store(gmu_ptr + offs, gm.to(gmu_ptr.dtype.element_ty), mask=msk)
        tl.store(gcc_ptr + offs, (-gm).to(gcc_ptr.dtype.element_ty), mask=msk)


# ---- launchers (the ops of csrc/ganfast.cpp) ---------------------------------------------------

def _pointers(o):
    """The five operand pointers (a present tensor standing in for an absent one: never read)."""
    like = o.like
    return [like if t is None else t for t in (o.cat_logits, o.cat_codes, o.cont_mean, o.cont_codes, o.cont_logstd)]


def _check_codes(op, o):
    # CPU memory: reading it is no device synchronisation. On the GPU: the kernels' device_assert.
    if o.has_cat and o.like.device.type == "cpu":
        error = info_codes_error(op, o.cat_codes, o.K)
        if error is not None:
            raise error


def info_loss(cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd, cat_weight, cont_weight):
    op = "ganfast::info_loss"
    o = check_info_loss(op, cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd, cat_weight, cont_weight)
    check_kernel_dtype(o.like.dtype, "ganfast_info_loss")
    _check_codes(op, o)
    if o.B == 0:  # the mean over no rows
        return torch.full((), math.nan, dtype=o.like.dtype, device=o.like.device)
    acc, tl_acc = acc_dtype(o.like.dtype)
    rows, block_k = tile_shape(o.K)
    n = o.B * o.J
    tiles_r = _cdiv(o.B, rows) if o.has_cat else 0
    tiles_c = _cdiv(n, BLOCK) if o.has_cont else 0
    programs = max(1, min(max(tiles_r, tiles_c), MAX_PARTIALS))
    out = torch.empty((), dtype=o.like.dtype, device=o.like.device)
    partial, counter = _scratch(programs, 1, acc, o.like.device)
    with _Launch(o.like.device):
        _info_forward_kernel[(programs,)](
            *_pointers(o), out, partial, counter,
            o.B, o.K, n, _cdiv(tiles_r, programs), _cdiv(tiles_c, programs), float(cat_weight), float(cont_weight),
            HAS_CAT=o.has_cat, HAS_CONT=o.has_cont, HAS_LOGSTD=o.has_logstd, ACC=tl_acc,
            ROWS=rows, BLOCK_K=block_k, BLOCK=BLOCK, PBLOCK=PBLOCK,
            num_warps=num_warps(o.like.dtype), debug=o.has_cat,
        )
    return out


def _grad_like(t, like):
    return torch.empty((0,), dtype=like.dtype, device=like.device) if t is None else torch.empty_like(
        t, memory_format=torch.contiguous_format)


def info_loss_backward(grad_output, cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd, cat_weight,
                       cont_weight):
    op = "ganfast::info_loss_backward"
    o = check_info_loss(op, cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd, cat_weight, cont_weight)
    check_info_grad_output(op, grad_output, o)
    check_kernel_dtype(o.like.dtype, "ganfast_info_loss_backward")
    _check_codes(op, o)
    grads = [_grad_like(t, o.like) for t in (o.cat_logits, o.cont_mean, o.cont_codes, o.cont_logstd)]
    if o.B == 0:
        return tuple(grads)
    _, tl_acc = acc_dtype(o.like.dtype)
    rows, block_k = tile_shape(o.K)
    n = o.B * o.J
    programs = max(_cdiv(o.B, rows) if o.has_cat else 0, _cdiv(n, BLOCK) if o.has_cont else 0, 1)
    grad = grad_output.reshape(()).to(o.like.dtype)
    ptrs = [o.like if g.numel() == 0 else g for g in grads]
    with _Launch(o.like.device):
        _info_backward_kernel[(programs,)](
            grad, *_pointers(o), *ptrs,
            o.B, o.K, n, float(cat_weight) / o.B, float(cont_weight) / o.B,
            HAS_CAT=o.has_cat, HAS_CONT=o.has_cont, HAS_LOGSTD=o.has_logstd, ACC=tl_acc,
            ROWS=rows, BLOCK_K=block_k, BLOCK=BLOCK,
            num_warps=num_warps(o.like.dtype), debug=o.has_cat,
        )
    return tuple(grads)
