"""Triton kernels of the bias_act family and their launchers.

The launchers mirror the C++ ops of csrc/ganfast.cpp (same names, same argument order, the checks
of ganfast/_args.py, the twin of csrc/ganfast_common.h); the math is csrc/gan_math.h's
(act_value, act_derivative, act_derivative_from_y, bias_act_value, bias_act_derivative,
bias_act_derivative_from_y), computed in float32 for float32/float16/bfloat16 tensors and in
float64 for float64 ones. The primitives beyond _common.py's exp(x <= 0), log1p, softplus and
sigmoid:

  * expm1(x) for x <= 0: float32, Cody-Waite x = k ln2 + r, expm1(r) by its Taylor polynomial to
    degree 8 (exact where k = 0, i.e. |x| < ln2 / 2: accurate for small |x|), then
    2^k expm1(r) + (2^k - 1); float64, Kahan's (u - 1) x / log(u) with u = exp(x).
  * tanh(x) = sign(x) e / (2 + e), e = -expm1(-2|x|): no overflow, accurate near 0 (Triton has no
    tl.tanh in every version, and the interpreter has no libdevice).

Kernels (one launch per op):

  _bias_act_kernel           y = clamp(gain f(x + b[c]), -clamp, clamp)
  _bias_act_backward_kernel  grad_output * d^order y / dx^order, from x + b[c] or from y
  _bias_act_backward_with_bias_kernel
                             the first derivative of _bias_act_backward_kernel and, in the same
                             pass, the bias gradient: batch_norm_act's per-channel tiles
                             (_common.py's Walk over the (outer, C, inner) view, grid (T, C blocks)),
                             each program's per-channel sums of grad_input as stored into
                             partial (T, C), the last program of each channel block (a ticket,
                             _common.py's self-resetting counters) adds the T partials in index
                             order: deterministic, no floating-point atomics

constexprs: ACT (the activation's name), ORDER (1..3; piecewise-linear activations, elu and selu
have the same derivative for every order >= 2, so their order is passed as min(order, 2)),
FROM_Y, CLAMP (clamp >= 0: the clamp is applied), GRAD_SCALAR (an expanded scalar grad_output,
read as one value), BIAS: how the channel c of flat position i is found, c = (i // inner) % C:
  "none"    no bias;
  "wide"    inner >= BLOCK: a block spans at most two rows i // inner, so the two channels and
            their biases are scalars, selected per lane;
  "narrow"  per lane, from the block's first row r0 (int64 scalar) and the lane's int32 offset
            within the block's rows: c = (r0 % C + local // inner) % C.
Layout (as the C++ ops): contiguous x -> inner = prod(sizes[dim + 1:]); a 4-D channels_last x with
dim 1 -> inner = 1 in memory order (channels innermost); anything else -> x.contiguous(). The
backward follows y's layout by the same rule, x and grad_output brought to it (an expanded scalar
grad_output is read as one value instead). Outputs are empty_like of the tensor read, so they keep
its layout. Indices are int64.
"""

import torch
import triton
import triton.language as tl

from .._args import (check_bias_act, check_bias_act_backward, check_bias_act_backward_with_bias,
                     check_kernel_dtype, is_expanded_scalar, parse_act)
from ._common import (_EXP_C3, _EXP_C4, _EXP_C5, _EXP_C6, _EXP_C7, _LN2_HI, _LN2_LO, _LOG2E, BLOCK, TILE,
                      Walk, _block, _cdiv, _channel_partials_sum, _div, _exp_nonpos, _f32_div, _keep_nan,
                      _last_ticket, _Launch, _load, _num_warps, _sigmoid, _softplus, _tile_offsets, acc_dtype,
                      counters, num_warps)

# gan_math.h: kSeluLambda, kSeluAlpha (T(k) rounds them to float32 in float32 kernels)
SELU_LAMBDA = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_L = tl.constexpr(SELU_LAMBDA)
_SELU_A = tl.constexpr(SELU_ALPHA)
_SELU_LA = tl.constexpr(SELU_LAMBDA * SELU_ALPHA)
_EXPM1_C8 = tl.constexpr(_f32_div(1.0, 40320.0))


# ---- primitives ------------------------------------------------------------------------------------

