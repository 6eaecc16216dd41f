"""Triton kernels of the losses family and their launchers.

The launchers mirror the C++ ops of csrc/ganfast.cpp (same names, same argument order) and the
CPU twin csrc/cpu/losses.cpp (same argument handling via ganfast/_args.py, same empty-
tensor results, same dtype rules). The math is csrc/gan_math.h's, formula for formula:

  * float32 (and float16/bfloat16, computed in float32): exp(-|x|) and log1p(e), e in [0, 1],
    are gan_math.h's host polynomials (Cody-Waite + Taylor, atanh series), written with fma
    and IEEE division, so the interpreter and the GPU compute what the CPU kernels compute
    (Triton's own tl.exp is ex2.approx on the GPU, and libdevice is unavailable to the
    interpreter). log(p) for binary_cross_entropy is tl.log (libdevice logf on the GPU).
  * float64: tl.exp / tl.log, log1p by Kahan's u = 1 + e; log(u) * e / (u - 1).

Kernels (one launch per call; the only other device work is the dtype conversions /
.contiguous() copies the C++ ops make too, only when an operand is not already contiguous in the
input's dtype; the ticket counter is _common.counters()' cached buffer, reset by the kernel):

  _loss_forward_kernel   bce_with_logits / binary_cross_entropy, reduction none/mean/sum
  _loss_backward_kernel  their gradients w.r.t. input or target
  _gan_d_forward_kernel  gan_d_loss: real and fake halves in one launch
  _gan_d_backward_kernel gan_d_loss_backward: both gradients in one launch
  _gan_g_forward_kernel  gan_g_loss
  _gan_g_backward_kernel gan_g_loss_backward

Reductions are deterministic: program p sums `iters` consecutive BLOCKs (lane-wise in the
accumulation dtype, then one tree sum) into partials[p]; then takes a ticket with
tl.atomic_add(counter, 1, sem="acq_rel"); the program holding the last ticket puts the counter
back to 0 and sums the partials in index order (PBLOCK lanes, then a tree) and writes the 0-dim result. A single program writes
the result directly. The partition depends only on the element count, so the result is the same
on every run and every GPU. The upstream gradient is always read inside the kernels from its
pointer: no host synchronisation anywhere.

binary_cross_entropy's range checks (input, then target, in [0, 1]): tl.device_assert inside the
forward kernel, compiled in by launching that kernel with debug=True on the GPU (a failure is a
device-side assert, as torch's own CUDA binary_cross_entropy and ganfast's CUDA kernel). The
interpreter ignores device_assert, so on CPU tensors (the interpreter case, where reading memory
is no device sync) the same kernel also sets flags that the launcher turns into the C++ op's
RuntimeError.

Enumerations (reduction, GAN kind) are the strings themselves, passed as tl.constexpr.

The primitives, the reduction pieces and the launch helpers every family shares live in
_common.py (imported here under their old names).
"""

import torch
import triton
import triton.language as tl

from .._args import (check_g_logits, check_gan_logits, check_kernel_dtype, check_scalar_grad,
                    parse_gan_kind, prepare_loss_grad, prepare_loss_operands)
from ._common import (BLOCK, MAX_PARTIALS, PBLOCK, _block, _cdiv, _div, _exp_nonpos, _f32,  # noqa: F401
                      _keep_nan, _Launch, _load, _log1p_unit, _mean, _partition, _scratch, _sigmoid,
                      _softplus, _sum_partials, _take_ticket, acc_dtype, num_warps)

_BCE_EPS = tl.constexpr(_f32(1e-12))  # torch's EPSILON is a float (gan_math.h: T(1e-12f))
_BCE_INPUT_MSG = tl.constexpr("ganfast::binary_cross_entropy: all elements of input should be between 0 and 1")
_BCE_TARGET_MSG = tl.constexpr("ganfast::binary_cross_entropy: all elements of target should be between 0 and 1")


@triton.jit
def _log1p_neg(p):
    """log(1 - p) for p in [0, 1] (std::log1p(-p)): Kahan's form around an accurate log."""
    u = 1.0 - p
    one = u == 1.0
    return tl.where(one, -p, tl.log(u) * _div(-p, tl.where(one, 1.0, u - 1.0)))


# ---- the losses' elementwise terms -------------------------------------------------------------

