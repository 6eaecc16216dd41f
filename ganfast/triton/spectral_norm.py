"""Triton kernels of the spectral_norm family and their launchers (the twins of
csrc/cpu/spectral_norm.cpp and csrc/cuda/spectral_norm.cu; same argument order, same checks via
ganfast/_args.py, the math of csrc/gan_math.h's sn_* functions).

weight is read as (A, h, B): the matrix W (h, w = A * B) of torch's spectral norm, W[i, a * B + b] =
weight[a, i, b]. Kernels (float32 accumulation, float64 for float64; int64 offsets):

  _sn_mv_kernel       x = W v: program p takes ROWS rows, tiles [ROWS, BLOCK_B] along each of the A
                      runs of B contiguous values, v read from its buffer (the rounded, stored v).
  _sn_mtv_kernel      t = W^T u: program (a, column block) walks the h rows in tiles [ROWS, BLOCK_B],
                      coalesced along b, u read from its buffer.
  _sn_normalize_kernel  one program: max(||x||, eps), x / it written to the buffer (rounded to its
                      dtype, as torch's normalize(out=)) and to the cache; the last step keeps the
                      unrounded v in the cache and writes sigma = ||t||^2 / max(||t||, eps).
  _sn_eval_kernel     one program (eval): sigma = u . (W v), u and v copied to the cache.
  _sn_scale_kernel    out = weight / sigma, sigma read from the cache (no host sync).
  _sn_dot_kernel      backward: per-program partials of <G, W> (a fixed partition).
  _sn_grad_kernel     backward: every program adds the partials in index order (the same bits in each),
                      then grad = (G - <G, W> / sigma * u_i v_j) / sigma.
Training takes 4 launches per power step + 2 (sigma, the scale); eval 3; backward 2. No atomics: deterministic.
"""

import torch
import triton
import triton.language as tl

from .._args import (check_kernel_dtype, check_spectral_norm, check_spectral_norm_backward,
                     spectral_norm_compute_dtype)
from ._common import BLOCK, MAX_PARTIALS, _cdiv, _div, _Launch, acc_dtype, num_warps

ROWS = 16        # rows per tile of the mat-vecs
MAX_BLOCK_B = 128
NBLOCK = 1024    # lanes of the single-program normalisations
MV_WARPS = 8     # the mat-vecs' [ROWS, BLOCK_B] float32 accumulator in every dtype: 4 warps spill it (sm_80, half)


def _block_b(B):
    return min(max(triton.next_power_of_2(int(B)), 16), MAX_BLOCK_B)


