"""Triton kernel of the orthogonal_regularization family and its launchers.

The launchers mirror the C++ ops of csrc/ganfast.cpp (same names, same argument order, same cache
layout: ganfast/_args.py's ortho_layout, the twin of ganfast_common.h's) and their CPU twin
csrc/cpu/orthogonal_regularization.cpp. The Grams are GEMMs and go to torch.mm (cuBLAS on a GPU);
the backward is ATen only, as in C++ (one scale over every weight's cache, one GEMM per weight).
This file's own kernel is the fused reduction over every weight's Gram:

  _ortho_forward_kernel   the segments (offset, n, period, sign, first program) in a small int64 table
                          (uploaded from pinned memory, non-blocking, on CUDA); each segment owns a
                          run of programs, found by comparing the program id with the runs' first
                          programs. A program adds g^2 over `iters` BLOCKs of its segment, skipping
                          and zeroing the diagonal (e % period == 0; period = m + 1), stores
                          sign * sum as a float64 partial; the program holding the last ticket adds
                          the partials in index order and writes beta * total. The partition depends
                          only on the sizes: deterministic on every run and GPU.
"""

import torch
import triton
import triton.language as tl

from .._args import (check_kernel_dtype, check_orthogonal_regularization, check_orthogonal_regularization_backward,
                     ortho_acc_dtype, ortho_layout, ortho_segments)
from ._common import BLOCK, MAX_PARTIALS, PBLOCK, _cdiv, _Launch, _scratch, _sum_partials, _take_ticket, num_warps

_ROW = 5  # offset, n, period, sign, first program


@triton.jit
def _segment_of_program(table_ptr, count, pid):
    """The index of the segment whose run of programs holds pid (the last with first <= pid)."""
    seg = pid * 0
    for s in range(1, count):
        first = tl.load(table_ptr + s * 5 + 4)
        seg = tl.where(pid >= first, s, seg)
    return seg


@triton.jit
def _to_elem(x, ELEM: tl.constexpr):
    """float64 -> the output dtype; half types through float32 (a direct float64 -> bfloat16 cast
    comes out wrong under the interpreter)."""
    if ELEM == tl.float64:
        return x
    return x.to(tl.float32).to(ELEM)


@triton.jit
def _ortho_forward_kernel(
    table_ptr, cache_ptr, out_ptr, partial_ptr, counter_ptr, count, iters, beta: tl.float64,
    BLOCK: tl.constexpr, PBLOCK: tl.constexpr,
):
    """beta * sum over segments of sign * sum g^2 off the diagonal; zeroes the diagonals."""
    pid = tl.program_id(0)
    ELEM: tl.constexpr = out_ptr.dtype.element_ty
    ACC: tl.constexpr = cache_ptr.dtype.element_ty
    row = table_ptr + _segment_of_program(table_ptr, count, pid).to(tl.int64) * 5
    base = cache_ptr + tl.load(row)
    n = tl.load(row + 1)
    period = tl.load(row + 2)
    sign = tl.load(row + 3)
    local = pid.to(tl.int64) - tl.load(row + 4)
    safe_period = tl.maximum(period, 1)
    acc = tl.zeros([BLOCK], ACC)
    for i in range(0, iters):
        offs = (local * iters + i) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        g = tl.load(base + offs, mask=mask, other=0.0)
        diagonal = (period > 0) & (offs % safe_period == 0)
        acc += tl.where(diagonal, 0.0, g * g)  # masked lanes load 0
        tl.store(base + offs, tl.zeros([BLOCK], ACC), mask=mask & diagonal)
    s = tl.sum(acc, axis=0).to(tl.float64) * sign.to(tl.float64)
    G = tl.num_programs(0)
    if G == 1:
        tl.store(out_ptr, _to_elem(s * beta, ELEM))
    else:
        if _take_ticket(partial_ptr, counter_ptr, pid, s, s, False):
            total = _sum_partials(partial_ptr, G, tl.float64, PBLOCK)
            tl.store(out_ptr, _to_elem(total * beta, ELEM))