@triton.jit
def _expm1_nonpos(x):
    """exp(x) - 1 for x <= 0 (NaN passes; -1 below -87 in float32)."""
    if x.dtype == tl.float64:
        # Kahan: expm1(x) = (u - 1) x / log(u), u = exp(x); exact where u rounds to 1 or 0
        u = tl.exp(x)
        um1 = u - 1.0
        one = u == 1.0
        q = um1 * _div(x, tl.log(tl.where(one, 0.5, u)))
        y = tl.where(one, x, tl.where(um1 == -1.0, -1.0, q))
    else:
        # Cody-Waite reduction x = k ln2 + r (k = 0 for |x| <= ln2 / 2: r = x exactly), then
        # expm1(r) = r + r^2 (1/2 + r/6 + ... + r^6/8!) and 2^k expm1(r) + (2^k - 1).
        k = tl.floor(x * _LOG2E + 0.5)
        r = tl.fma(k, _LN2_HI, x)
        r = tl.fma(k, _LN2_LO, r)
        q = tl.fma(r, _EXPM1_C8, _EXP_C7)
        q = tl.fma(q, r, _EXP_C6)
        q = tl.fma(q, r, _EXP_C5)
        q = tl.fma(q, r, _EXP_C4)
        q = tl.fma(q, r, _EXP_C3)
        q = tl.fma(q, r, 0.5)
        p = tl.fma(q, r * r, r)
        # 2^k from its exponent bits; k is only used where x >= -87 (k >= -126).
        ki = tl.where(x >= -87.0, k, 0.0).to(tl.int32)
        scale = ((ki + 127) << 23).to(tl.float32, bitcast=True)
        y = tl.where(x < -87.0, -1.0, tl.fma(scale, p, scale - 1.0))
    return y


@triton.jit
def _tanh(x):
    """tanh(x) = sign(x) (-e) / (2 + e), e = expm1(-2 |x|) in (-1, 0]."""
    e = _expm1_nonpos(-2.0 * tl.abs(x))
    t = _div(-e, 2.0 + e)
    return tl.where(x < 0.0, -t, t)


@triton.jit
def _nonpos(x):
    """x where x <= 0, else 0 (NaN passes: the branch of x <= 0 of elu/selu)."""
    return tl.where(x > 0.0, 0.0, x)


# ---- activations (gan_math.h act_value, act_derivative, act_derivative_from_y) --------------------

@triton.jit
def _act_value(x, alpha, ACT: tl.constexpr):
    if ACT == "linear":
        f = x
    elif ACT == "relu":
        f = tl.where(x < 0.0, 0.0, x)  # NaN passes, as torch.relu
    elif ACT == "lrelu":
        f = tl.where(x > 0.0, x, x * alpha)
    elif ACT == "tanh":
        f = _tanh(x)
    elif ACT == "sigmoid":
        f = _sigmoid(x)
    elif ACT == "elu":
        f = tl.where(x > 0.0, x, alpha * _expm1_nonpos(_nonpos(x)))
    elif ACT == "selu":
        f = _SELU_L * tl.where(x > 0.0, x, _SELU_A * _expm1_nonpos(_nonpos(x)))
    elif ACT == "softplus":
        f = _softplus(x)
    else:  # swish
        f = x * _sigmoid(x)
    return f


@triton.jit
def _const(x, v):
    return tl.full(x.shape, v, x.dtype)


@triton.jit
def _sigmoid_derivative(s, K: tl.constexpr):
    """d^K sigmoid / dx^K from s = sigmoid(x), K in 0..3: s, s1 = s (1 - s), s1 (1 - 2 s),
    s1 (1 - 6 s + 6 s^2)."""
    if K == 0:
        d = s
    else:
        s1 = s * (1.0 - s)
        if K == 1:
            d = s1
        elif K == 2:
            d = s1 * (1.0 - 2.0 * s)
        else:
            d = s1 * (1.0 - 6.0 * s + 6.0 * s * s)
    return d


@triton.jit
def _exp_branch_derivative(v, neg, slope, ORDER: tl.constexpr):
    """elu / selu derivatives from v (x, or f = f(x) of the same sign), neg their value for x < 0.
    Order 1: slope where v > 0, else neg (torch: elu'(0) = alpha); order >= 2: neg where v < 0,
    else 0 (torch's double backward masks with x < 0); NaN takes the neg branch."""
    if ORDER == 1:
        d = tl.where(v > 0.0, slope, neg)
    else:
        d = tl.where(v >= 0.0, 0.0, neg)
    return d