@triton.jit
def _sn_mv_kernel(w_ptr, v_ptr, x_ptr, A, h, B, ACC: tl.constexpr, ROWS: tl.constexpr, BLOCK_B: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    r = pid * ROWS + tl.arange(0, ROWS).to(tl.int64)
    rmask = r < h
    acc = tl.zeros([ROWS, BLOCK_B], ACC)
    for a in range(0, A):
        base = (a * h + r) * B
        for b0 in range(0, B, BLOCK_B):
            b = b0 + tl.arange(0, BLOCK_B).to(tl.int64)
            bmask = b < B
            m = rmask[:, None] & bmask[None, :]
            w = tl.load(w_ptr + base[:, None] + b[None, :], mask=m, other=0.0).to(ACC)
            v = tl.load(v_ptr + a * B + b, mask=bmask, other=0.0).to(ACC)
            acc += w * v[None, :]
    tl.store(x_ptr + r, tl.sum(acc, axis=1), mask=rmask)


@triton.jit
def _sn_mtv_kernel(w_ptr, u_ptr, t_ptr, h, B, nb, ACC: tl.constexpr, ROWS: tl.constexpr, BLOCK_B: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    a = pid // nb
    b = (pid % nb) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    bmask = b < B
    acc = tl.zeros([ROWS, BLOCK_B], ACC)
    for i0 in range(0, h, ROWS):
        i = i0 + tl.arange(0, ROWS).to(tl.int64)
        imask = i < h
        m = imask[:, None] & bmask[None, :]
        w = tl.load(w_ptr + (a * h + i[:, None]) * B + b[None, :], mask=m, other=0.0).to(ACC)
        u = tl.load(u_ptr + i, mask=imask, other=0.0).to(ACC)
        acc += w * u[:, None]
    tl.store(t_ptr + a * B + b, tl.sum(acc, axis=0), mask=bmask)


@triton.jit
def _sn_normalize_kernel(x_ptr, buf_ptr, cache_ptr, n, eps: tl.float64, ACC: tl.constexpr, FINAL: tl.constexpr,
                         NBLOCK: tl.constexpr):
    ss = tl.zeros([NBLOCK], ACC)
    for k0 in range(0, n, NBLOCK):
        k = k0 + tl.arange(0, NBLOCK).to(tl.int64)
        x = tl.load(x_ptr + k, mask=k < n, other=0.0)
        ss += x * x
    tt = tl.sum(ss, axis=0)
    denom = tl.maximum(tl.sqrt(tt), tl.full([], eps, ACC))
    for k0 in range(0, n, NBLOCK):
        k = k0 + tl.arange(0, NBLOCK).to(tl.int64)
        km = k < n
        y = _div(tl.load(x_ptr + k, mask=km, other=0.0), denom)
        yr = y.to(buf_ptr.dtype.element_ty)
        tl.store(buf_ptr + k, yr, mask=km)
        if FINAL:
            tl.store(cache_ptr + k, y, mask=km)  # unrounded: sigma = u^T W v holds for the cached v
        else:
            tl.store(cache_ptr + k, yr.to(ACC), mask=km)


@triton.jit
def _sn_sigma_kernel(cache_ptr, t_ptr, w, eps: tl.float64, ACC: tl.constexpr, NBLOCK: tl.constexpr):
    """sigma = ||t||^2 / max(||t||, eps) into cache[0] (the same sum as _sn_normalize_kernel's)."""
    ss = tl.zeros([NBLOCK], ACC)
    for k0 in range(0, w, NBLOCK):
        k = k0 + tl.arange(0, NBLOCK).to(tl.int64)
        x = tl.load(t_ptr + k, mask=k < w, other=0.0)
        ss += x * x
    tt = tl.sum(ss, axis=0)
    denom = tl.maximum(tl.sqrt(tt), tl.full([], eps, ACC))
    tl.store(cache_ptr, _div(tt, denom))


@triton.jit
def _sn_eval_kernel(u_ptr, v_ptr, x_ptr, cache_ptr, h, w, ACC: tl.constexpr, NBLOCK: tl.constexpr):
    s = tl.zeros([NBLOCK], ACC)
    for k0 in range(0, h, NBLOCK):
        k = k0 + tl.arange(0, NBLOCK).to(tl.int64)
        km = k < h
        u = tl.load(u_ptr + k, mask=km, other=0.0).to(ACC)
        s += u * tl.load(x_ptr + k, mask=km, other=0.0)
        tl.store(cache_ptr + 1 + k, u, mask=km)
    for k0 in range(0, w, NBLOCK):
        k = k0 + tl.arange(0, NBLOCK).to(tl.int64)
        km = k < w
        tl.store(cache_ptr + 1 + h + k, tl.load(v_ptr + k, mask=km, other=0.0).to(ACC), mask=km)
    tl.store(cache_ptr, tl.sum(s, axis=0))


@triton.jit
def _sn_scale_kernel(w_ptr, cache_ptr, out_ptr, n, ACC: tl.constexpr, BLOCK: tl.constexpr):
    k = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    km = k < n
    sigma = tl.load(cache_ptr)
    w = tl.load(w_ptr + k, mask=km, other=0.0).to(ACC)
    tl.store(out_ptr + k, _div(w, sigma + tl.zeros([BLOCK], ACC)).to(out_ptr.dtype.element_ty), mask=km)


@triton.jit
def _sn_dot_kernel(g_ptr, w_ptr, partial_ptr, n, iters, ACC: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK], ACC)
    for it in range(0, iters):
        k = (pid * iters + it) * BLOCK + tl.arange(0, BLOCK)
        km = k < n
        acc += tl.load(g_ptr + k, mask=km, other=0.0).to(ACC) * tl.load(w_ptr + k, mask=km, other=0.0).to(ACC)
    tl.store(partial_ptr + pid, tl.sum(acc, axis=0))


@triton.jit
def _sn_grad_kernel(g_ptr, cache_ptr, partial_ptr, nparts, grad_ptr, n, h, B, ACC: tl.constexpr,
                    BLOCK: tl.constexpr, PBLOCK: tl.constexpr):
    p = tl.arange(0, PBLOCK)
    gw = tl.sum(tl.load(partial_ptr + p, mask=p < nparts, other=0.0), axis=0)  # nparts <= PBLOCK
    sigma = tl.load(cache_ptr)
    coef = _div(gw, sigma)
    k = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    km = k < n
    i = (k // B) % h
    j = (k // (h * B)) * B + k % B
    u = tl.load(cache_ptr + 1 + i, mask=km, other=0.0)
    v = tl.load(cache_ptr + 1 + h + j, mask=km, other=0.0)
    g = tl.load(g_ptr + k, mask=km, other=0.0).to(ACC)
    sig = sigma + tl.zeros([BLOCK], ACC)
    tl.store(grad_ptr + k, _div(g - coef * u * v, sig).to(grad_ptr.dtype.element_ty), mask=km)


def spectral_norm(weight, u, v, dim, n_power_iterations, eps, training):
    op = "ganfast::spectral_norm"
    s = check_spectral_norm(op, weight, u, v, dim, n_power_iterations, eps)
    check_kernel_dtype(weight.dtype, "ganfast_spectral_norm")
    W = weight.contiguous()
    acc, ACC = acc_dtype(weight.dtype)
    out = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
    cache = torch.empty((1 + s.h + s.w,), dtype=spectral_norm_compute_dtype(weight.dtype), device=weight.device)
    x = torch.empty((s.h,), dtype=acc, device=weight.device)
    bb = _block_b(s.B)
    nw = num_warps(weight.dtype)
    with _Launch(weight.device):
        if training:
            t = torch.empty((s.w,), dtype=acc, device=weight.device)
            nb = _cdiv(s.B, bb)
            for it in range(n_power_iterations):
                _sn_mv_kernel[(_cdiv(s.h, ROWS),)](W, v, x, s.A, s.h, s.B, ACC=ACC, ROWS=ROWS, BLOCK_B=bb,
                                                    num_warps=MV_WARPS)
                _sn_normalize_kernel[(1,)](x, u, cache[1:], s.h, eps, ACC=ACC, FINAL=False, NBLOCK=NBLOCK,
                                           num_warps=8)
                _sn_mtv_kernel[(s.A * nb,)](W, u, t, s.h, s.B, nb, ACC=ACC, ROWS=ROWS, BLOCK_B=bb,
                                            num_warps=MV_WARPS)
                final = it == n_power_iterations - 1
                if final:
                    _sn_sigma_kernel[(1,)](cache, t, s.w, eps, ACC=ACC, NBLOCK=NBLOCK, num_warps=8)
                _sn_normalize_kernel[(1,)](t, v, cache[1 + s.h:], s.w, eps, ACC=ACC, FINAL=final, NBLOCK=NBLOCK,
                                           num_warps=8)
        else:
            _sn_mv_kernel[(_cdiv(s.h, ROWS),)](W, v, x, s.A, s.h, s.B, ACC=ACC, ROWS=ROWS, BLOCK_B=bb,
                                               num_warps=MV_WARPS)
            _sn_eval_kernel[(1,)](u, v, x, cache, s.h, s.w, ACC=ACC, NBLOCK=NBLOCK, num_warps=8)
        n = W.numel()
        _sn_scale_kernel[(_cdiv(n, BLOCK),)](W, cache, out, n, ACC=ACC, BLOCK=BLOCK, num_warps=nw)
    return out, cache


def spectral_norm_backward(grad_output, weight, cache, dim):
    op = "ganfast::spectral_norm_backward"
    s = check_spectral_norm_backward(op, grad_output, weight, cache, dim)
    check_kernel_dtype(weight.dtype, "ganfast_spectral_norm_backward")
    W, G, C = weight.contiguous(), grad_output.contiguous(), cache.contiguous()
    acc, ACC = acc_dtype(weight.dtype)
    n = W.numel()
    nblocks = _cdiv(n, BLOCK)
    iters = max(1, _cdiv(nblocks, MAX_PARTIALS))
    parts = _cdiv(nblocks, iters)
    partial = torch.empty((parts,), dtype=acc, device=weight.device)
    grad = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
    nw = num_warps(weight.dtype)
    with _Launch(weight.device):
        _sn_dot_kernel[(parts,)](G, W, partial, n, iters, ACC=ACC, BLOCK=BLOCK, num_warps=nw)
        _sn_grad_kernel[(nblocks,)](G, C, partial, parts, grad, n, s.h, s.B, ACC=ACC, BLOCK=BLOCK,
                                    PBLOCK=triton.next_power_of_2(parts), num_warps=nw)
    return grad