def _table(rows, device):
    """The int64 table on `device`: from pinned memory, non-blocking, on CUDA."""
    table = torch.tensor([v for row in rows for v in row], dtype=torch.int64)
    if device.type == "cuda":
        return table.pin_memory().to(device, non_blocking=True)
    return table


def _matrix(w, b, acc):
    return w.reshape(b.m, b.k).to(acc)


def _grams(weights, blocks, total):
    """The cache before the kernel (ganfast_common.h's ortho_grams): one GEMM per weight."""
    acc = ortho_acc_dtype(weights[0].dtype)
    cache = torch.empty(total, dtype=acc, device=weights[0].device)
    for w, b in zip(weights, blocks):
        if b.m == 0:
            continue
        W = _matrix(w, b, acc)
        if b.tall:
            if b.k > 0:
                torch.mm(W.t(), W, out=cache.narrow(0, b.offset, b.k * b.k).view(b.k, b.k))
            torch.sum(W.square(), 1, out=cache.narrow(0, b.offset + b.k * b.k, b.m))
        else:
            torch.mm(W, W.t(), out=cache.narrow(0, b.offset, b.m * b.m).view(b.m, b.m))
    return cache


# ---- launchers (the ops of csrc/ganfast.cpp) ---------------------------------------------------

def orthogonal_regularization(weights, beta):
    op = "ganfast::orthogonal_regularization"
    weights = list(weights)
    check_orthogonal_regularization(op, weights, beta)
    check_kernel_dtype(weights[0].dtype, "ganfast_orthogonal_regularization")
    blocks, total = ortho_layout(weights)
    cache = _grams(weights, blocks, total)
    segments = ortho_segments(blocks)
    w0 = weights[0]
    out = torch.empty((), dtype=w0.dtype, device=w0.device)
    if not segments:
        return out.zero_(), cache
    iters = max(1, _cdiv(sum(_cdiv(n, BLOCK) for _, n, _, _ in segments), MAX_PARTIALS))
    rows, first = [], 0
    for offset, n, period, sign in segments:
        rows.append((offset, n, period, sign, first))
        first += max(1, _cdiv(_cdiv(n, BLOCK), iters))
    programs = first
    partial, counter = _scratch(programs, 1, torch.float64, w0.device)
    table = _table(rows, w0.device)
    with _Launch(w0.device):
        _ortho_forward_kernel[(programs,)](
            table, cache, out, partial, counter, len(segments), iters, float(beta),
            BLOCK=BLOCK, PBLOCK=PBLOCK, num_warps=num_warps(w0.dtype),
        )
    return out, cache


def orthogonal_regularization_backward(grad_output, weights, cache, beta):
    """ganfast_common.h's ortho_backward: M = cache * 4 beta grad_output (one launch over every
    weight), then one GEMM per weight (tall: W (c W^T W) - (c d) * W)."""
    op = "ganfast::orthogonal_regularization_backward"
    weights = list(weights)
    check_orthogonal_regularization(op, weights, beta)
    blocks, total = ortho_layout(weights)
    check_orthogonal_regularization_backward(op, grad_output, weights, cache, total)
    acc = cache.dtype
    M = cache.contiguous() * (grad_output.reshape(()).to(acc) * (4.0 * float(beta)))
    grads = []
    for w, b in zip(weights, blocks):
        W = _matrix(w, b, acc)
        if b.tall:
            S = M.narrow(0, b.offset, b.k * b.k).view(b.k, b.k)
            d = M.narrow(0, b.offset + b.k * b.k, b.m).view(b.m, 1)
            g = torch.addmm(W * d, W, S, beta=-1, alpha=1)
        else:
            g = torch.mm(M.narrow(0, b.offset, b.m * b.m).view(b.m, b.m), W)
        grads.append(g.to(w.dtype).view(w.shape))
    return grads