@triton.jit
def _loss_value(x, t, w, pw, LOSS: tl.constexpr):
    if LOSS == "bce_logits":
        # w [(1 - t) x + (1 + (pw - 1) t) softplus(-x)]
        v = w * ((1.0 - t) * x + (1.0 + (pw - 1.0) * t) * _softplus(-x))
    else:
        # w [(t - 1) max(log(1 - p), -100) - t max(log p, -100)]
        log_p = tl.maximum(tl.log(x), -100.0)
        log_1mp = tl.maximum(_log1p_neg(x), -100.0)
        v = w * ((t - 1.0) * log_1mp - t * log_p)
    return v


@triton.jit
def _loss_deriv(x, t, w, pw, LOSS: tl.constexpr, WRT: tl.constexpr):
    if LOSS == "bce_logits":
        if WRT == "input":
            d = w * ((1.0 - t) - (1.0 + (pw - 1.0) * t) * _sigmoid(-x))
        else:
            d = w * ((pw - 1.0) * _softplus(-x) - x)
    else:
        if WRT == "input":
            d = _div(w * (x - t), tl.maximum((1.0 - x) * x, tl.full([], _BCE_EPS, x.dtype)))
        else:
            d = w * (_log1p_neg(x) - tl.log(x))
    return d


@triton.jit
def _gan_value(x, label, KIND: tl.constexpr, PART: tl.constexpr):
    """gan_d_real (PART "d_real"), gan_d_fake ("d_fake") or gan_g ("g") of gan_math.h."""
    if PART == "g":
        if KIND == "minimax":
            v = -_softplus(x)
        elif KIND == "nonsaturating":
            v = _softplus(-x)
        elif KIND == "least_squares":
            d = x - 1.0
            v = 0.5 * d * d
        else:  # hinge, wasserstein
            v = -x
    else:
        if KIND == "minimax" or KIND == "nonsaturating":
            v = (1.0 - label) * x + _softplus(-x)
        elif KIND == "hinge":
            if PART == "d_real":
                h = 1.0 - x
            else:
                h = 1.0 + x
            v = tl.where(h < 0.0, 0.0, h)  # written so a NaN passes through
        elif KIND == "wasserstein":
            if PART == "d_real":
                v = -x
            else:
                v = x
        else:  # least_squares
            d = x - label
            v = 0.5 * d * d
    return v


@triton.jit
def _gan_deriv(x, label, KIND: tl.constexpr, PART: tl.constexpr):
    """d/dx of _gan_value."""
    if PART == "g":
        if KIND == "minimax":
            d = -_sigmoid(x)
        elif KIND == "nonsaturating":
            d = -_sigmoid(-x)  # = sigmoid(x) - 1 without the cancellation as D saturates
        elif KIND == "least_squares":
            d = x - 1.0
        else:
            d = _keep_nan(x, tl.full(x.shape, -1.0, x.dtype))
    else:
        if KIND == "minimax" or KIND == "nonsaturating":
            d = _sigmoid(x) - label
        elif KIND == "hinge":
            if PART == "d_real":
                d = _keep_nan(x, tl.where(x < 1.0, -1.0, 0.0))  # relu'(0) = 0, as torch's
            else:
                d = _keep_nan(x, tl.where(x > -1.0, 1.0, 0.0))
        elif KIND == "wasserstein":
            if PART == "d_real":
                d = _keep_nan(x, tl.full(x.shape, -1.0, x.dtype))
            else:
                d = _keep_nan(x, tl.full(x.shape, 1.0, x.dtype))
        else:
            d = x - label
    return d


# ---- loads ---------------------------------------------------------------------------------------

