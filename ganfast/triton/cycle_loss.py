"""Triton kernels of the cycle_loss family and their launchers.

The launchers mirror the C++ ops of csrc/ganfast.cpp (same names, same argument order) and the CPU
twin csrc/cpu/cycle_loss.cpp (same checks via ganfast/_args.py, same pair layouts via
_args.make_cycle_pair, same empty-pair NaN). The math is csrc/gan_math.h's l1_term / l1_sign.

The list in one launch: the pairs' addresses and int64 sizes go to the kernel in a small int64
table (the pointer-array pattern of Triton's grouped GEMM: an address loaded from memory and cast
to a pointer), uploaded from pinned memory with a non-blocking copy on CUDA (no host
synchronisation). Each pair owns a run of consecutive programs; a program finds its pair by
comparing its id with the runs' first programs (a loop over the pairs: CycleGAN has 2 to 4).

  _cycle_forward_kernel   program p sums |r - o| over `iters` consecutive BLOCKs of its pair
                          (lane-wise in float32 / float64, then one tree sum), divides by the
                          pair's numel (0 / 0 = NaN for an empty pair, which gets one program) and
                          stores the partial; the program holding the last ticket (_common's cached
                          counter) adds the partials in index order and writes weight * total. The
                          partition depends only on the sizes: deterministic on every run and GPU.
  _cycle_backward_kernel  grad_r = s * sign(r - o) and / or grad_o = -grad_r over one BLOCK per
                          program, s = grad_output * (weight / numel) read on the device.

Where every address of a launch is 16-byte aligned (ALIGNED) the loaded pointers are declared so
(tl.multiple_of), which lets the GPU compiler use 16-byte accesses: Triton cannot know the
alignment of a pointer it loads from memory.
"""

import torch
import triton
import triton.language as tl

from .._args import (check_cycle_loss, check_cycle_loss_grad_output, check_kernel_dtype, make_cycle_pair)
from ._common import BLOCK, MAX_PARTIALS, PBLOCK, _cdiv, _Launch, _mean, _scratch, _sum_partials, acc_dtype, num_warps
from ._common import _take_ticket

# table row of one pair: r, o, grad_r, grad_o addresses, numel, first program
_ROW = 6


@triton.jit
def _pair_of_program(table_ptr, count, pid):
    """The index of the pair whose run of programs holds pid (the last with first <= pid)."""
    pair = pid * 0
    for p in range(1, count):
        first = tl.load(table_ptr + p * 6 + 5)
        pair = tl.where(pid >= first, p, pair)
    return pair


@triton.jit
def _pointer(table_ptr, slot, ELEM: tl.constexpr, ALIGNED: tl.constexpr):
    ptr = tl.load(table_ptr + slot).to(tl.pointer_type(ELEM))
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@triton.jit
def _cycle_forward_kernel(
    table_ptr, out_ptr, partial_ptr, counter_ptr, count, iters, weight: tl.float64,
    ALIGNED: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, PBLOCK: tl.constexpr,
):
    """weight * sum over pairs of mean |r - o|, every pair in this one launch."""
    pid = tl.program_id(0)
    ELEM: tl.constexpr = out_ptr.dtype.element_ty
    row = table_ptr + _pair_of_program(table_ptr, count, pid).to(tl.int64) * 6
    r_ptr = _pointer(row, 0, ELEM, ALIGNED)
    o_ptr = _pointer(row, 1, ELEM, ALIGNED)
    n = tl.load(row + 4)
    local = pid.to(tl.int64) - tl.load(row + 5)
    acc = tl.zeros([BLOCK], ACC)
    for i in range(0, iters):
        offs = (local * iters + i) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(ACC)
        o = tl.load(o_ptr + offs, mask=mask, other=0.0).to(ACC)
        acc += tl.abs(r - o)  # masked lanes: |0 - 0| = 0; NaN propagates
    s = _mean(tl.sum(acc, axis=0), n, ACC)  # this program's share of its pair's mean
    G = tl.num_programs(0)
    if G == 1:
        tl.store(out_ptr, (s * weight).to(ELEM))
    else:
        if _take_ticket(partial_ptr, counter_ptr, pid, s, s, False):
            total = _sum_partials(partial_ptr, G, ACC, PBLOCK)
            tl.store(out_ptr, (total * weight).to(ELEM))