@triton.jit
def _act_derivative_from_y(f, alpha, ACT: tl.constexpr, ORDER: tl.constexpr):
    """d^ORDER f / dx^ORDER (ORDER in 1..3) from f = f(x), for the activations
    act_derivatives_from_y accepts (softplus and swish never come here)."""
    if ACT == "linear":
        if ORDER == 1:
            d = _keep_nan(f, _const(f, 1.0))
        else:
            d = _keep_nan(f, _const(f, 0.0))
    elif ACT == "relu":
        if ORDER == 1:
            d = _keep_nan(f, tl.where(f > 0.0, 1.0, 0.0))  # relu'(0) = 0, as torch's
        else:
            d = _keep_nan(f, _const(f, 0.0))
    elif ACT == "lrelu":
        if ORDER == 1:
            d = _keep_nan(f, tl.where(f > 0.0, 1.0, alpha))
        else:
            d = _keep_nan(f, _const(f, 0.0))
    elif ACT == "tanh":
        q = 1.0 - f * f
        if ORDER == 1:
            d = q
        elif ORDER == 2:
            d = -2.0 * f * q
        else:
            d = q * (6.0 * f * f - 2.0)
    elif ACT == "sigmoid":
        d = _sigmoid_derivative(f, ORDER)
    elif ACT == "elu":
        d = _exp_branch_derivative(f, f + alpha, 1.0, ORDER)  # alpha e^x = f + alpha
    else:  # selu
        d = _exp_branch_derivative(f, f + _SELU_LA, _SELU_L, ORDER)
    return d


@triton.jit
def _act_derivative(x, alpha, ACT: tl.constexpr, ORDER: tl.constexpr):
    """d^ORDER f / dx^ORDER at x (ORDER in 1..3), through the formulas in f where they exist."""
    if ACT == "linear" or ACT == "relu" or ACT == "lrelu":
        # a slope chosen by x > 0 and NaN kept: the formula in f read on x itself (any alpha)
        d = _act_derivative_from_y(x, alpha, ACT, ORDER)
    elif ACT == "tanh":
        d = _act_derivative_from_y(_tanh(x), alpha, ACT, ORDER)
    elif ACT == "sigmoid":
        d = _sigmoid_derivative(_sigmoid(x), ORDER)
    elif ACT == "softplus":
        d = _sigmoid_derivative(_sigmoid(x), ORDER - 1)  # softplus' = sigmoid
    elif ACT == "swish":
        # (x s)^(k) = k s^(k-1) + x s^(k)
        s = _sigmoid(x)
        d = ORDER * _sigmoid_derivative(s, ORDER - 1) + x * _sigmoid_derivative(s, ORDER)
    elif ACT == "elu":
        d = _exp_branch_derivative(x, alpha * _exp_nonpos(_nonpos(x)), 1.0, ORDER)
    else:  # selu
        d = _exp_branch_derivative(x, _SELU_LA * _exp_nonpos(_nonpos(x)), _SELU_L, ORDER)
    return d


@triton.jit
def _bias_act_value(v, alpha, gain, clamp, ACT: tl.constexpr, CLAMP: tl.constexpr):
    """clamp(gain f(v), -clamp, clamp) (CLAMP: clamp >= 0; NaN passes)."""
    y = gain * _act_value(v, alpha, ACT)
    if CLAMP:
        y = tl.where(y > clamp, clamp, tl.where(y < -clamp, -clamp, y))
    return y


@triton.jit
def _bias_act_derivative(v, alpha, gain, clamp, ACT: tl.constexpr, ORDER: tl.constexpr,
                         CLAMP: tl.constexpr):
    """gain f^(ORDER)(v), 0 where the clamp cuts gain f(v)."""
    d = gain * _act_derivative(v, alpha, ACT, ORDER)
    if CLAMP:
        y = gain * _act_value(v, alpha, ACT)
        d = tl.where((y > clamp) | (y < -clamp), 0.0, d)
    return d


@triton.jit
def _bias_act_derivative_from_y(y, alpha, gain, clamp, ACT: tl.constexpr, ORDER: tl.constexpr,
                                CLAMP: tl.constexpr):
    """The same from y: f = y / gain; 0 where |y| reached the clamp."""
    d = gain * _act_derivative_from_y(_div(y, gain), alpha, ACT, ORDER)
    if CLAMP:
        d = tl.where((y >= clamp) | (y <= -clamp), 0.0, d)
    return d


# ---- kernels ----------------------------------------------------------------------------------------

