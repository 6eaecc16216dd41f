"""Triton kernels of the penalty family and their launchers.

The launchers mirror the C++ ops of csrc/ganfast.cpp (same names, same argument order, the checks
of ganfast/_args.py, the twin of csrc/ganfast_common.h); the math is csrc/gan_math.h's
(penalty_value, penalty_scale, penalty_scale_dn_over_n, interpolate), computed in float32 for
float32/float16/bfloat16 tensors and in float64 for float64 ones.

Layout: a tensor whose samples are contiguous blocks of memory (samples_are_blocks: NCHW
contiguous, channels_last, ...) is read as it lies, sample b being memory positions
[b L, (b + 1) L) with L = numel / B, and the outputs are made with empty_like, so they keep that
layout; anything else is made contiguous first. The other operands of an op (fake, grad_grad) are
brought to the first one's layout when theirs differs.

Kernels (one launch per op; the double backward takes two):

  _interpolate_kernel            x_hat = eps_b real + (1 - eps_b) fake
  _interpolate_backward_kernel   (eps_b g, (1 - eps_b) g), both outputs in one pass
  _penalty_reduce_kernel         per-sample sums and their mean, in one launch:
                                   WHAT="norm": n_b = sqrt(sum g^2) -> norms, mean phi(n_b)
                                   WHAT="dot":  d_b = sum V g -> dots, mean s(n_b) d_b
  _penalty_backward_kernel       (gamma / B) s(n_b) g
  _penalty_double_backward_kernel  (gamma / B) (s(n_b) V + s'(n_b)/n_b d_b g)

Elementwise kernels: program p handles BLOCK consecutive memory positions. The sample of a lane
(SEG constexpr): "wide" when L >= BLOCK (a block spans at most two samples: the first sample b0 =
start // L is a scalar, the lanes past (b0 + 1) L belong to b0 + 1, so per-sample values are
computed on two scalars and selected per lane); "narrow" otherwise (b = b0 + local // L with the
local offset in int32, and per-sample values gathered per lane). Indices are int64 throughout
(only the narrow local offset, < BLOCK + L, is int32).

Reduction (_penalty_reduce_kernel): a [RB, CB] tile (RB * CB = BLOCK) covers RB samples and CB
positions of each. Samples of L >= BLOCK elements: RB = 1, and each sample is split into `splits`
programs of `iters` blocks each (chosen from the shape alone, at most about MAX_PARTIALS programs
in all); smaller samples: CB = next power of two >= L, RB = BLOCK / CB samples per program, one
program per sample group. Per-sample sums are lane-wise over the loop, then a tree. With one
program per sample group (splits = 1) each program finishes its own samples (norm, phi or
s(n) d) and publishes one partial of the mean; with splits > 1 it publishes its per-sample
partial sum. Either way each program then takes a ticket (atomic counter) and the last one adds
the partials in a fixed order (the splits of a sample over PK lanes, PBLOCK / PK samples at a
time), finishes, and writes the 0-dim mean. Deterministic: the partition
depends on the shape only. B = 0: the penalty is NaN (the mean of nothing), d_grad_output 0 (the
C++ ops' values). grad_output and norms are read on the device: no host synchronisation.
"""

import torch
import triton
import triton.language as tl

from .._args import (check_interpolate, check_interpolate_backward, check_kernel_dtype, check_penalty_grad,
                     check_penalty_grad_grad, check_penalty_grad_output, check_penalty_norms,
                     parse_penalty_kind, penalty_compute_dtype, samples_are_blocks)
from ._common import (BLOCK, MAX_PARTIALS, PBLOCK, _block, _cdiv, _div, _keep_nan, _last_ticket, _Launch,
                      _load, _mean, _scratch, _sum_partials, acc_dtype, num_warps)


# ---- the math (csrc/gan_math.h) -----------------------------------------------------------------

@triton.jit
def _sqrt(x):
    """sqrt rounded to nearest (tl.sqrt is sqrt.approx for float32 on the GPU)."""
    if x.dtype == tl.float64:
        y = tl.sqrt(x)
    else:
        y = tl.sqrt_rn(x)
    return y


