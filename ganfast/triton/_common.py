"""What the Triton kernels of every op family share (moved here from losses.py unchanged):

  * the float32 primitives of csrc/gan_math.h (exp(x) for x <= 0, log1p(e) for e in [0, 1],
    softplus, sigmoid) written as its host polynomials with fma and IEEE division, so the
    interpreter and the GPU compute what the CPU kernels compute; float64 uses tl.exp / tl.log;
  * the deterministic reduction pieces: per-program partials, a ticket (atomic counter) taken by
    each program, the last one summing the partials in index order;
  * the launch helpers: accumulation dtype, warps, the reduction partition, scratch buffers and
    the launch context.
"""

import threading

import numpy as np
import torch
import triton
import triton.language as tl

BLOCK = 1024          # elements per block (per program and loop step)
PBLOCK = 1024         # lanes of the final sum over the partials
MAX_PARTIALS = 2048   # at most this many programs (partials) per reduction; read at call time


# ---- float32 constants of gan_math.h, rounded as the C++ float literals/expressions are --------

def _f32(x):
    return float(np.float32(x))


def _f32_div(a, b):
    return float(np.float32(a) / np.float32(b))


_LOG2E = tl.constexpr(_f32(1.44269504088896341))
_LN2_HI = tl.constexpr(_f32(-0.693145751953125))
_LN2_LO = tl.constexpr(_f32(-1.428606765330187e-06))
_EXP_C7 = tl.constexpr(_f32_div(1.0, 5040.0))
_EXP_C6 = tl.constexpr(_f32_div(1.0, 720.0))
_EXP_C5 = tl.constexpr(_f32_div(1.0, 120.0))
_EXP_C4 = tl.constexpr(_f32_div(1.0, 24.0))
_EXP_C3 = tl.constexpr(_f32_div(1.0, 6.0))
_SQRT2 = tl.constexpr(_f32(1.41421356))
_LN2 = tl.constexpr(_f32(0.693147180559945309))
_LOG_C9 = tl.constexpr(_f32_div(2.0, 9.0))
_LOG_C7 = tl.constexpr(_f32_div(2.0, 7.0))
_LOG_C5 = tl.constexpr(_f32_div(2.0, 5.0))
_LOG_C3 = tl.constexpr(_f32_div(2.0, 3.0))


# ---- primitives (csrc/gan_math.h) -------------------------------------------------------------

@triton.jit
def _div(a, b):
    """a / b rounded to nearest (Triton's fp32 '/' is div.full, 2 ulp, on the GPU)."""
    if b.dtype == tl.float64:
        q = a / b
    else:
        q = tl.div_rn(a, b)
    return q


@triton.jit
def _exp_nonpos(x):
    """exp(x) for x <= 0 (NaN passes)."""
    if x.dtype == tl.float64:
        y = tl.exp(x)
    else:
        # Cody-Waite reduction x = k ln2 + r, then Taylor to degree 7 (gan_math.h exp_nonpos).
        k = tl.floor(x * _LOG2E + 0.5)
        r = tl.fma(k, _LN2_HI, x)
        r = tl.fma(k, _LN2_LO, r)
        p = tl.fma(r, _EXP_C7, _EXP_C6)
        p = tl.fma(p, r, _EXP_C5)
        p = tl.fma(p, r, _EXP_C4)
        p = tl.fma(p, r, _EXP_C3)
        p = tl.fma(p, r, 0.5)
        p = tl.fma(p, r, 1.0)
        p = tl.fma(p, r, 1.0)
        # 2^k from its exponent bits; k is only used where x >= -87 (k >= -126).
        ki = tl.where(x >= -87.0, k, 0.0).to(tl.int32)
        scale = ((ki + 127) << 23).to(tl.float32, bitcast=True)
        y = tl.where(x < -87.0, 0.0, p * scale)
    return y


@triton.jit
def _log1p_unit(e):
    """log(1 + e) for e in [0, 1] (NaN passes)."""
    u = 1.0 + e
    if e.dtype == tl.float64:
        # Kahan: log1p(e) = log(u) * e / (u - 1), exact where u rounds to 1.
        one = u == 1.0
        y = tl.where(one, e, tl.log(u) * _div(e, tl.where(one, 1.0, u - 1.0)))
    else:
        # atanh series around 1 after halving u > sqrt(2), then the rounding of u put back
        # to first order (gan_math.h log1p_unit).
        halve = u > _SQRT2
        m = tl.where(halve, 0.5 * u, u)
        s = _div(m - 1.0, m + 1.0)
        s2 = s * s
        q = tl.fma(s2, _LOG_C9, _LOG_C7)
        q = tl.fma(q, s2, _LOG_C5)
        q = tl.fma(q, s2, _LOG_C3)
        q = tl.fma(q, s2, 2.0)
        log_u = tl.fma(q, s, tl.where(halve, _LN2, 0.0))
        y = log_u + _div(e - (u - 1.0), u)
    return y