@triton.jit
def _bias_at(b_ptr, offs, start, inner, C, BIAS: tl.constexpr, ACC: tl.constexpr):
    """b[(i // inner) % C] for the flat positions offs of the block at start (see BIAS above)."""
    r0 = start // inner
    if BIAS == "wide":
        b0 = tl.load(b_ptr + r0 % C).to(ACC)
        b1 = tl.load(b_ptr + (r0 + 1) % C).to(ACC)
        v = tl.where(offs >= (r0 + 1) * inner, b1, b0)
    else:
        c = ((r0 % C).to(tl.int32) + (offs - r0 * inner).to(tl.int32) // inner) % C
        v = tl.load(b_ptr + c).to(ACC)
    return v


@triton.jit
def _bias_act_block(x_ptr, y_ptr, offs, mask, bias, alpha, gain, clamp, ACT: tl.constexpr,
                    CLAMP: tl.constexpr, BIAS: tl.constexpr, ACC: tl.constexpr, MASKED: tl.constexpr):
    x = _load(x_ptr + offs, mask, ACC, MASKED)
    if BIAS != "none":
        x = x + bias
    y = _bias_act_value(x, alpha, gain, clamp, ACT, CLAMP)
    if MASKED:
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty))


@triton.jit
def _bias_act_kernel(x_ptr, b_ptr, y_ptr, n, inner, C,
                     alpha: tl.float64, gain: tl.float64, clamp: tl.float64,
                     ACT: tl.constexpr, CLAMP: tl.constexpr, BIAS: tl.constexpr, ACC: tl.constexpr,
                     BLOCK: tl.constexpr):
    start, offs, mask = _block(n, BLOCK)
    a = tl.full([], alpha, ACC)
    g = tl.full([], gain, ACC)
    cl = tl.full([], clamp, ACC)
    if BIAS == "none":
        bias = a  # unused
    else:
        bias = _bias_at(b_ptr, offs, start, inner, C, BIAS, ACC)
    if start + BLOCK <= n:
        _bias_act_block(x_ptr, y_ptr, offs, mask, bias, a, g, cl, ACT, CLAMP, BIAS, ACC, False)
    else:
        _bias_act_block(x_ptr, y_ptr, offs, mask, bias, a, g, cl, ACT, CLAMP, BIAS, ACC, True)


@triton.jit
def _bias_act_backward_block(g_ptr, x_ptr, y_ptr, out_ptr, offs, mask, g0, bias, alpha, gain, clamp,
                             ACT: tl.constexpr, ORDER: tl.constexpr, FROM_Y: tl.constexpr,
                             CLAMP: tl.constexpr, BIAS: tl.constexpr, GRAD_SCALAR: tl.constexpr,
                             ACC: tl.constexpr, MASKED: tl.constexpr):
    if FROM_Y:
        y = _load(y_ptr + offs, mask, ACC, MASKED)
        d = _bias_act_derivative_from_y(y, alpha, gain, clamp, ACT, ORDER, CLAMP)
    else:
        x = _load(x_ptr + offs, mask, ACC, MASKED)
        if BIAS != "none":
            x = x + bias
        d = _bias_act_derivative(x, alpha, gain, clamp, ACT, ORDER, CLAMP)
    if GRAD_SCALAR:
        r = g0 * d
    else:
        r = _load(g_ptr + offs, mask, ACC, MASKED) * d
    if MASKED:
        tl.store(out_ptr + offs, r.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptr + offs, r.to(out_ptr.dtype.element_ty))


@triton.jit
def _bias_act_backward_kernel(g_ptr, x_ptr, b_ptr, y_ptr, out_ptr, n, inner, C,
                              alpha: tl.float64, gain: tl.float64, clamp: tl.float64,
                              ACT: tl.constexpr, ORDER: tl.constexpr, FROM_Y: tl.constexpr,
                              CLAMP: tl.constexpr, BIAS: tl.constexpr, GRAD_SCALAR: tl.constexpr,
                              ACC: tl.constexpr, BLOCK: tl.constexpr):
    """out = grad_output * d^ORDER y / dx^ORDER (from x + b when not FROM_Y, else from y)."""
    start, offs, mask = _block(n, BLOCK)
    a = tl.full([], alpha, ACC)
    g = tl.full([], gain, ACC)
    cl = tl.full([], clamp, ACC)
    if GRAD_SCALAR:
        g0 = tl.load(g_ptr).to(ACC)
    else:
        g0 = a  # unused
    if FROM_Y or BIAS == "none":
        bias = a  # unused
    else:
        bias = _bias_at(b_ptr, offs, start, inner, C, BIAS, ACC)
    if start + BLOCK <= n:
        _bias_act_backward_block(g_ptr, x_ptr, y_ptr, out_ptr, offs, mask, g0, bias, a, g, cl,
                                 ACT, ORDER, FROM_Y, CLAMP, BIAS, GRAD_SCALAR, ACC, False)
    else:
        _bias_act_backward_block(g_ptr, x_ptr, y_ptr, out_ptr, offs, mask, g0, bias, a, g, cl,
                                 ACT, ORDER, FROM_Y, CLAMP, BIAS, GRAD_SCALAR, ACC, True)