@triton.jit
def _penalty_value(n, c, KIND: tl.constexpr):
    """phi(n): wgan-gp (n - c)^2, one-sided max(0, n - c)^2, r1 n^2."""
    if KIND == "wgan-gp":
        d = n - c
        v = d * d
    elif KIND == "one-sided":
        d = n - c
        v = tl.where(d < 0.0, 0.0, d * d)  # written so a NaN passes through
    else:
        v = n * n
    return v


@triton.jit
def _scaled(n, c, KIND: tl.constexpr):
    """Where s(n) = 2 (n - c) / n applies (wgan-gp: n > 0; one-sided: n > c and n > 0)."""
    if KIND == "wgan-gp":
        on = n > 0.0
    else:
        on = (n > c) & (n > 0.0)
    return on


@triton.jit
def _penalty_scale(n, c, KIND: tl.constexpr):
    """s(n) = phi'(n) / n (0 at n = 0 for wgan-gp and one-sided; NaN kept)."""
    if KIND == "r1":
        s = _keep_nan(n, tl.full(n.shape, 2.0, n.dtype))
    else:
        on = _scaled(n, c, KIND)
        s = _keep_nan(n, tl.where(on, _div(2.0 * (n - c), tl.where(on, n, 1.0)), 0.0))
    return s


@triton.jit
def _penalty_scale_dn_over_n(n, c, KIND: tl.constexpr):
    """s'(n) / n = 2 c / n^3 where s(n) = 2 (n - c) / n (0 elsewhere; NaN kept)."""
    if KIND == "r1":
        t = _keep_nan(n, tl.full(n.shape, 0.0, n.dtype))
    else:
        on = _scaled(n, c, KIND)
        m = tl.where(on, n, 1.0)
        t = _keep_nan(n, tl.where(on, _div(2.0 * c, m * m * m), 0.0))
    return t


@triton.jit
def _interp(real, fake, eps):
    """eps real + (1 - eps) fake, as WGAN-GP writes it."""
    return eps * real + (1.0 - eps) * fake


# ---- per-sample indexing --------------------------------------------------------------------------

@triton.jit
def _lanes(n, L, B, SEG: tl.constexpr, BLOCK: tl.constexpr):
    """This program's block and the sample of each lane: (start, offs, mask, first, second,
    in_second). "wide" (L >= BLOCK): first and second are the scalar samples b0 = start // L and
    min(b0 + 1, B - 1), in_second marks the lanes of the second. "narrow": first is the sample of
    each lane."""
    start, offs, mask = _block(n, BLOCK)
    b0 = start // L
    if SEG == "wide":
        b1 = tl.minimum(b0 + 1, B - 1)
        in_second = offs >= (b0 + 1) * L
    else:
        b0 = b0 + (offs - b0 * L).to(tl.int32) // L
        b1 = b0
        in_second = b0 < 0  # unused
    return start, offs, mask, b0, b1, in_second


@triton.jit
def _at(ptr, b, B, SEG: tl.constexpr, ACC: tl.constexpr):
    """ptr[b] in ACC: a scalar load (wide) or a gather over lanes whose b may pass B - 1."""
    if SEG == "wide":
        v = tl.load(ptr + b)
    else:
        v = tl.load(ptr + b, mask=b < B, other=0.0)
    return v.to(ACC)


@triton.jit
def _at_lanes(ptr, b0, b1, in_second, B, SEG: tl.constexpr, ACC: tl.constexpr):
    """ptr[sample of each lane] in ACC (see _lanes)."""
    v0 = _at(ptr, b0, B, SEG, ACC)
    if SEG == "wide":
        v = tl.where(in_second, _at(ptr, b1, B, SEG, ACC), v0)
    else:
        v = v0
    return v


@triton.jit
def _store(ptrs, v, mask, MASKED: tl.constexpr):
    if MASKED:
        tl.store(ptrs, v.to(ptrs.dtype.element_ty), mask=mask)
    else:
        tl.store(ptrs, v.to(ptrs.dtype.element_ty))


# ---- elementwise kernels ----------------------------------------------------------------------------

@triton.jit
def _interpolate_block(real_ptr, fake_ptr, out_ptr, offs, mask, e, ACC: tl.constexpr, MASKED: tl.constexpr):
    r = _load(real_ptr + offs, mask, ACC, MASKED)
    f = _load(fake_ptr + offs, mask, ACC, MASKED)
    _store(out_ptr + offs, _interp(r, f, e), mask, MASKED)