@triton.jit
def _load_operand(ptr, offs, mask, inner, period, MODE: tl.constexpr, ACC: tl.constexpr,
                  MASKED: tl.constexpr):
    """A broadcast operand (weight, pos_weight) at flat indices offs: data[(i // inner) % period].
    MODE: "none" (absent: 1), "scalar" (one value), "full" (same shape as input), "bcast32" /
    "bcast64" (the general map in int32 / int64 index arithmetic)."""
    if MODE == "none":
        v = tl.full([], 1.0, ACC)
    elif MODE == "scalar":
        v = tl.load(ptr).to(ACC)
    elif MODE == "full":
        v = _load(ptr + offs, mask, ACC, MASKED)
    elif MODE == "bcast32":
        idx = (offs.to(tl.int32) // inner) % period
        v = _load(ptr + idx, mask, ACC, MASKED)
    else:
        idx = (offs // inner) % period
        v = _load(ptr + idx, mask, ACC, MASKED)
    return v


@triton.jit
def _check_unit_interval(v, mask, flag_ptr, MSG: tl.constexpr, CHECK_FLAG: tl.constexpr,
                         MASKED: tl.constexpr):
    """device_assert(0 <= v <= 1) (compiled in only with debug=True; a no-op in the interpreter);
    with CHECK_FLAG (CPU tensors, the interpreter) also sets *flag_ptr = 1 where it fails."""
    ok = (v >= 0.0) & (v <= 1.0)
    if MASKED:
        ok = ok | (mask == 0)
    tl.device_assert(ok, MSG)
    if CHECK_FLAG:
        bad = tl.sum(tl.where(ok, 0, 1), axis=0)
        tl.store(flag_ptr, tl.full([], 1, tl.int32), mask=bad > 0)


@triton.jit
def _loss_block(x_ptr, t_ptr, w_ptr, pw_ptr, flag_ptr, offs, mask,
                w_inner, w_period, pw_inner, pw_period,
                LOSS: tl.constexpr, W_MODE: tl.constexpr, PW_MODE: tl.constexpr,
                CHECK_FLAG: tl.constexpr, ACC: tl.constexpr, MASKED: tl.constexpr):
    x = _load(x_ptr + offs, mask, ACC, MASKED)
    t = _load(t_ptr + offs, mask, ACC, MASKED)
    w = _load_operand(w_ptr, offs, mask, w_inner, w_period, W_MODE, ACC, MASKED)
    pw = _load_operand(pw_ptr, offs, mask, pw_inner, pw_period, PW_MODE, ACC, MASKED)
    if LOSS == "bce_prob":
        # probabilities and targets in [0, 1] (false for NaN), as torch's checks
        _check_unit_interval(x, mask, flag_ptr, _BCE_INPUT_MSG, CHECK_FLAG, MASKED)
        _check_unit_interval(t, mask, flag_ptr + 1, _BCE_TARGET_MSG, CHECK_FLAG, MASKED)
    return _loss_value(x, t, w, pw, LOSS)


@triton.jit
def _store_reduced(out_ptr, total, n, MEAN: tl.constexpr, ACC: tl.constexpr):
    if MEAN:
        total = _mean(total, n, ACC)
    tl.store(out_ptr, total.to(out_ptr.dtype.element_ty))


# ---- kernels -----------------------------------------------------------------------------------

@triton.jit
def _loss_forward_kernel(
    x_ptr, t_ptr, w_ptr, pw_ptr, out_ptr, partial_ptr, counter_ptr, flag_ptr,
    n, iters, w_inner, w_period, pw_inner, pw_period,
    LOSS: tl.constexpr, REDUCTION: tl.constexpr, W_MODE: tl.constexpr, PW_MODE: tl.constexpr,
    CHECK_FLAG: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, PBLOCK: tl.constexpr,
):
    """Elementwise loss l_i (LOSS "bce_logits" or "bce_prob") with REDUCTION "none" (one block
    per program, out has n elements) or "mean"/"sum" (iters blocks per program, partials, 0-dim
    out)."""
    pid = tl.program_id(0)
    if REDUCTION == "none":
        start, offs, mask = _block(n, BLOCK)
        if start + BLOCK <= n:
            v = _loss_block(x_ptr, t_ptr, w_ptr, pw_ptr, flag_ptr, offs, mask,
                            w_inner, w_period, pw_inner, pw_period,
                            LOSS, W_MODE, PW_MODE, CHECK_FLAG, ACC, False)
            tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty))
        else:
            v = _loss_block(x_ptr, t_ptr, w_ptr, pw_ptr, flag_ptr, offs, mask,
                            w_inner, w_period, pw_inner, pw_period,
                            LOSS, W_MODE, PW_MODE, CHECK_FLAG, ACC, True)
            tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        acc = tl.zeros([BLOCK], ACC)
        first = pid.to(tl.int64) * iters
        for i in range(0, iters):
            start = (first + i) * BLOCK
            offs = start + tl.arange(0, BLOCK)
            mask = offs < n
            if start + BLOCK <= n:
                acc += _loss_block(x_ptr, t_ptr, w_ptr, pw_ptr, flag_ptr, offs, mask,
                                   w_inner, w_period, pw_inner, pw_period,
                                   LOSS, W_MODE, PW_MODE, CHECK_FLAG, ACC, False)
            else:
                v = _loss_block(x_ptr, t_ptr, w_ptr, pw_ptr, flag_ptr, offs, mask,
                                w_inner, w_period, pw_inner, pw_period,
                                LOSS, W_MODE, PW_MODE, CHECK_FLAG, ACC, True)
                acc += tl.where(mask, v, 0.0)
        s = tl.sum(acc, axis=0)
        if tl.num_programs(0) == 1:
            _store_reduced(out_ptr, s, n, REDUCTION == "mean", ACC)
        else:
            if _take_ticket(partial_ptr, counter_ptr, pid, s, s, False):
                total = _sum_partials(partial_ptr, tl.num_programs(0), ACC, PBLOCK)
                _store_reduced(out_ptr, total, n, REDUCTION == "mean", ACC)