@triton.jit
def _bias_act_backward_with_bias_kernel(g_ptr, x_ptr, b_ptr, y_ptr, out_ptr, partial_ptr, counter_ptr, gb_ptr,
                                        S, C, per_outer, s_outer, s_s, s_c,
                                        alpha: tl.float64, gain: tl.float64, clamp: tl.float64,
                                        ACT: tl.constexpr, FROM_Y: tl.constexpr, CLAMP: tl.constexpr,
                                        ACC: tl.constexpr, ITERS: tl.constexpr, BLOCK_T: tl.constexpr,
                                        BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """out = grad_output * dy/dx (order 1) over tiles of (outer, s, c), and grad_bias[c] = the sum
    of out (as stored) over everything but c, from the tiles' partial sums."""
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    T = tl.num_programs(0)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    a = tl.full([], alpha, ACC)
    g = tl.full([], gain, ACC)
    cl = tl.full([], clamp, ACC)
    if FROM_Y:
        bias = tl.zeros([BLOCK_C], ACC)  # unused
    else:
        bias = tl.load(b_ptr + c, mask=cmask, other=0.0).to(ACC)
    acc = tl.zeros([BLOCK_S, BLOCK_C], ACC)
    for i in range(ITERS):
        offs, mask = _tile_offsets(pid_t, pid_c, i, S, C, per_outer, s_outer, s_s, s_c,
                                   ITERS, BLOCK_S, BLOCK_C)
        if FROM_Y:
            v = tl.load(y_ptr + offs, mask=mask, other=0.0).to(ACC)
            d = _bias_act_derivative_from_y(v, a, g, cl, ACT, 1, CLAMP)
        else:
            v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC) + bias[None, :]
            d = _bias_act_derivative(v, a, g, cl, ACT, 1, CLAMP)
        r = (tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC) * d).to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + offs, r, mask=mask)
        acc += tl.where(mask, r.to(ACC), 0.0)
    tl.store(partial_ptr + pid_t.to(tl.int64) * C + c, tl.sum(acc, axis=0), mask=cmask)
    if _last_ticket(counter_ptr + pid_c, T):
        total = _channel_partials_sum(partial_ptr, T, C, c, cmask, ACC, BLOCK_T, BLOCK_C)
        tl.store(gb_ptr + c, total.to(gb_ptr.dtype.element_ty), mask=cmask)


# ---- launch helpers ----------------------------------------------------------------------------------

def kernel_order(act, order):
    """The ORDER constexpr: every order >= 2 of linear, relu, lrelu, elu and selu is the same."""
    return order if act in ("tanh", "sigmoid", "softplus", "swish") else min(order, 2)


def walkable(t, dim):
    """Whether the kernels read t (x; y in the backward) in its own memory order: contiguous, or
    4-D channels_last with dim 1 (channels innermost); anything else is made contiguous."""
    return t.is_contiguous() or (t.dim() == 4 and dim == 1 and t.is_contiguous(memory_format=torch.channels_last))


def bias_map(t, has_bias, dim):
    """(BIAS mode, inner, C) of the channel map c = (i // inner) % C of a walkable t."""
    if not has_bias:
        return "none", 1, 1
    C = t.size(dim)
    inner = 1
    if t.is_contiguous():
        for s in t.shape[dim + 1:]:
            inner *= s
    return ("wide" if inner >= BLOCK else "narrow"), inner, C


def _like(t, ref, dtype):
    """t in ref's memory layout (ref dense, t of its shape) and dtype: t itself when it already is."""
    if t.dtype == dtype and t.stride() == ref.stride():
        return t
    return torch.empty_like(ref, dtype=dtype).copy_(t)


# ---- launchers (the ops of csrc/ganfast.cpp) --------------------------------------------------------