@triton.jit
def _interpolate_kernel(real_ptr, fake_ptr, eps_ptr, out_ptr, n, L, B,
                        SEG: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    start, offs, mask, b0, b1, in_second = _lanes(n, L, B, SEG, BLOCK)
    e = _at_lanes(eps_ptr, b0, b1, in_second, B, SEG, ACC)
    if start + BLOCK <= n:
        _interpolate_block(real_ptr, fake_ptr, out_ptr, offs, mask, e, ACC, False)
    else:
        _interpolate_block(real_ptr, fake_ptr, out_ptr, offs, mask, e, ACC, True)


@triton.jit
def _interpolate_backward_block(g_ptr, gr_ptr, gf_ptr, offs, mask, e, ACC: tl.constexpr,
                                MASKED: tl.constexpr):
    g = _load(g_ptr + offs, mask, ACC, MASKED)
    _store(gr_ptr + offs, e * g, mask, MASKED)
    _store(gf_ptr + offs, (1.0 - e) * g, mask, MASKED)


@triton.jit
def _interpolate_backward_kernel(g_ptr, eps_ptr, gr_ptr, gf_ptr, n, L, B,
                                 SEG: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    start, offs, mask, b0, b1, in_second = _lanes(n, L, B, SEG, BLOCK)
    e = _at_lanes(eps_ptr, b0, b1, in_second, B, SEG, ACC)
    if start + BLOCK <= n:
        _interpolate_backward_block(g_ptr, gr_ptr, gf_ptr, offs, mask, e, ACC, False)
    else:
        _interpolate_backward_block(g_ptr, gr_ptr, gf_ptr, offs, mask, e, ACC, True)


@triton.jit
def _penalty_backward_kernel(go_ptr, g_ptr, norms_ptr, out_ptr, n, L, B, center: tl.float64,
                             KIND: tl.constexpr, SEG: tl.constexpr, ACC: tl.constexpr,
                             BLOCK: tl.constexpr):
    """out = (grad_output / B) s(n_b) g."""
    start, offs, mask, b0, b1, in_second = _lanes(n, L, B, SEG, BLOCK)
    c = tl.full([], center, ACC)
    gb = _div(tl.load(go_ptr).to(ACC), tl.cast(B, ACC))
    k0 = gb * _penalty_scale(_at(norms_ptr, b0, B, SEG, ACC), c, KIND)
    if SEG == "wide":
        k1 = gb * _penalty_scale(_at(norms_ptr, b1, B, SEG, ACC), c, KIND)
        k = tl.where(in_second, k1, k0)
    else:
        k = k0
    if start + BLOCK <= n:
        _store(out_ptr + offs, k * _load(g_ptr + offs, mask, ACC, False), mask, False)
    else:
        _store(out_ptr + offs, k * _load(g_ptr + offs, mask, ACC, True), mask, True)


@triton.jit
def _penalty_double_backward_block(v_ptr, g_ptr, out_ptr, offs, mask, gb, s, t, ACC: tl.constexpr,
                                   MASKED: tl.constexpr):
    v = _load(v_ptr + offs, mask, ACC, MASKED)
    g = _load(g_ptr + offs, mask, ACC, MASKED)
    _store(out_ptr + offs, gb * (s * v + t * g), mask, MASKED)


@triton.jit
def _penalty_double_backward_kernel(go_ptr, v_ptr, g_ptr, norms_ptr, dots_ptr, out_ptr, n, L, B,
                                    center: tl.float64, KIND: tl.constexpr, SEG: tl.constexpr,
                                    ACC: tl.constexpr, BLOCK: tl.constexpr):
    """d_grad = (gamma / B) (s(n_b) V + (s'(n_b) / n_b d_b) g), d_b = dots[b]."""
    start, offs, mask, b0, b1, in_second = _lanes(n, L, B, SEG, BLOCK)
    c = tl.full([], center, ACC)
    gb = _div(tl.load(go_ptr).to(ACC), tl.cast(B, ACC))
    n0 = _at(norms_ptr, b0, B, SEG, ACC)
    s0 = _penalty_scale(n0, c, KIND)
    t0 = _penalty_scale_dn_over_n(n0, c, KIND) * _at(dots_ptr, b0, B, SEG, ACC)
    if SEG == "wide":
        n1 = _at(norms_ptr, b1, B, SEG, ACC)
        s1 = _penalty_scale(n1, c, KIND)
        t1 = _penalty_scale_dn_over_n(n1, c, KIND) * _at(dots_ptr, b1, B, SEG, ACC)
        s = tl.where(in_second, s1, s0)
        t = tl.where(in_second, t1, t0)
    else:
        s = s0
        t = t0
    if start + BLOCK <= n:
        _penalty_double_backward_block(v_ptr, g_ptr, out_ptr, offs, mask, gb, s, t, ACC, False)
    else:
        _penalty_double_backward_block(v_ptr, g_ptr, out_ptr, offs, mask, gb, s, t, ACC, True)


# ---- the per-sample reduction ------------------------------------------------------------------------

@triton.jit
def _tile_terms(x_ptr, v_ptr, offs, mask, WHAT: tl.constexpr, ACC: tl.constexpr, MASKED: tl.constexpr):
    """g^2 (WHAT "norm") or V g ("dot") over a tile; 0 where masked off."""
    x = _load(x_ptr + offs, mask, ACC, MASKED)
    if WHAT == "norm":
        r = x * x
    else:
        r = _load(v_ptr + offs, mask, ACC, MASKED) * x
    return r


@triton.jit
def _finish(sums, rows, ok, norms_ptr, vec_ptr, c, KIND: tl.constexpr, WHAT: tl.constexpr,
            ACC: tl.constexpr):
    """Per-sample results from the per-sample sums: stores norms (or dots) at rows and returns each
    sample's term of the mean (0 where not ok): phi(n_b) or s(n_b) d_b."""
    if WHAT == "norm":
        nb = _sqrt(sums)
        tl.store(vec_ptr + rows, nb, mask=ok)
        v = _penalty_value(nb, c, KIND)
    else:
        tl.store(vec_ptr + rows, sums, mask=ok)
        nb = tl.load(norms_ptr + rows, mask=ok, other=0.0).to(ACC)
        v = _penalty_scale(nb, c, KIND) * sums
    return tl.where(ok, v, 0.0)


@triton.jit
def _batch_mean(total, B, WHAT: tl.constexpr, ACC: tl.constexpr):
    """total / B. B = 0: the penalty (WHAT "norm") is NaN, the mean of nothing, as torch's; the
    derivative w.r.t. grad_output of a backward whose output is empty ("dot") is 0."""
    if WHAT == "norm":
        m = _mean(total, B, ACC)
    else:
        m = _div(total, tl.cast(tl.maximum(B, 1), ACC))
    return m


@triton.jit
def _penalty_reduce_kernel(x_ptr, v_ptr, norms_ptr, vec_ptr, out_ptr, partial_ptr, counter_ptr,
                           B, L, iters, splits, center: tl.float64,
                           KIND: tl.constexpr, WHAT: tl.constexpr, ACC: tl.constexpr,
                           RB: tl.constexpr, CB: tl.constexpr, PK: tl.constexpr, PBLOCK: tl.constexpr):
    """Per-sample sums of g^2 or V g and the mean of their per-sample terms (see the module
    docstring). Program pid: samples [group RB, (group + 1) RB), positions
    [split iters CB, (split + 1) iters CB) of each, where group = pid // splits and
    split = pid % splits. vec_ptr gets the B norms (or dots), out_ptr the 0-dim mean."""
    pid = tl.program_id(0)
    G = tl.num_programs(0)
    group = pid // splits
    split = pid % splits
    c = tl.full([], center, ACC)
    rows = group.to(tl.int64) * RB + tl.arange(0, RB)
    ok = rows < B
    rows_full = (group.to(tl.int64) + 1) * RB <= B
    base = rows[:, None] * L
    acc = tl.zeros([RB, CB], ACC)
    col0 = split.to(tl.int64) * iters * CB
    for i in range(0, iters):
        cstart = col0 + i * CB
        cols = cstart + tl.arange(0, CB)
        offs = base + cols[None, :]
        mask = ok[:, None] & (cols < L)[None, :]
        if rows_full & (cstart + CB <= L):
            acc += _tile_terms(x_ptr, v_ptr, offs, mask, WHAT, ACC, False)
        else:
            acc += _tile_terms(x_ptr, v_ptr, offs, mask, WHAT, ACC, True)
    sums = tl.sum(acc, axis=1)
    if splits == 1:
        part = tl.sum(_finish(sums, rows, ok, norms_ptr, vec_ptr, c, KIND, WHAT, ACC), axis=0)
        if G == 1:
            tl.store(out_ptr, _batch_mean(part, B, WHAT, ACC).to(out_ptr.dtype.element_ty))
        else:
            tl.store(partial_ptr + pid, part)
            if _last_ticket(counter_ptr, G):
                total = _sum_partials(partial_ptr, G, ACC, PBLOCK)
                tl.store(out_ptr, _batch_mean(total, B, WHAT, ACC).to(out_ptr.dtype.element_ty))
    else:
        # RB == 1: this program's partial sum of sample `group`, at partials[group splits + split];
        # the last program sums them per sample over [PBLOCK / PK, PK] tiles (samples x splits)
        tl.store(partial_ptr + rows * splits + split, sums, mask=ok)
        if _last_ticket(counter_ptr, G):
            PR: tl.constexpr = PBLOCK // PK
            total = tl.zeros([PR], ACC)
            for b in range(0, B, PR):
                bs = b + tl.arange(0, PR).to(tl.int64)
                m = bs < B
                ssum = tl.zeros([PR, PK], ACC)
                for k in range(0, splits, PK):
                    ks = k + tl.arange(0, PK)
                    ssum += tl.load(partial_ptr + bs[:, None] * splits + ks[None, :],
                                    mask=m[:, None] & (ks < splits)[None, :], other=0.0, cache_modifier=".cg")
                total += _finish(tl.sum(ssum, axis=1), bs, m, norms_ptr, vec_ptr, c, KIND, WHAT, ACC)
            tl.store(out_ptr, _batch_mean(tl.sum(total, axis=0), B, WHAT, ACC).to(out_ptr.dtype.element_ty))


# ---- launch helpers ----------------------------------------------------------------------------------

def _kernel_kind(kind):
    """r1 and r2 are the same function of the gradient: one compiled kernel."""
    return "r1" if kind == "r2" else kind


def _blocks(t):
    """t as the kernels read it: as is when its samples are blocks of memory, else contiguous."""
    return t if samples_are_blocks(t) else t.contiguous()


def _like(t, ref):
    """t in ref's layout and dtype (ref dense): as is when it already is, else copied."""
    if t.stride() == ref.stride() and t.dtype == ref.dtype:
        return t
    return torch.empty_like(ref).copy_(t)


def _seg(L):
    return "wide" if L >= BLOCK else "narrow"


def _next_pow2(v):
    return 1 << max(0, (v - 1).bit_length())


def reduce_partition(B, L):
    """(RB, CB, iters, splits, PK, programs) of _penalty_reduce_kernel for B samples of L elements,
    from the shape alone (so the result is the same on every run and device). PK: the splits one
    lane row of the final sum covers (a power of two, at most PBLOCK)."""
    if L >= BLOCK:
        bps = _cdiv(L, BLOCK)  # blocks per sample
        iters = min(bps, max(1, _cdiv(B * bps, MAX_PARTIALS)))
        splits = _cdiv(bps, iters)
        pk = min(_next_pow2(splits), PBLOCK) if splits > 1 else 1
        return 1, BLOCK, iters, splits, pk, max(1, B * splits)
    cb = _next_pow2(max(L, 1))
    return BLOCK // cb, cb, 1, 1, 1, max(1, _cdiv(B, BLOCK // cb))


def reduce_options(dtype):
    """Launch options of _penalty_reduce_kernel: float64 caps ptxas at 128 registers per thread,
    where left to itself it stopped at 64 on sm_80 and spilled (the final [PBLOCK / PK, PK] sum
    of 8-byte partials); the cap gives it room, 8 warps x 128 fit an SM several times over."""
    opts = {"num_warps": num_warps(dtype)}
    if dtype == torch.float64:
        opts["maxnreg"] = 128
    return opts


def _reduce(what, x, v, norms, vec, out, kind, center):
    """One launch of _penalty_reduce_kernel over x (and v) in blocks layout."""
    B = x.size(0)
    L = x.numel() // B if B else 0
    acc, tl_acc = acc_dtype(x.dtype)
    rb, cb, iters, splits, pk, programs = reduce_partition(B, L)
    partial, counter = _scratch(programs, 1, acc, x.device)
    with _Launch(x.device):
        _penalty_reduce_kernel[(programs,)](
            x, v if v is not None else x, norms if norms is not None else vec, vec, out, partial, counter,
            B, L, iters, splits, float(center),
            KIND=_kernel_kind(kind), WHAT=what, ACC=tl_acc, RB=rb, CB=cb, PK=pk, PBLOCK=PBLOCK,
            **reduce_options(x.dtype),
        )


def _per_block(kernel, t, op, *args, **kwargs):
    """kernel(*args, n, L, B, **kwargs) with one program per BLOCK of t's n elements (B samples of
    L), the sample map, accumulation dtype and warps of t's dtype; nothing launched when n = 0."""
    n = t.numel()
    if n == 0:
        return
    check_kernel_dtype(t.dtype, op)
    B = t.size(0)
    L = n // B
    with _Launch(t.device):
        kernel[(_cdiv(n, BLOCK),)](*args, n, L, B, SEG=_seg(L), ACC=acc_dtype(t.dtype)[1], BLOCK=BLOCK,
                                   num_warps=num_warps(t.dtype), **kwargs)


# ---- launchers (the ops of csrc/ganfast.cpp) --------------------------------------------------------

def interpolate(real, fake, eps):
    op = "ganfast::interpolate"
    check_interpolate(op, real, fake, eps)
    if samples_are_blocks(real) and fake.stride() == real.stride():
        r, f = real, fake
    else:
        r, f = real.contiguous(), fake.contiguous()
    out = torch.empty_like(r)
    _per_block(_interpolate_kernel, r, "ganfast_interpolate", r, f, eps.to(r.dtype).contiguous(), out)
    return out


def interpolate_backward(grad_output, eps):
    op = "ganfast::interpolate_backward"
    check_interpolate_backward(op, grad_output, eps)
    g = _blocks(grad_output)
    grad_real, grad_fake = torch.empty_like(g), torch.empty_like(g)
    _per_block(_interpolate_backward_kernel, g, "ganfast_interpolate_backward", g, eps.to(g.dtype).contiguous(),
               grad_real, grad_fake)
    return grad_real, grad_fake


def penalty_from_grad(grad, kind, center):
    op = "ganfast::penalty_from_grad"
    check_penalty_grad(op, grad)
    kind = parse_penalty_kind(kind)
    check_kernel_dtype(grad.dtype, "ganfast_penalty")
    g = _blocks(grad)
    norms = torch.empty(g.size(0), dtype=penalty_compute_dtype(g.dtype), device=g.device)
    penalty = torch.empty((), dtype=g.dtype, device=g.device)
    _reduce("norm", g, None, None, norms, penalty, kind, center)
    return penalty, norms


def penalty_from_grad_backward(grad_output, grad, norms, kind, center):
    op = "ganfast::penalty_from_grad_backward"
    check_penalty_grad(op, grad)
    check_penalty_norms(op, grad, norms)
    check_penalty_grad_output(op, grad_output, grad)
    kind = parse_penalty_kind(kind)
    g = _blocks(grad)
    out = torch.empty_like(g)
    _per_block(_penalty_backward_kernel, g, "ganfast_penalty", grad_output.reshape(()).to(g.dtype), g,
               norms.contiguous(), out, center=float(center), KIND=_kernel_kind(kind))
    return out


def penalty_from_grad_double_backward(grad_grad, grad_output, grad, norms, kind, center):
    op = "ganfast::penalty_from_grad_double_backward"
    check_penalty_grad(op, grad)
    check_penalty_norms(op, grad, norms)
    check_penalty_grad_output(op, grad_output, grad)
    check_penalty_grad_grad(op, grad_grad, grad)
    kind = parse_penalty_kind(kind)
    check_kernel_dtype(grad.dtype, "ganfast_penalty")
    g = _blocks(grad)
    v = _like(grad_grad, g)
    nrm = norms.contiguous()
    acc = acc_dtype(g.dtype)[0]
    d_grad_output = torch.empty((), dtype=g.dtype, device=g.device)
    d_grad = torch.empty_like(g)
    dots = torch.empty(g.size(0), dtype=acc, device=g.device)
    _reduce("dot", g, v, nrm, dots, d_grad_output, kind, center)
    _per_block(_penalty_double_backward_kernel, g, "ganfast_penalty", grad_output.reshape(()).to(g.dtype), v, g,
               nrm, dots, d_grad, center=float(center), KIND=_kernel_kind(kind))
    return d_grad_output, d_grad