@triton.jit
def _softplus(x):
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|); NaN propagates through the second term."""
    return tl.where(x > 0.0, x, 0.0) + _log1p_unit(_exp_nonpos(-tl.abs(x)))


@triton.jit
def _sigmoid(x):
    e = _exp_nonpos(-tl.abs(x))
    p = _div(1.0, 1.0 + e)
    return tl.where(x >= 0.0, p, e * p)


@triton.jit
def _keep_nan(x, d):
    """Keeps a NaN logit visible in a piecewise-constant derivative."""
    return tl.where(x != x, x, d.to(x.dtype))


# ---- loads and reductions ------------------------------------------------------------------

@triton.jit
def _load(ptrs, mask, ACC: tl.constexpr, MASKED: tl.constexpr):
    if MASKED:
        v = tl.load(ptrs, mask=mask, other=0.0)
    else:
        v = tl.load(ptrs)
    return v.to(ACC)


@triton.jit
def _block(n, BLOCK: tl.constexpr):
    """This program's block of an elementwise kernel over n elements: (start, int64 offsets, mask)."""
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    return start, offs, offs < n


@triton.jit
def _mean(total, n, ACC: tl.constexpr):
    """total / n; the mean of nothing is NaN."""
    q = _div(total, tl.cast(tl.maximum(n, 1), ACC))
    nan = tl.full([], 0x7FC00000, tl.int32).to(tl.float32, bitcast=True)  # (a NaN global constexpr
    return tl.where(n > 0, q, nan.to(ACC))                                 # trips Triton's NaN != NaN check)


@triton.jit
def _sum_partials(partial_ptr, count, ACC: tl.constexpr, PBLOCK: tl.constexpr):
    """partials[0:count] summed in a fixed order (lane-wise, then a tree)."""
    acc = tl.zeros([PBLOCK], ACC)
    for s in range(0, count, PBLOCK):
        o = s + tl.arange(0, PBLOCK)
        acc += tl.load(partial_ptr + o, mask=o < count, other=0.0, cache_modifier=".cg")
    return tl.sum(acc, axis=0)


@triton.jit
def _last_ticket(counter_ptr, count):
    """Takes a ticket after this program's stores; True for the last of `count` programs, which
    puts the counter back to 0: it lives in a cached buffer (counters()) that the next launch on
    the stream reuses, so no memset launch precedes a reduction."""
    tl.debug_barrier()  # every store of this program before its release
    last = tl.atomic_add(counter_ptr, 1, sem="acq_rel") == count - 1
    tl.store(counter_ptr, tl.zeros([], tl.int32), mask=last)
    return last


@triton.jit
def _take_ticket(partial_ptr, counter_ptr, pid, s, s2, TWO: tl.constexpr):
    """Publishes this program's partial(s); True for the last program (it sums them)."""
    G = tl.num_programs(0)
    tl.store(partial_ptr + pid, s)
    if TWO:
        tl.store(partial_ptr + G + pid, s2)
    return _last_ticket(counter_ptr, G)