def bias_act(x, b, dim, act, alpha, gain, clamp):
    op = "ganfast::bias_act"
    dim = check_bias_act(op, x, b, dim)
    act = parse_act(act)
    xw = x if walkable(x, dim) else x.contiguous()
    y = torch.empty_like(xw)
    n = xw.numel()
    if n == 0:
        return y
    check_kernel_dtype(xw.dtype, "ganfast_bias_act")
    mode, inner, C = bias_map(xw, b is not None, dim)
    bb = b.to(xw.dtype).contiguous() if b is not None else xw
    _, tl_acc = acc_dtype(xw.dtype)
    with _Launch(xw.device):
        _bias_act_kernel[(_cdiv(n, BLOCK),)](
            xw, bb, y, n, inner, C, float(alpha), float(gain), float(clamp),
            ACT=act, CLAMP=clamp >= 0, BIAS=mode, ACC=tl_acc, BLOCK=BLOCK, num_warps=num_warps(xw.dtype),
        )
    return y


def bias_act_backward(grad_output, x, b, y, dim, act, alpha, gain, clamp, order):
    op = "ganfast::bias_act_backward"
    act = parse_act(act)
    dim = check_bias_act_backward(op, grad_output, x, b, y, dim, act, alpha, order)
    # y's layout rules (x and grad_output are brought to it); the bias map is y's
    yw = y if walkable(y, dim) else y.contiguous()
    out = torch.empty_like(yw)
    n = yw.numel()
    if n == 0:
        return out
    check_kernel_dtype(yw.dtype, "ganfast_bias_act")
    has_bias = x is not None and b is not None
    mode, inner, C = bias_map(yw, has_bias, dim)
    grad_is_scalar = is_expanded_scalar(grad_output)  # read as one value
    go = grad_output.as_strided((), ()).to(yw.dtype) if grad_is_scalar else _like(grad_output, yw, yw.dtype)
    xw = _like(x, yw, yw.dtype) if x is not None else yw
    bb = b.to(yw.dtype).contiguous() if has_bias else yw
    _, tl_acc = acc_dtype(yw.dtype)
    with _Launch(yw.device):
        _bias_act_backward_kernel[(_cdiv(n, BLOCK),)](
            go, xw, bb, yw, out, n, inner, C, float(alpha), float(gain), float(clamp),
            ACT=act, ORDER=kernel_order(act, order), FROM_Y=x is None, CLAMP=clamp >= 0, BIAS=mode,
            GRAD_SCALAR=grad_is_scalar, ACC=tl_acc, BLOCK=BLOCK, num_warps=num_warps(yw.dtype),
        )
    return out


def bias_act_backward_with_bias(grad_output, x, b, y, dim, act, alpha, gain, clamp):
    """(bias_act_backward(..., order 1), its sum over every dim but dim in b's dtype), one launch."""
    op = "ganfast::bias_act_backward_with_bias"
    act = parse_act(act)
    dim = check_bias_act_backward_with_bias(op, grad_output, x, b, y, dim, act, alpha)
    yw = y if walkable(y, dim) else y.contiguous()
    out = torch.empty_like(yw)
    C = b.size(0)
    torch_acc, tl_acc = acc_dtype(yw.dtype)
    if yw.numel() == 0:
        return out, torch.zeros(C, dtype=b.dtype, device=b.device)
    check_kernel_dtype(yw.dtype, "ganfast_bias_act")
    go = _like(grad_output, yw, yw.dtype)
    xw = _like(x, yw, yw.dtype) if x is not None else yw
    bb = b.to(yw.dtype).contiguous()
    views = (go, xw, yw, out)
    if yw.is_contiguous():  # walked as (outer, C, inner); channels_last 4-D (dim 1) as it is
        outer = 1
        for s in yw.shape[:dim]:
            outer *= s
        views = tuple(t.view(outer, C, -1) for t in views)
    walk = Walk(views[2])
    partial = torch.empty((walk.T, C), dtype=torch_acc, device=yw.device)
    grad_bias = torch.empty(C, dtype=torch_acc, device=yw.device)
    with _Launch(yw.device):
        _bias_act_backward_with_bias_kernel[(walk.T, walk.cblocks)](
            views[0], views[1], bb, views[2], views[3], partial, counters(yw.device, walk.cblocks), grad_bias,
            *walk.args(), float(alpha), float(gain), float(clamp),
            ACT=act, FROM_Y=x is None, CLAMP=clamp >= 0, ACC=tl_acc, ITERS=walk.iters,
            BLOCK_T=max(1, min(32, TILE // walk.block_c)), BLOCK_S=walk.block_s, BLOCK_C=walk.block_c,
            num_warps=_num_warps(walk.block_s * walk.block_c))
    return out, grad_bias.to(b.dtype)