@triton.jit
def _loss_backward_kernel(
    g_ptr, x_ptr, t_ptr, w_ptr, pw_ptr, out_ptr,
    n, w_inner, w_period, pw_inner, pw_period,
    LOSS: tl.constexpr, WRT: tl.constexpr, MEAN: tl.constexpr, GRAD_SCALAR: tl.constexpr,
    W_MODE: tl.constexpr, PW_MODE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """out_i = upstream_i * dl_i/d(WRT): upstream is grad[0] (times 1/n for MEAN) when
    GRAD_SCALAR, else grad[i]."""
    start, offs, mask = _block(n, BLOCK)
    if GRAD_SCALAR:
        g0 = tl.load(g_ptr).to(ACC)
        if MEAN:
            g0 = g0 * _div(tl.full([], 1.0, ACC), tl.cast(n, ACC))
    if start + BLOCK <= n:
        x = _load(x_ptr + offs, mask, ACC, False)
        t = _load(t_ptr + offs, mask, ACC, False)
        w = _load_operand(w_ptr, offs, mask, w_inner, w_period, W_MODE, ACC, False)
        pw = _load_operand(pw_ptr, offs, mask, pw_inner, pw_period, PW_MODE, ACC, False)
        d = _loss_deriv(x, t, w, pw, LOSS, WRT)
        if GRAD_SCALAR:
            y = g0 * d
        else:
            y = _load(g_ptr + offs, mask, ACC, False) * d
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty))
    else:
        x = _load(x_ptr + offs, mask, ACC, True)
        t = _load(t_ptr + offs, mask, ACC, True)
        w = _load_operand(w_ptr, offs, mask, w_inner, w_period, W_MODE, ACC, True)
        pw = _load_operand(pw_ptr, offs, mask, pw_inner, pw_period, PW_MODE, ACC, True)
        d = _loss_deriv(x, t, w, pw, LOSS, WRT)
        if GRAD_SCALAR:
            y = g0 * d
        else:
            y = _load(g_ptr + offs, mask, ACC, True) * d
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gan_sum(x_ptr, n, pid, iters, label, KIND: tl.constexpr, PART: tl.constexpr,
             ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Sum of the GAN term over blocks [pid * iters, (pid + 1) * iters) of x."""
    acc = tl.zeros([BLOCK], ACC)
    first = pid.to(tl.int64) * iters
    for i in range(0, iters):
        start = (first + i) * BLOCK
        offs = start + tl.arange(0, BLOCK)
        mask = offs < n
        if start + BLOCK <= n:
            acc += _gan_value(_load(x_ptr + offs, mask, ACC, False), label, KIND, PART)
        else:
            v = _gan_value(_load(x_ptr + offs, mask, ACC, True), label, KIND, PART)
            acc += tl.where(mask, v, 0.0)
    return tl.sum(acc, axis=0)


@triton.jit
def _gan_grad_block(x_ptr, out_ptr, n, pid, scale, label, KIND: tl.constexpr, PART: tl.constexpr,
                    ACC: tl.constexpr, BLOCK: tl.constexpr):
    """out = scale * d(term)/dx over block pid of x (nothing where the block is past n)."""
    start = pid.to(tl.int64) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    mask = offs < n
    if start + BLOCK <= n:
        d = _gan_deriv(_load(x_ptr + offs, mask, ACC, False), label, KIND, PART)
        tl.store(out_ptr + offs, (scale * d).to(out_ptr.dtype.element_ty))
    elif start < n:
        d = _gan_deriv(_load(x_ptr + offs, mask, ACC, True), label, KIND, PART)
        tl.store(out_ptr + offs, (scale * d).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gan_d_forward_kernel(
    real_ptr, fake_ptr, out_ptr, partial_ptr, counter_ptr,
    nr, nf, iters_r, iters_f, real_label: tl.float64, fake_label: tl.float64,
    KIND: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, PBLOCK: tl.constexpr,
):
    """mean_real gan_d_real + mean_fake gan_d_fake: program p sums real blocks
    [p iters_r, (p+1) iters_r) and fake blocks [p iters_f, (p+1) iters_f)."""
    pid = tl.program_id(0)
    a = tl.full([], real_label, ACC)
    b = tl.full([], fake_label, ACC)
    sr = _gan_sum(real_ptr, nr, pid, iters_r, a, KIND, "d_real", ACC, BLOCK)
    sf = _gan_sum(fake_ptr, nf, pid, iters_f, b, KIND, "d_fake", ACC, BLOCK)
    G = tl.num_programs(0)
    if G == 1:
        tl.store(out_ptr, (_mean(sr, nr, ACC) + _mean(sf, nf, ACC)).to(out_ptr.dtype.element_ty))
    else:
        if _take_ticket(partial_ptr, counter_ptr, pid, sr, sf, True):
            tr = _sum_partials(partial_ptr, G, ACC, PBLOCK)
            tf = _sum_partials(partial_ptr + G, G, ACC, PBLOCK)
            tl.store(out_ptr, (_mean(tr, nr, ACC) + _mean(tf, nf, ACC)).to(out_ptr.dtype.element_ty))


@triton.jit
def _gan_d_backward_kernel(
    g_ptr, real_ptr, fake_ptr, grad_real_ptr, grad_fake_ptr,
    nr, nf, real_label: tl.float64, fake_label: tl.float64,
    KIND: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """Both gradients of gan_d_loss: program p writes block p of each (where it exists)."""
    pid = tl.program_id(0)
    g = tl.load(g_ptr).to(ACC)
    gr = _div(g, tl.cast(tl.maximum(nr, 1), ACC))
    gf = _div(g, tl.cast(tl.maximum(nf, 1), ACC))
    a = tl.full([], real_label, ACC)
    b = tl.full([], fake_label, ACC)
    _gan_grad_block(real_ptr, grad_real_ptr, nr, pid, gr, a, KIND, "d_real", ACC, BLOCK)
    _gan_grad_block(fake_ptr, grad_fake_ptr, nf, pid, gf, b, KIND, "d_fake", ACC, BLOCK)


@triton.jit
def _gan_g_forward_kernel(
    x_ptr, out_ptr, partial_ptr, counter_ptr, n, iters,
    KIND: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, PBLOCK: tl.constexpr,
):
    """mean_fake gan_g."""
    pid = tl.program_id(0)
    s = _gan_sum(x_ptr, n, pid, iters, 0.0, KIND, "g", ACC, BLOCK)
    G = tl.num_programs(0)
    if G == 1:
        _store_reduced(out_ptr, s, n, True, ACC)
    else:
        if _take_ticket(partial_ptr, counter_ptr, pid, s, s, False):
            total = _sum_partials(partial_ptr, G, ACC, PBLOCK)
            _store_reduced(out_ptr, total, n, True, ACC)


@triton.jit
def _gan_g_backward_kernel(
    g_ptr, x_ptr, out_ptr, n,
    KIND: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    g = _div(tl.load(g_ptr).to(ACC), tl.cast(tl.maximum(n, 1), ACC))
    _gan_grad_block(x_ptr, out_ptr, n, pid, g, 0.0, KIND, "g", ACC, BLOCK)


# ---- launch helpers ----------------------------------------------------------------------------

def operand_mode(b, n):
    """How a kernel reads a broadcast operand (see _load_operand)."""
    if not b.present() or n == 0:
        return "none"
    if b.period == 1:
        return "scalar"
    if b.inner == 1 and b.period == n:
        return "full"
    # int32 index arithmetic while every lane index of the last block fits
    return "bcast32" if n + BLOCK <= 2 ** 31 else "bcast64"


def _loss_forward(op, loss, o):
    x, t = o.input, o.target
    check_kernel_dtype(x.dtype, "ganfast_loss")
    n = x.numel()
    acc, tl_acc = acc_dtype(x.dtype)
    if o.reduction == "none":
        out = torch.empty_like(x)
        if n == 0:
            return out
        programs, iters = _cdiv(n, BLOCK), 1
        partial, counter = _scratch(1, 1, acc, x.device)
    else:
        out = torch.empty((), dtype=x.dtype, device=x.device)
        programs, iters = _partition(_cdiv(n, BLOCK))
        partial, counter = _scratch(programs, 1, acc, x.device)
    check_flag = loss == "bce_prob" and x.device.type == "cpu"
    # flag[0]: an input outside [0, 1]; flag[1]: a target outside [0, 1]
    flag = torch.zeros(2, dtype=torch.int32, device=x.device) if check_flag else counter
    w, pw = o.weight, o.pos_weight
    with _Launch(x.device):
        _loss_forward_kernel[(programs,)](
            x, t, w.data if w.present() else x, pw.data if pw.present() else x,
            out, partial, counter, flag,
            n, iters, w.inner, w.period, pw.inner, pw.period,
            LOSS=loss, REDUCTION=o.reduction, W_MODE=operand_mode(w, n), PW_MODE=operand_mode(pw, n),
            CHECK_FLAG=check_flag, ACC=tl_acc, BLOCK=BLOCK, PBLOCK=PBLOCK,
            num_warps=num_warps(x.dtype), debug=loss == "bce_prob",
        )
    if check_flag:  # CPU memory: no device synchronisation. The C++ op checks input first.
        bad_input, bad_target = flag.tolist()
        if bad_input:
            raise RuntimeError(_BCE_INPUT_MSG.value)
        if bad_target:
            raise RuntimeError(_BCE_TARGET_MSG.value)
    return out


def _loss_backward(op, loss, wrt, grad_output, o):
    x, t = o.input, o.target
    grad, grad_is_scalar = prepare_loss_grad(op, grad_output, x, o.reduction)
    check_kernel_dtype(x.dtype, "ganfast_loss")
    n = x.numel()
    out = torch.empty_like(x)
    if n == 0:
        return out
    _, tl_acc = acc_dtype(x.dtype)
    w, pw = o.weight, o.pos_weight
    with _Launch(x.device):
        _loss_backward_kernel[(_cdiv(n, BLOCK),)](
            grad, x, t, w.data if w.present() else x, pw.data if pw.present() else x, out,
            n, w.inner, w.period, pw.inner, pw.period,
            LOSS=loss, WRT=wrt, MEAN=o.reduction == "mean", GRAD_SCALAR=grad_is_scalar,
            W_MODE=operand_mode(w, n), PW_MODE=operand_mode(pw, n), ACC=tl_acc, BLOCK=BLOCK,
            num_warps=num_warps(x.dtype),
        )
    return out


# ---- launchers (the ops of csrc/ganfast.cpp) ---------------------------------------------------

def bce_with_logits(input, target, weight, pos_weight, reduction):
    op = "ganfast::bce_with_logits"
    o = prepare_loss_operands(op, input, target, weight, pos_weight, reduction)
    return _loss_forward(op, "bce_logits", o)


def bce_with_logits_backward(grad_output, input, target, weight, pos_weight, reduction):
    op = "ganfast::bce_with_logits_backward"
    o = prepare_loss_operands(op, input, target, weight, pos_weight, reduction)
    return _loss_backward(op, "bce_logits", "input", grad_output, o)


def bce_with_logits_target_backward(grad_output, input, target, weight, pos_weight, reduction):
    op = "ganfast::bce_with_logits_target_backward"
    o = prepare_loss_operands(op, input, target, weight, pos_weight, reduction)
    return _loss_backward(op, "bce_logits", "target", grad_output, o)


def binary_cross_entropy(input, target, weight, reduction):
    op = "ganfast::binary_cross_entropy"
    o = prepare_loss_operands(op, input, target, weight, None, reduction)
    return _loss_forward(op, "bce_prob", o)


def binary_cross_entropy_backward(grad_output, input, target, weight, reduction):
    op = "ganfast::binary_cross_entropy_backward"
    o = prepare_loss_operands(op, input, target, weight, None, reduction)
    return _loss_backward(op, "bce_prob", "input", grad_output, o)


def binary_cross_entropy_target_backward(grad_output, input, target, weight, reduction):
    op = "ganfast::binary_cross_entropy_target_backward"
    o = prepare_loss_operands(op, input, target, weight, None, reduction)
    return _loss_backward(op, "bce_prob", "target", grad_output, o)


def gan_d_loss(real_logits, fake_logits, kind, real_label, fake_label):
    op = "ganfast::gan_d_loss"
    check_gan_logits(op, real_logits, fake_logits)
    kind = parse_gan_kind(kind)
    real, fake = real_logits.contiguous(), fake_logits.contiguous()
    check_kernel_dtype(real.dtype, "ganfast_gan_loss")
    nr, nf = real.numel(), fake.numel()
    acc, tl_acc = acc_dtype(real.dtype)
    out = torch.empty((), dtype=real.dtype, device=real.device)
    nbr, nbf = _cdiv(nr, BLOCK), _cdiv(nf, BLOCK)
    programs, _ = _partition(max(nbr, nbf))
    partial, counter = _scratch(programs, 2, acc, real.device)
    with _Launch(real.device):
        _gan_d_forward_kernel[(programs,)](
            real, fake, out, partial, counter,
            nr, nf, _cdiv(nbr, programs), _cdiv(nbf, programs), float(real_label), float(fake_label),
            KIND=kind, ACC=tl_acc, BLOCK=BLOCK, PBLOCK=PBLOCK, num_warps=num_warps(real.dtype),
        )
    return out


def gan_d_loss_backward(grad_output, real_logits, fake_logits, kind, real_label, fake_label):
    op = "ganfast::gan_d_loss_backward"
    check_gan_logits(op, real_logits, fake_logits)
    check_scalar_grad(op, grad_output, real_logits)
    kind = parse_gan_kind(kind)
    real, fake = real_logits.contiguous(), fake_logits.contiguous()
    check_kernel_dtype(real.dtype, "ganfast_gan_loss")
    nr, nf = real.numel(), fake.numel()
    grad_real, grad_fake = torch.empty_like(real), torch.empty_like(fake)
    programs = max(_cdiv(nr, BLOCK), _cdiv(nf, BLOCK))
    if programs == 0:
        return grad_real, grad_fake
    grad = grad_output.reshape(()).to(real.dtype)
    _, tl_acc = acc_dtype(real.dtype)
    with _Launch(real.device):
        _gan_d_backward_kernel[(programs,)](
            grad, real, fake, grad_real, grad_fake, nr, nf, float(real_label), float(fake_label),
            KIND=kind, ACC=tl_acc, BLOCK=BLOCK, num_warps=num_warps(real.dtype),
        )
    return grad_real, grad_fake


def gan_g_loss(fake_logits, kind):
    op = "ganfast::gan_g_loss"
    check_g_logits(op, fake_logits)
    kind = parse_gan_kind(kind)
    x = fake_logits.contiguous()
    check_kernel_dtype(x.dtype, "ganfast_gan_loss")
    n = x.numel()
    acc, tl_acc = acc_dtype(x.dtype)
    out = torch.empty((), dtype=x.dtype, device=x.device)
    programs, iters = _partition(_cdiv(n, BLOCK))
    partial, counter = _scratch(programs, 1, acc, x.device)
    with _Launch(x.device):
        _gan_g_forward_kernel[(programs,)](
            x, out, partial, counter, n, iters,
            KIND=kind, ACC=tl_acc, BLOCK=BLOCK, PBLOCK=PBLOCK, num_warps=num_warps(x.dtype),
        )
    return out


def gan_g_loss_backward(grad_output, fake_logits, kind):
    op = "ganfast::gan_g_loss_backward"
    check_g_logits(op, fake_logits)
    check_scalar_grad(op, grad_output, fake_logits)
    kind = parse_gan_kind(kind)
    x = fake_logits.contiguous()
    check_kernel_dtype(x.dtype, "ganfast_gan_loss")
    n = x.numel()
    out = torch.empty_like(x)
    if n == 0:
        return out
    grad = grad_output.reshape(()).to(x.dtype)
    _, tl_acc = acc_dtype(x.dtype)
    with _Launch(x.device):
        _gan_g_backward_kernel[(_cdiv(n, BLOCK),)](
            grad, x, out, n, KIND=kind, ACC=tl_acc, BLOCK=BLOCK, num_warps=num_warps(x.dtype),
        )
    return out