@triton.jit
def _channel_partials_sum(ptr, T, C, c, cmask, ACC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per channel c, the T partials of ptr (T, C) added in index order (lane-wise over BLOCK_T
    rows, then a tree: a fixed order), in ACC: what the last program of a channel block (a ticket)
    adds up (batch_norm_act's backward, bias_act's bias gradient). .cg: other programs wrote them."""
    acc = tl.zeros([BLOCK_T, BLOCK_C], ACC)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        po = t[:, None].to(tl.int64) * C + c[None, :]
        pm = (t[:, None] < T) & cmask[None, :]
        acc += tl.load(ptr + po, mask=pm, other=0.0, cache_modifier=".cg")
    return tl.sum(acc, axis=0)


# ---- per-channel tiles (batch_norm_act, conv_block, bias_act's bias gradient) -------------------
# A tensor walked as (outer, s, c) with strides (s_outer, s_s, s_c), in 2-D tiles [BLOCK_S, BLOCK_C]
# of one outer index: the per-channel values are loaded once per tile as a [BLOCK_C] vector, and
# the tile is contiguous along s (NCHW) or c (channels innermost). See batch_norm_act.py.

TILE = 2048          # elements of one [BLOCK_S, BLOCK_C] tile
MAX_TILES = 512      # the statistics partials: at most about this many tile rows T
MAX_BLOCK_C = 128    # channels per tile (channels_last)


@triton.jit
def _tile_offsets(pid_t, pid_c, i, S, C, per_outer, s_outer, s_s, s_c, ITERS: tl.constexpr,
                  BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """Offsets (int64) and mask of tile i of program (pid_t, pid_c), plus its channel indices.
    Tile rows pid_t: per_outer rows per outer index, each covering ITERS * BLOCK_S positions s."""
    outer = pid_t // per_outer
    s0 = (pid_t % per_outer).to(tl.int64) * (ITERS * BLOCK_S) + i * BLOCK_S
    s = s0 + tl.arange(0, BLOCK_S)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs = outer.to(tl.int64) * s_outer + s[:, None] * s_s + c[None, :].to(tl.int64) * s_c
    mask = (s[:, None] < S) & (c[None, :] < C)
    return offs, mask


def _pow2(n):
    return triton.next_power_of_2(max(int(n), 1))


class Walk:
    """How the kernels walk an (N, C, *) tensor (see the module docstring), and its tiles."""

    def __init__(self, t, tile=None, max_tiles=None):
        tile = TILE if tile is None else tile
        max_tiles = MAX_TILES if max_tiles is None else max_tiles
        N, C = t.shape[0], t.shape[1]
        HW = 1
        for s in t.shape[2:]:
            HW *= s
        self.C = C
        channels_inner = HW == 1 or (t.dim() == 4 and not t.is_contiguous()
                                     and t.is_contiguous(memory_format=torch.channels_last))
        if channels_inner:  # channels_last, or nothing but (N, C): channels innermost
            self.outer, self.S = 1, N * HW
            self.strides = (0, C, 1)
            self.block_c = min(_pow2(C), MAX_BLOCK_C, tile)
            self.block_s = max(1, tile // self.block_c)
        else:
            self.outer, self.S = N, HW
            self.strides = (C * HW, 1, HW)
            self.block_s = min(_pow2(HW), tile)
            self.block_c = max(1, min(_pow2(C), MAX_BLOCK_C, tile // self.block_s))
        blocks = self.outer * _cdiv(self.S, self.block_s)
        # statistics tiles: ITERS blocks of s each, at most about max_tiles tile rows
        self.iters = max(1, _cdiv(blocks, max_tiles))
        self.per_outer = _cdiv(self.S, self.block_s * self.iters)
        self.T = self.outer * self.per_outer
        self.cblocks = _cdiv(C, self.block_c)

    def args(self):
        return (self.S, self.C, self.per_outer) + self.strides


def _num_warps(block):
    return 4 if block <= 1024 else 8


# ---- launch helpers ----------------------------------------------------------------------------

_TORCH_ACC = {torch.float64: torch.float64}
_TL_ACC = {torch.float64: tl.float64}


def acc_dtype(dtype):
    """(torch, triton) accumulation dtype: float64 for float64, float32 otherwise."""
    return _TORCH_ACC.get(dtype, torch.float32), _TL_ACC.get(dtype, tl.float32)


def num_warps(dtype):
    """Warps per program: 16 bytes of each operand per thread and access, at the fewest registers
    (4 float32 / float64 elements at 8 warps: ~60-120 registers; 8 half elements at 4 warps)."""
    return 4 if dtype in (torch.float16, torch.bfloat16) else 8


def _cdiv(a, b):
    return -(-a // b)


def _partition(nblocks):
    """(programs, blocks per program) of a reduction over nblocks blocks: at most MAX_PARTIALS
    programs, chosen from the element count alone (so results do not depend on the device)."""
    iters = max(1, _cdiv(nblocks, MAX_PARTIALS))
    return max(1, _cdiv(nblocks, iters)), iters


# Ticket counters, one int32 buffer per (device, stream): zeroed once when made, then left at 0 by
# every kernel (_last_ticket), so launches in stream order can share it. Per stream because kernels
# on two streams may run at once; per thread on CPU (the interpreter), where threads are the
# concurrency. Under CUDA-graph capture the buffer of the capture stream is made (its memset
# captured) or reused; either way every replay leaves it at 0. Not while torch.compile traces: a
# traced tensor must not be cached, nor a cached one become a mutated graph constant.
_COUNTERS = {}


def _counter_key(device):
    if device.type == "cuda":
        return device, torch.cuda.current_stream(device).cuda_stream
    return device, threading.get_ident()


def counters(device, n=1):
    """n ticket counters at 0 on device, from the cache of the current stream."""
    if torch.compiler.is_compiling():
        return torch.zeros(n, dtype=torch.int32, device=device)  # traced: the graph's own
    key = _counter_key(device)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < n:
        buf = _COUNTERS[key] = torch.zeros(max(n, 64), dtype=torch.int32, device=device)
    return buf


def _scratch(programs, halves, acc, device):
    """The partials buffer and the ticket counter of a reduction over `programs` programs."""
    partial = torch.empty(max(programs, 1) * halves, dtype=acc, device=device)
    return partial, counters(device)


class _Launch:
    """Launch context. On CUDA tensors: their device is made current (Triton launches on the
    current device). On CPU tensors (the interpreter): numpy's floating-point warnings (log(0),
    0/0 in masked-off lanes) are silenced, as the C++ kernels raise none."""

    def __init__(self, device):
        self.device = device
        self._ctx = None

    def __enter__(self):
        if self.device.type == "cpu":
            self._state = np.seterr(all="ignore")
        elif self.device.type == "cuda":
            self._ctx = torch.cuda.device(self.device)
            self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:
            # a launch stopped part way (an interrupted interpreter run) may leave a counter
            # taken: its buffer is dropped, the next launch makes a fresh one
            _COUNTERS.pop(_counter_key(self.device), None)
        if self.device.type == "cpu":
            np.seterr(**self._state)
        elif self._ctx is not None:
            self._ctx.__exit__(*exc)
        return False