@triton.jit
def _cycle_backward_kernel(
    table_ptr, g_ptr, count, weight: tl.float64,
    WRITE_R: tl.constexpr, WRITE_O: tl.constexpr, ALIGNED: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """grad_r = grad_output * weight / numel * sign(r - o) (0 at r == o and where r - o is NaN, as
    torch's l1_loss), grad_o = -grad_r; one BLOCK of one pair per program."""
    pid = tl.program_id(0)
    ELEM: tl.constexpr = g_ptr.dtype.element_ty
    row = table_ptr + _pair_of_program(table_ptr, count, pid).to(tl.int64) * 6
    r_ptr = _pointer(row, 0, ELEM, ALIGNED)
    o_ptr = _pointer(row, 1, ELEM, ALIGNED)
    n = tl.load(row + 4)
    local = pid.to(tl.int64) - tl.load(row + 5)
    offs = local * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    s = tl.load(g_ptr).to(ACC) * (weight / n.to(tl.float64)).to(ACC)
    r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(ACC)
    o = tl.load(o_ptr + offs, mask=mask, other=0.0).to(ACC)
    d = r - o
    sign = tl.where(d > 0.0, 1.0, tl.where(d < 0.0, -1.0, 0.0)).to(ACC)
    dr = s * sign
    if WRITE_R:
        tl.store(_pointer(row, 2, ELEM, ALIGNED) + offs, dr.to(ELEM), mask=mask)
    if WRITE_O:
        tl.store(_pointer(row, 3, ELEM, ALIGNED) + offs, (-dr).to(ELEM), mask=mask)


# ---- launch helpers ----------------------------------------------------------------------------

def _pairs(op, reconstructed, original, weight):
    check_cycle_loss(op, reconstructed, original, weight)
    check_kernel_dtype(reconstructed[0].dtype, "ganfast_cycle_loss")
    return [make_cycle_pair(r, o) for r, o in zip(reconstructed, original)]


def _aligned(tensors):
    return all(t.numel() == 0 or t.data_ptr() % 16 == 0 for t in tensors)


def _table(rows, device):
    """The int64 table on `device`: from pinned memory, non-blocking, on CUDA."""
    flat = [v for row in rows for v in row]
    table = torch.tensor(flat, dtype=torch.int64)
    if device.type == "cuda":
        return table.pin_memory().to(device, non_blocking=True)
    return table


def _addr(t):
    return t.data_ptr() if t is not None and t.numel() > 0 else 0


# ---- launchers (the ops of csrc/ganfast.cpp) ---------------------------------------------------

def cycle_loss(reconstructed, original, weight):
    op = "ganfast::cycle_loss"
    pairs = _pairs(op, reconstructed, original, weight)
    x0 = pairs[0][0]
    acc, tl_acc = acc_dtype(x0.dtype)
    out = torch.empty((), dtype=x0.dtype, device=x0.device)
    sizes = [r.numel() for r, _ in pairs]
    # BLOCKs per program from the total, as the losses' _partition: at most about MAX_PARTIALS programs
    iters = max(1, _cdiv(sum(_cdiv(n, BLOCK) for n in sizes), MAX_PARTIALS))
    rows, first = [], 0
    for (r, o), n in zip(pairs, sizes):
        rows.append((_addr(r), _addr(o), 0, 0, n, first))
        first += max(1, _cdiv(_cdiv(n, BLOCK), iters))  # an empty pair: one program (its NaN mean)
    programs = first
    partial, counter = _scratch(programs, 1, acc, x0.device)
    table = _table(rows, x0.device)
    aligned = _aligned([t for pair in pairs for t in pair])
    with _Launch(x0.device):
        _cycle_forward_kernel[(programs,)](
            table, out, partial, counter, len(pairs), iters, float(weight),
            ALIGNED=aligned, ACC=tl_acc, BLOCK=BLOCK, PBLOCK=PBLOCK, num_warps=num_warps(x0.dtype),
        )
    return out


def cycle_loss_backward(grad_output, reconstructed, original, weight, grad_reconstructed, grad_original):
    op = "ganfast::cycle_loss_backward"
    pairs = _pairs(op, reconstructed, original, weight)
    x0 = pairs[0][0]
    check_cycle_loss_grad_output(op, grad_output, reconstructed[0])
    grad_r = [torch.empty_like(r) for r, _ in pairs] if grad_reconstructed else []
    grad_o = [torch.empty_like(o) for _, o in pairs] if grad_original else []
    if not (grad_reconstructed or grad_original):
        return grad_r, grad_o
    rows, first = [], 0
    for i, (r, o) in enumerate(pairs):
        n = r.numel()
        gr = grad_r[i] if grad_reconstructed else None
        go = grad_o[i] if grad_original else None
        rows.append((_addr(r), _addr(o), _addr(gr), _addr(go), n, first))
        first += _cdiv(n, BLOCK)  # an empty pair: no program
    if first == 0:
        return grad_r, grad_o
    grad = grad_output.reshape(()).to(x0.dtype)
    _, tl_acc = acc_dtype(x0.dtype)
    table = _table(rows, x0.device)
    aligned = _aligned([t for pair in pairs for t in pair] + grad_r + grad_o)
    with _Launch(x0.device):
        _cycle_backward_kernel[(first,)](
            table, grad, len(pairs), float(weight),
            WRITE_R=bool(grad_reconstructed), WRITE_O=bool(grad_original), ALIGNED=aligned, ACC=tl_acc, BLOCK=BLOCK,
            num_warps=num_warps(x0.dtype),
        )
    return grad_r, grad_o
