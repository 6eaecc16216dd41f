"""The static GPU resource report: every Triton kernel of ganfast/triton in every configuration its
launchers use, compiled ahead of time for sm_80 and sm_90, and every CUDA kernel of csrc/cuda
compiled by nvcc for the same architectures, each with its registers, shared memory, stack frame
and register spills, as tables. Needs no GPU: `python -m ganfast.bench.gpu_report` (or
`ganfast bench --gpu-report`) writes <out>/gpu_report.{json,md} (--out, default ./ganfast-bench;
the checkout's committed report: --out benchmarks/results) and exits 1 if
anything fails to compile, warns (CUDA) or spills; tests/test_triton_compile.py and
tests/test_cuda_build.py run the same functions.

Where the numbers come from
  Triton  triton.compile(ASTSource(kernel, signature, constexprs, attrs),
          target=GPUTarget("cuda", cc, 32)) for each configuration below (launch options: num_warps,
          num_stages as the launchers pass them), in a subprocess without TRITON_INTERPRET, one
          worker per CPU. Triton runs `ptxas -v` itself (the ptxas it ships) and prints the log
          when knobs.nvidia.dump_ptxas_log is set; a stages hook (_capture_ptxas_logs) keeps that
          log beside the kernel in Triton's cache (one more file per kernel; the cache key is
          unchanged), so no second ptxas run is needed and reruns cost only cache lookups. A
          kernel already cached without its log (compiled earlier, e.g. by the runtime) goes once
          through Triton's make_cubin again on its PTX with its options (Triton's exact flags);
          that cubin must equal the cached one in every section but the debug line tables, which
          record the .py files' mtimes (`log_matches_cubin`), so the log always describes the
          kernel that launches. cc 90 compiles for sm_90a (Triton's choice), named so in `sm`.
  CUDA    nvcc -c -O3 -Xptxas -v -gencode sm_80 and sm_90 per csrc/cuda/*.cu with the flags torch's
          CUDAExtension passes (setup.py's toolkit: find_cuda_home); one row per kernel entry that
          ptxas compiled, names demangled with cu++filt (c++filt if the toolkit lacks it); every
          line of nvcc/ptxas output that says "warning" is kept.

Columns (per kernel entry and architecture, all from `ptxas -v`, except where said)
  registers      registers per thread ("Used N registers")
  shared_bytes   shared memory per block: Triton's launch-time dynamic allocation
                 (compiled.metadata.shared) plus ptxas's static "smem"; CUDA: ptxas's static smem
                 (no ganfast CUDA kernel uses dynamic shared memory)
  stack_bytes    the per-thread stack frame ("N bytes stack frame", in local memory): spill slots,
                 and arrays or structs the compiler could not keep in registers (no ganfast PTX
                 declares a .local array, so a non-zero frame here has been spill slots)
  spill_stores / spill_loads   bytes of register spill stores / loads ("N bytes spill stores,
                 M bytes spill loads"); spill_bytes is their sum. Any spill fails the report
  cmem_bytes     constant bank 0 (kernel arguments), CUDA only (ptxas prints it for sm_80)
  barriers       named barriers used
cuobjdump's LOCAL column is not a spill count (it stays 0 while ptxas reports spills), which is
why spills are read from ptxas's log.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import importlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

CCS = (80, 90)
MODULES = ("losses", "penalty", "bias_act", "batch_norm_act", "conv_block", "info_loss", "cycle_loss",
           "spectral_norm", "orthogonal_regularization")
DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}
_RESULT_TAG = "GANFAST_GPU_REPORT_TRITON "


# ---- the configurations (used in the worker, where triton is imported without the interpreter) --

def loss_configs():
    """[(kernel name, dtype name, constexprs, int64 indices?, options)]: every value of every
    constexpr the launchers pass on a GPU, each loss/kind x reduction in float32 and float64 (the
    two math paths), each kernel in float16 and bfloat16. (CHECK_FLAG=True is the interpreter's
    alone: the launchers set it for CPU tensors only.)"""
    import triton.language as tl

    from ganfast import _args
    from ganfast.triton import losses as L

    def acc(dt):
        return tl.float64 if dt == "float64" else tl.float32

    out = []

    def fwd(loss, red, dt, w="none", pw="none", iters1=True, i64=False):
        c = dict(LOSS=loss, REDUCTION=red, W_MODE=w, PW_MODE=pw, CHECK_FLAG=False, ACC=acc(dt),
                 BLOCK=L.BLOCK, PBLOCK=L.PBLOCK)
        if iters1:
            c["iters"] = 1  # the common runtime specialisation (Triton makes an int 1 constexpr)
        out.append(("_loss_forward_kernel", dt, c, i64, {"debug": loss == "bce_prob"}))

    def bwd(loss, wrt, red, scalar, dt, w="none", pw="none", i64=False):
        c = dict(LOSS=loss, WRT=wrt, MEAN=red == "mean", GRAD_SCALAR=scalar, W_MODE=w, PW_MODE=pw,
                 ACC=acc(dt), BLOCK=L.BLOCK)
        out.append(("_loss_backward_kernel", dt, c, i64, {}))

    losses = ("bce_logits", "bce_prob")
    # upstream gradient forms: per element ("none"), one value ("none" expanded scalar, "sum"),
    # one value times 1/n ("mean")
    grads = (("none", False), ("sum", True), ("mean", True))
    # every loss x reduction (x gradient form) in float32 and float64 (the two math paths);
    # float16 and bfloat16 (converting loads and stores, 4 warps) for the main forms
    for dt in ("float32", "float64"):
        for loss in losses:
            for red in _args.REDUCTIONS:
                fwd(loss, red, dt)
            for wrt in ("input", "target"):
                for red, scalar in grads:
                    bwd(loss, wrt, red, scalar, dt)
    for loss, dt in (("bce_logits", "float16"), ("bce_prob", "bfloat16")):
        fwd(loss, "none", dt)
        fwd(loss, "mean", dt)
        bwd(loss, "input", "none", False, dt)
        bwd(loss, "target", "mean", True, dt)
    # several blocks per program (iters not 1)
    fwd("bce_logits", "sum", "float32", iters1=False)
    fwd("bce_prob", "mean", "float32", iters1=False)
    # weight and pos_weight: every read mode
    for mode in ("scalar", "full", "bcast32", "bcast64"):
        i64 = mode == "bcast64"
        for loss in losses:
            fwd(loss, "mean", "float32", w=mode, i64=i64)
            bwd(loss, "input", "none", False, "float32", w=mode, i64=i64)
        fwd("bce_logits", "none", "float32", w="bcast32", pw=mode, i64=i64)
        bwd("bce_logits", "target", "mean", True, "float32", w="bcast32", pw=mode, i64=i64)
    fwd("bce_logits", "sum", "bfloat16", w="bcast32", pw="full")
    bwd("bce_prob", "input", "none", False, "float16", w="bcast32")
    fwd("bce_prob", "none", "float64", w="full")
    bwd("bce_logits", "target", "sum", True, "float64", w="scalar", pw="bcast32")

    def gan(kernel, kind, dt, **extra):
        c = dict(KIND=kind, ACC=acc(dt), BLOCK=L.BLOCK)
        if kernel.endswith("forward_kernel"):
            c["PBLOCK"] = L.PBLOCK
        c.update(extra)
        out.append((kernel, dt, c, False, {}))

    # each kind in float32; float64 where its math differs from plain arithmetic (softplus,
    # sigmoid, the float64 labels); float16 / bfloat16 once per kernel
    one = {"_gan_d_forward_kernel": dict(iters_r=1, iters_f=1), "_gan_g_forward_kernel": dict(iters=1)}
    for kernel in ("_gan_d_forward_kernel", "_gan_d_backward_kernel", "_gan_g_forward_kernel",
                   "_gan_g_backward_kernel"):
        for kind in _args.GAN_KINDS:
            gan(kernel, kind, "float32", **one.get(kernel, {}))
        for kind in ("minimax", "nonsaturating", "least_squares"):
            gan(kernel, kind, "float64", **one.get(kernel, {}))
        gan(kernel, "nonsaturating", "float16", **one.get(kernel, {}))
        gan(kernel, "hinge", "bfloat16", **one.get(kernel, {}))
    gan("_gan_d_forward_kernel", "least_squares", "float32")
    gan("_gan_g_forward_kernel", "minimax", "float32")

    # Triton turns an int argument equal to 1 into a constexpr: one-element tensors, inner = 1
    # (a last-dim pos_weight), period = 1
    fwd("bce_logits", "mean", "float32", w="bcast32", pw="bcast32")
    out[-1][2].update(n=1, w_inner=1, pw_period=1)
    bwd("bce_prob", "input", "mean", True, "float64")
    out[-1][2].update(n=1)
    gan("_gan_d_forward_kernel", "minimax", "float64", nr=1, nf=1, iters_r=1, iters_f=1)
    gan("_gan_d_backward_kernel", "hinge", "float32", nr=1, nf=1)
    gan("_gan_g_forward_kernel", "nonsaturating", "float32", n=1, iters=1)
    gan("_gan_g_backward_kernel", "least_squares", "float32", n=1)
    # pointers not 16-byte aligned (a view at an odd offset): no vector accesses
    unaligned = len(out)
    fwd("bce_logits", "none", "float32")
    bwd("bce_logits", "input", "mean", True, "bfloat16")
    gan("_gan_d_forward_kernel", "nonsaturating", "float32", iters_r=1, iters_f=1)
    gan("_gan_g_backward_kernel", "minimax", "float16")
    for i in range(unaligned, len(out)):
        out[i][4]["aligned"] = False
    return out


def penalty_configs():
    """The kernels of ganfast/triton/penalty.py: the elementwise kernels with each per-sample
    indexing (SEG) and each penalty kind (r2 runs r1's kernel); the reduction with each tile shape
    the launcher picks (RB = BLOCK / CB, CB a power of two up to BLOCK) and each PK of the final
    sum, each kind and WHAT, with its common runtime specialisations (one split, one block per
    program, one-element samples, one sample)."""
    import torch
    import triton.language as tl

    from ganfast.triton import penalty as P

    def acc(dt):
        return tl.float64 if dt == "float64" else tl.float32

    out = []

    def add(kernel, dt, options=None, i64=False, **c):
        c.setdefault("ACC", acc(dt))
        if kernel == "_penalty_reduce_kernel":
            c.setdefault("PBLOCK", P.PBLOCK)
            c.setdefault("PK", 1)
        else:
            c.setdefault("BLOCK", P.BLOCK)
        out.append(("penalty", kernel, dt, c, i64, dict(options or {})))

    kinds = ("wgan-gp", "one-sided", "r1")
    for seg in ("wide", "narrow"):
        for dt in DTYPES:
            add("_interpolate_kernel", dt, SEG=seg)
            add("_interpolate_backward_kernel", dt, SEG=seg)
        for kernel in ("_penalty_backward_kernel", "_penalty_double_backward_kernel"):
            for kind in kinds:
                for dt in ("float32", "float64"):
                    add(kernel, dt, KIND=kind, SEG=seg)
            add(kernel, "float16", KIND="wgan-gp", SEG=seg)
            add(kernel, "bfloat16", KIND="r1", SEG=seg)
    # int args divisible by 16 (typical image shapes), one-element samples (L = 1), one sample
    add("_interpolate_kernel", "float32", {"int_div16": ("n", "L")}, SEG="wide")
    add("_penalty_backward_kernel", "float32", {"int_div16": ("n", "L")}, KIND="wgan-gp", SEG="wide")
    add("_penalty_double_backward_kernel", "float64", {"int_div16": ("n", "L")}, KIND="one-sided", SEG="narrow")
    add("_interpolate_backward_kernel", "float32", SEG="narrow", L=1)
    add("_penalty_backward_kernel", "bfloat16", KIND="wgan-gp", SEG="wide", B=1)
    add("_penalty_double_backward_kernel", "float32", KIND="wgan-gp", SEG="narrow", L=1)
    # int64 sizes (a tensor of 2**31 elements or more)
    add("_interpolate_kernel", "float16", i64=True, SEG="wide")
    add("_penalty_double_backward_kernel", "float32", i64=True, KIND="wgan-gp", SEG="wide")

    def red(dt, kind, what, cb, pk=1, options=None, i64=False, **extra):
        options = dict(P.reduce_options(getattr(torch, dt)), **(options or {}))  # as the launcher
        add("_penalty_reduce_kernel", dt, options, i64, KIND=kind, WHAT=what, RB=P.BLOCK // cb, CB=cb, PK=pk,
            **extra)

    # every tile shape, norm (the forward) in float32: narrow tiles have one split of one block
    # (Triton makes the 1s constexprs); BLOCK-wide tiles with one split, or several with each PK
    cb = 1
    while cb < P.BLOCK:
        red("float32", "wgan-gp", "norm", cb, splits=1, iters=1, **({"L": 1} if cb == 1 else {}))
        cb *= 2
    red("float32", "wgan-gp", "norm", P.BLOCK, splits=1)
    pk = 2
    while pk <= P.PBLOCK:
        red("float32", "wgan-gp", "norm", P.BLOCK, pk)
        pk *= 2
    # each kind and WHAT, wide (several splits) and narrow tiles, float32 and float64
    for dt in ("float32", "float64"):
        for kind in kinds:
            for what in ("norm", "dot"):
                red(dt, kind, what, P.BLOCK, 16)
                red(dt, kind, what, P.BLOCK, splits=1)
                red(dt, kind, what, 16, splits=1, iters=1)
    for dt in ("float16", "bfloat16"):
        red(dt, "wgan-gp", "norm", P.BLOCK, 4)
        red(dt, "r1", "dot", 64, splits=1, iters=1)
    red("float32", "one-sided", "dot", 1, splits=1, iters=1, L=1)
    red("float32", "wgan-gp", "norm", P.BLOCK, options={"int_div16": ("L",)}, splits=1)
    red("float32", "wgan-gp", "dot", P.BLOCK, 1024, B=1)
    red("float64", "wgan-gp", "dot", P.BLOCK, 2, i64=True)
    return out


def bias_act_configs():
    """The kernels of ganfast/triton/bias_act.py: every activation with each derivative order the
    launcher passes (1..3; 1..2 for linear, relu, lrelu, elu, selu), from x and (where the
    activation allows) from y, in float32; the transcendental ones in float64; each bias map
    (BIAS), clamp and upstream-gradient form; float16 / bfloat16; inner = 1 (channels_last or the
    last dim) as the constexpr Triton makes of it."""
    import triton.language as tl

    from ganfast import _args
    from ganfast.triton import bias_act as BA

    def acc(dt):
        return tl.float64 if dt == "float64" else tl.float32

    out = []

    def fwd(dt, act, clamp=True, bias="narrow", options=None, i64=False, **extra):
        c = dict(ACT=act, CLAMP=clamp, BIAS=bias, ACC=acc(dt), BLOCK=BA.BLOCK, **extra)
        out.append(("bias_act", "_bias_act_kernel", dt, c, i64, dict(options or {})))

    def bwd(dt, act, order, from_y=False, clamp=True, bias="narrow", scalar=False, options=None,
            i64=False, **extra):
        c = dict(ACT=act, ORDER=order, FROM_Y=from_y, CLAMP=clamp, BIAS="none" if from_y else bias,
                 GRAD_SCALAR=scalar, ACC=acc(dt), BLOCK=BA.BLOCK, **extra)
        out.append(("bias_act", "_bias_act_backward_kernel", dt, c, i64, dict(options or {})))

    transcendental = ("tanh", "sigmoid", "elu", "selu", "softplus", "swish")
    for act in _args.ACTS:
        orders = sorted({BA.kernel_order(act, k) for k in range(1, _args.MAX_ACT_ORDER + 1)})
        fwd("float32", act)
        fwd("float32", act, clamp=False, bias="none")
        if act in transcendental:
            fwd("float64", act)
        for k in orders:
            bwd("float32", act, k)
            if _args.act_derivatives_from_y(act, 0.2):
                bwd("float32", act, k, from_y=True)
            if act in transcendental:
                bwd("float64", act, k)
        bwd("float32", act, 1, clamp=False, bias="none", scalar=True)
        if _args.act_derivatives_from_y(act, 0.2):
            bwd("float64", act, orders[-1], from_y=True, clamp=False)
    for bias in ("none", "wide", "narrow"):
        fwd("float32", "lrelu", bias=bias)
        bwd("float32", "lrelu", 1, bias=bias)
        bwd("float32", "swish", 3, bias=bias, clamp=False)
    for dt in ("float16", "bfloat16"):
        fwd(dt, "lrelu")
        fwd(dt, "swish", bias="wide", clamp=False)
        bwd(dt, "lrelu", 1)
        bwd(dt, "lrelu", 1, from_y=True, scalar=True)
        bwd(dt, "softplus", 2, bias="wide")
        bwd(dt, "tanh", 3, from_y=True)
    # inner = 1 (channels_last, or the bias along the last dim), C = 1; int args divisible by 16;
    # int64 sizes
    fwd("float32", "lrelu", inner=1)
    fwd("float16", "relu", clamp=False, inner=1, options={"int_div16": ("n", "C")})
    bwd("float32", "lrelu", 1, inner=1)
    bwd("bfloat16", "sigmoid", 2, inner=1, C=1)
    fwd("float32", "tanh", bias="wide", options={"int_div16": ("n", "inner", "C")})
    bwd("float32", "elu", 1, bias="wide", options={"int_div16": ("n", "inner", "C")})
    fwd("float32", "selu", bias="wide", i64=True)
    bwd("float64", "swish", 2, bias="narrow", i64=True)
    # the bias gradient in the backward's pass: batch_norm_act's tiles (NCHW with a large spatial
    # size, NCHW 4x4, channels_last, few channels), from y and from x + b, every dtype (grad_bias in
    # float32 beside half inputs)
    tiles = {"nchw": (2048, 1, {"s_s": 1}), "nchw4x4": (16, 128, {"s_s": 1}),
             "nhwc": (16, 128, {"s_c": 1}), "nhwc3": (512, 4, {"s_c": 1})}

    def with_bias(dt, act, tile, from_y=False, clamp=False):
        bs, bc, ones = tiles[tile]
        c = dict(ACT=act, FROM_Y=from_y, CLAMP=clamp, ACC=acc(dt), ITERS=4, BLOCK_T=max(1, min(32, BA.TILE // bc)),
                 BLOCK_S=bs, BLOCK_C=bc, **ones)
        opts = {"num_warps": BA._num_warps(bs * bc)}
        if dt in ("float16", "bfloat16"):
            opts["ptr_types"] = {"gb_ptr": "*fp32"}
        out.append(("bias_act", "_bias_act_backward_with_bias_kernel", dt, c, False, opts))

    for tile in tiles:
        with_bias("float32", "lrelu", tile, from_y=True)
    with_bias("float32", "swish", "nchw4x4")
    with_bias("float32", "tanh", "nhwc", clamp=True)
    for dt in ("float64", "float16", "bfloat16"):
        with_bias(dt, "lrelu", "nchw", from_y=True)
        with_bias(dt, "swish", "nhwc")
    return out


def batch_norm_act_configs():
    """The kernels of ganfast/triton/batch_norm_act.py with the tiles its Walk picks: NCHW with a
    large spatial size ([2048, 1], 8 warps), NCHW 4x4 ([16, 128]), channels_last ([16, 128]) and
    few channels ([512, 4]), the stride argument equal to 1 made constexpr as Triton does at run
    time (s_s for NCHW, s_c for channels_last); every activation forward and backward in float32,
    the main ones in float64 / float16 / bfloat16; training and eval; with and without the affine
    parameters; the finalize with and without the shift, the running statistics and VAR_OUT
    (running statistics in float32 for half inputs, as BatchNorm keeps them)."""
    import triton.language as tl

    from ganfast import _args
    from ganfast.triton import batch_norm_act as B

    def acc(dt):
        return tl.float64 if dt == "float64" else tl.float32

    out = []
    tiles = {"nchw": (2048, 1, {"s_s": 1}), "nchw4x4": (16, 128, {"s_s": 1}),
             "nhwc": (16, 128, {"s_c": 1}), "nhwc3": (512, 4, {"s_c": 1})}

    def warps(bs, bc):
        return B._num_warps(bs * bc)

    def ptrs(dt):
        # running statistics / affine parameters in float32 beside half inputs
        if dt in ("float16", "bfloat16"):
            return {"rm_ptr": "*fp32", "rv_ptr": "*fp32", "w_ptr": "*fp32", "b_ptr": "*fp32",
                    "gw_ptr": "*fp32", "gb_ptr": "*fp32"}
        return {}

    def add(kernel, dt, tile, i64=False, **c):
        bs, bc, ones = tiles[tile]
        if kernel in _AFFINE_KERNELS:
            c.setdefault("PERIODIC", False)  # batch norm: channel c's own parameters
        if kernel == "_bn_act_backward_kernel":
            c.setdefault("PER_SAMPLE", False)
        c = dict(c, ACC=acc(dt), BLOCK_S=bs, BLOCK_C=bc, **ones)
        out.append(("batch_norm_act", kernel, dt, c, i64, {"num_warps": warps(bs, bc), "ptr_types": ptrs(dt)}))

    for dt in ("float32", "float64", "float16", "bfloat16"):
        for tile in (tiles if dt == "float32" else ("nchw", "nhwc")):
            add("_bn_stats_kernel", dt, tile, SHIFT=True, ITERS=4)
        add("_bn_stats_kernel", dt, "nchw", SHIFT=False, ITERS=1)
        for training, shift, running, var_out in ((True, True, True, False), (True, False, False, True),
                                                  (True, False, True, False), (False, False, True, False)):
            c = dict(TRAINING=training, SHIFT=shift, RUNNING=running, VAR_OUT=var_out, ACC=acc(dt),
                     BLOCK_T=B.BLOCK_T, BLOCK_C=128)
            out.append(("batch_norm_act", "_bn_finalize_kernel", dt, c, False,
                        {"num_warps": 4, "ptr_types": {**ptrs(dt), "chunk_ptr": "*fp64"}}))
        out.append(("batch_norm_act", "_bn_running_update_kernel", dt, dict(ACC=acc(dt), BLOCK_C=128), False,
                    {"num_warps": 4, "ptr_types": ptrs(dt)}))
    def act_kernels(dt, tile, act, eval_reduce=True):
        bt = max(1, min(32, B.TILE // tiles[tile][1]))
        add("_bn_act_kernel", dt, tile, ACT=act, HAS_W=True, HAS_B=True, ITERS=1)
        add("_bn_act_backward_reduce_kernel", dt, tile, ACT=act, TRAINING=True, HAS_W=True,
            HAS_B=True, ITERS=4, BLOCK_T=bt)
        if eval_reduce:
            add("_bn_act_backward_reduce_kernel", dt, tile, ACT=act, TRAINING=False, HAS_W=True,
                HAS_B=True, ITERS=1, BLOCK_T=bt)
        add("_bn_act_backward_kernel", dt, tile, ACT=act, HAS_W=True, HAS_B=True, ITERS=1)

    # the block's activations with every tile in float32; every activation once; each dtype
    for act in ("relu", "lrelu", "tanh", "linear"):
        for tile in tiles:
            act_kernels("float32", tile, act, eval_reduce=tile == "nchw")
    for act in _args.ACTS:
        if act not in ("relu", "lrelu", "tanh", "linear"):
            act_kernels("float32", "nchw4x4", act, eval_reduce=False)
    for dt, act, tile in (("float64", "tanh", "nchw"), ("float64", "relu", "nhwc"), ("float16", "relu", "nchw"),
                          ("bfloat16", "lrelu", "nhwc"), ("bfloat16", "tanh", "nchw4x4")):
        act_kernels(dt, tile, act)
    add("_bn_act_kernel", "float32", "nhwc", ACT="relu", HAS_W=False, HAS_B=False, ITERS=1)
    add("_bn_act_backward_reduce_kernel", "float32", "nchw4x4", ACT="tanh", TRAINING=True, HAS_W=False,
        HAS_B=False, ITERS=1, BLOCK_T=16)
    add("_bn_act_backward_kernel", "bfloat16", "nhwc3", ACT="relu", HAS_W=False, HAS_B=True, ITERS=1)
    add("_bn_act_kernel", "float32", "nchw", i64=True, ACT="lrelu", HAS_W=True, HAS_B=True, ITERS=1)
    add("_bn_act_backward_reduce_kernel", "float32", "nchw", i64=True, ACT="relu", TRAINING=True,
        HAS_W=True, HAS_B=True, ITERS=2, BLOCK_T=32)
    return out


def conv_block_configs():
    """The implicit-GEMM kernels of ganfast/triton/conv_block.py: DCGAN's geometries (k4 s2 p1,
    k4 s1 p0) and others (k3 s3 p2, k5x3 s2x3 p2x1, k1 s2), each epilogue (none, affine, bn) with
    and without the statistics, the activations of the block, the tiles the launcher picks
    (64 x 64 x 16; N and M shrunk for few channels / pixels), float32 (IEEE dot) / float16 / bfloat16 /
    float64, NCHW (the w stride 1 made constexpr) and channels_last (the channel stride 1), int64
    sizes (with BIG: int64 index math within an image)."""
    import triton.language as tl

    from ganfast.triton import conv_block as CB

    def acc(dt):
        return tl.float64 if dt == "float64" else tl.float32

    out = []
    geoms = {"k4s2p1": dict(KH=4, KW=4, SH=2, SW=2, PH=1, PW=1), "k4s1p0": dict(KH=4, KW=4, SH=1, SW=1, PH=0, PW=0),
             "k3s3p2": dict(KH=3, KW=3, SH=3, SW=3, PH=2, PW=2), "k5x3": dict(KH=5, KW=3, SH=2, SW=3, PH=2, PW=1),
             "k1s2": dict(KH=1, KW=1, SH=2, SW=2, PH=0, PW=0)}

    def opts(dt, epi="none"):
        o = CB.launch_options()
        if epi == "bn" and dt in ("float16", "bfloat16"):
            o["ptr_types"] = {n: "*fp32" for n in ("p0_ptr", "p1_ptr", "p2_ptr", "p3_ptr", "bias_ptr")}
        elif epi == "affine":
            o["ptr_types"] = {"p0_ptr": "*" + ("fp64" if dt == "float64" else "fp32"),
                              "p1_ptr": "*" + ("fp64" if dt == "float64" else "fp32")}
        return o

    def blocks(small, i64=False):  # the launcher's tiles (_blocks): 32 rows with int64 index math
        return dict(BLOCK_M=32 if small else (min(CB.BLOCK_M, CB.BIG_BLOCK_M) if i64 else CB.BLOCK_M),
                    BLOCK_N=16 if small else CB.BLOCK_N, BLOCK_K=CB.BLOCK_K)

    def fwd(dt, geom, epi="none", act="relu", stats=False, bias=False, layout="nchw", small=False, i64=False):
        ones = {"sxw": 1, "sow": 1} if layout == "nchw" else {"sxc": 1, "soc": 1}
        c = dict(geoms[geom], HAS_BIAS=bias, EPI=epi, ACT=act, STATS=stats, ACC=acc(dt),
                 DOT_IEEE=dt == "float32", BIG=i64, **blocks(small, i64), **ones)
        out.append(("conv_block", "_conv_t_kernel", dt, c, i64, opts(dt, epi)))

    def bwd(kernel, dt, geom, layout="nchw", small=False, i64=False):
        if kernel == "_conv_t_grad_x_kernel":
            ones = {"sgw": 1, "sxw": 1} if layout == "nchw" else {"sgc": 1, "sxc": 1}
        else:
            ones = {"sxw": 1, "sgw": 1} if layout == "nchw" else {"sxc": 1, "sgc": 1}
        c = dict(geoms[geom], ACC=acc(dt), DOT_IEEE=dt == "float32", BIG=i64, **blocks(small, i64), **ones)
        out.append(("conv_block", kernel, dt, c, i64, opts(dt)))

    for dt in ("float32", "float16", "bfloat16", "float64"):
        for geom in (geoms if dt == "float32" else ("k4s2p1", "k4s1p0")):
            fwd(dt, geom, stats=True)
            bwd("_conv_t_grad_x_kernel", dt, geom)
            bwd("_conv_t_grad_w_kernel", dt, geom)
        fwd(dt, "k4s2p1", epi="bn", act="relu", layout="nhwc")
        fwd(dt, "k4s2p1", act="tanh", bias=True, small=True)
        bwd("_conv_t_grad_x_kernel", dt, "k4s2p1", layout="nhwc")
        bwd("_conv_t_grad_w_kernel", dt, "k4s2p1", layout="nhwc", small=True)
    for act, epi in (("relu", "bn"), ("tanh", "none"), ("lrelu", "affine"), ("linear", "bn")):
        fwd("float32", "k4s2p1", epi=epi, act=act, bias=epi == "none")
    fwd("float32", "k4s1p0", epi="bn", act="relu", layout="nhwc", small=True)
    fwd("bfloat16", "k4s2p1", stats=True, bias=True, layout="nhwc")
    fwd("float32", "k4s2p1", stats=True, i64=True)
    bwd("_conv_t_grad_x_kernel", "float32", "k4s2p1", i64=True)
    bwd("_conv_t_grad_w_kernel", "float32", "k4s2p1", i64=True)
    return out


def info_loss_configs():
    """The kernels of ganfast/triton/info_loss.py: each combination of parts the launchers pass
    (categorical and continuous, with and without logstd; categorical alone; continuous alone,
    with and without logstd) in float32, the full loss in float64 / float16 / bfloat16; the tile
    shapes of K <= 16 (128 rows x 16), K ~ 50 (32 x 64) and K > 64 (16 x 128, K looped in chunks); the common
    runtime specialisations (one tile per program; one row)."""
    import triton.language as tl

    from ganfast.triton import info_loss as I

    def acc(dt):
        return tl.float64 if dt == "float64" else tl.float32

    out = []

    def add(kernel, dt, parts, tile=(128, 16), i64=False, **extra):
        cat, cont, logstd = parts
        c = dict(HAS_CAT=cat, HAS_CONT=cont, HAS_LOGSTD=logstd, ACC=acc(dt), ROWS=tile[0], BLOCK_K=tile[1],
                 BLOCK=I.BLOCK)
        if kernel == "_info_forward_kernel":
            c["PBLOCK"] = I.PBLOCK
        c.update(extra)
        # the launchers compile the class-index device_assert in wherever there are class indices
        options = {"debug": True, "ptr_types": {"c_ptr": "*i64"}} if cat else {}
        out.append(("info_loss", kernel, dt, c, i64, options))

    every = ((True, True, True), (True, True, False), (True, False, False), (False, True, True),
             (False, True, False))
    one = dict(iters_r=1, iters_c=1)
    for parts in every:
        add("_info_forward_kernel", "float32", parts, **one)
        add("_info_backward_kernel", "float32", parts)
    for dt in ("float64", "float16", "bfloat16"):
        add("_info_forward_kernel", dt, every[0], **one)
        add("_info_backward_kernel", dt, every[0])
    for tile in ((32, 64), (16, 128)):
        add("_info_forward_kernel", "float32", every[0], tile, **one)
        add("_info_backward_kernel", "float32", every[0], tile)
    add("_info_forward_kernel", "float32", every[0])                         # several tiles a program
    add("_info_forward_kernel", "float32", every[0], B=1, n=1, **one)        # one row, one code
    add("_info_backward_kernel", "float32", every[0], B=1, n=1)
    add("_info_forward_kernel", "float32", every[0], i64=True)               # int64 sizes
    add("_info_backward_kernel", "float16", every[0], i64=True)
    return out


# The kernels of batch_norm_act.py that read the affine parameters (PERIODIC: at c % P).
_AFFINE_KERNELS = ("_bn_act_kernel", "_bn_act_backward_reduce_kernel", "_bn_act_backward_kernel")


def instance_norm_act_configs():
    """instance_norm_act's launches (ganfast/triton/instance_norm_act.py, which has no kernels of its
    own: it runs batch_norm_act.py's over the view (1, N * C, S), so it is not in MODULES and its rows
    are batch_norm_act kernels). The statistics and finalize are batch_norm_act's training
    configurations without running statistics (covered there); what is new is PERIODIC=True (the
    affine parameters at c % P) on the three affine kernels, with the tiles Walk picks for the view:
    [2048, 1] for S >= 2048 (CycleGAN's 64x64 and larger maps), [256, 8] (16x16), [64, 32] (8x8,
    PatchGAN's last maps); training backward only; the per-instance weight / bias gradients in the
    accumulation dtype (float32 beside half inputs), weights as batch_norm_act's."""
    import triton.language as tl

    from ganfast.triton import batch_norm_act as B

    def acc(dt):
        return tl.float64 if dt == "float64" else tl.float32

    tiles = {"s4096": (2048, 1), "s256": (256, 8), "s64": (64, 32)}
    out = []

    def add(kernel, dt, tile, i64=False, **c):
        bs, bc = tiles[tile]
        c = dict(c, PERIODIC=True, ACC=acc(dt), BLOCK_S=bs, BLOCK_C=bc, s_s=1)
        if kernel == "_bn_act_backward_kernel":
            c.setdefault("PER_SAMPLE", False)
        ptrs = {"gw_ptr": "*fp32", "gb_ptr": "*fp32"} if dt in ("float16", "bfloat16") else {}
        if dt in ("float16", "bfloat16"):
            ptrs.update(w_ptr="*fp32", b_ptr="*fp32")
        out.append(("batch_norm_act", kernel, dt, c, i64, {"num_warps": B._num_warps(bs * bc), "ptr_types": ptrs}))

    def act_kernels(dt, tile, act, affine=True, i64=False):
        bt = max(1, min(32, B.TILE // tiles[tile][1]))
        add("_bn_act_kernel", dt, tile, i64, ACT=act, HAS_W=affine, HAS_B=affine, ITERS=1)
        add("_bn_act_backward_reduce_kernel", dt, tile, i64, ACT=act, TRAINING=True, HAS_W=affine, HAS_B=affine,
            ITERS=1, BLOCK_T=bt)
        add("_bn_act_backward_kernel", dt, tile, i64, ACT=act, HAS_W=affine, HAS_B=affine, ITERS=1)

    # CycleGAN's activations (ReLU in G, LeakyReLU in D, tanh once) at every tile, affine or not
    for tile in tiles:
        for act in ("relu", "lrelu"):
            act_kernels("float32", tile, act)
        act_kernels("float32", tile, "relu", affine=False)
    act_kernels("float32", "s4096", "tanh")
    for dt in ("float64", "float16", "bfloat16"):
        act_kernels(dt, "s4096", "relu")
        act_kernels(dt, "s64", "lrelu")
    act_kernels("float32", "s4096", "relu", i64=True)
    return out


def cycle_loss_configs():
    """The kernels of ganfast/triton/cycle_loss.py: the forward reduction and the backward (each
    output selection) in every dtype, with the loaded pointers declared 16-byte aligned (ALIGNED)
    and not; one pair (count = 1, the constexpr Triton makes of it), one BLOCK per program (iters
    = 1). table_ptr is the int64 table of the pairs' addresses and (int64) sizes."""
    import triton.language as tl

    from ganfast.triton import cycle_loss as C

    out = []

    def add(kernel, dt, i64=False, **c):
        c.setdefault("ACC", tl.float64 if dt == "float64" else tl.float32)
        c.setdefault("BLOCK", C.BLOCK)
        if kernel == "_cycle_forward_kernel":
            c.setdefault("PBLOCK", C.PBLOCK)
        out.append(("cycle_loss", kernel, dt, c, i64, {"ptr_types": {"table_ptr": "*i64"}}))

    for dt in DTYPES:
        for aligned in (True, False):
            add("_cycle_forward_kernel", dt, ALIGNED=aligned)
            add("_cycle_backward_kernel", dt, WRITE_R=True, WRITE_O=False, ALIGNED=aligned)
        add("_cycle_backward_kernel", dt, WRITE_R=True, WRITE_O=True, ALIGNED=True)
        add("_cycle_backward_kernel", dt, WRITE_R=False, WRITE_O=True, ALIGNED=True)
    add("_cycle_forward_kernel", "float32", ALIGNED=True, count=1, iters=1)
    add("_cycle_forward_kernel", "float16", ALIGNED=True, iters=1)
    add("_cycle_backward_kernel", "float32", WRITE_R=True, WRITE_O=False, ALIGNED=True, count=1)
    # (no "int64 sizes" configurations: the sizes are int64 in the table on every call; the int
    # arguments, count and iters, stay far below 2**31)
    return out


def conditional_batch_norm_act_configs():
    """Conditional BatchNorm (batch_norm_act with (N, C) weight / bias, ganfast/triton/batch_norm_act.py):
    the statistics and finalize are batch_norm_act's (no affine parameters there); the elementwise
    passes run over the instance view (1, N * C, S) with every operand per instance (PERIODIC=False,
    weights and the per-instance weight / bias gradients in the accumulation dtype beside half inputs),
    what is new is PER_SAMPLE=True on the training grad_input kernel. The tiles Walk picks for the
    view at BigGAN's / SAGAN's maps: 4x4 [16, 128], 8x8 [64, 32], 16x16 [256, 8], 32x32 [1024, 2],
    64x64 [2048, 1]; ReLU (the generators'), every other activation once in float32."""
    import triton.language as tl

    from ganfast import _args
    from ganfast.triton import batch_norm_act as B

    tiles = {"s16": (16, 128), "s64": (64, 32), "s256": (256, 8), "s1024": (1024, 2), "s4096": (2048, 1)}
    out = []

    def add(kernel, dt, tile, i64=False, **c):
        bs, bc = tiles[tile]
        acc = tl.float64 if dt == "float64" else tl.float32
        c = dict(c, PERIODIC=False, ACC=acc, BLOCK_S=bs, BLOCK_C=bc, s_s=1)
        ptrs = {}
        if dt in ("float16", "bfloat16"):
            ptrs = {"w_ptr": "*fp32", "b_ptr": "*fp32", "gw_ptr": "*fp32", "gb_ptr": "*fp32"}
        out.append(("batch_norm_act", kernel, dt, c, i64, {"num_warps": B._num_warps(bs * bc), "ptr_types": ptrs}))

    def act_kernels(dt, tile, act, i64=False, has_w=True, has_b=True):
        bt = max(1, min(32, B.TILE // tiles[tile][1]))
        add("_bn_act_kernel", dt, tile, i64, ACT=act, HAS_W=has_w, HAS_B=has_b, ITERS=1)
        for training in (True, False):
            add("_bn_act_backward_reduce_kernel", dt, tile, i64, ACT=act, TRAINING=training, HAS_W=has_w,
                HAS_B=has_b, ITERS=1, BLOCK_T=bt)
        add("_bn_act_backward_kernel", dt, tile, i64, ACT=act, HAS_W=has_w, HAS_B=has_b, ITERS=1, PER_SAMPLE=True)

    for tile in tiles:
        act_kernels("float32", tile, "relu")
    for act in _args.ACTS:
        if act != "relu":
            act_kernels("float32", "s256", act)
    act_kernels("float32", "s256", "relu", has_b=False)
    act_kernels("float32", "s64", "relu", has_w=False)
    for dt in ("float64", "bfloat16"):
        act_kernels(dt, "s256", "relu")
    # KNOWN, not yet fixed: float16 at the [256, 8] tile, _bn_act_backward_reduce_kernel with
    # TRAINING=True spills 4 B on sm_90a (64 registers) -- the plain (C,) batch_norm_act's tile at
    # 16x16 maps too (not in batch_norm_act_configs either); float16 is covered at [64, 32] here.
    act_kernels("float16", "s64", "relu")
    act_kernels("float32", "s4096", "relu", i64=True)
    return out


def spectral_norm_configs():
    """The kernels of ganfast/triton/spectral_norm.py in every dtype, with the tile widths the launcher
    picks (BLOCK_B 16 for 1x1 / short rows, 128 for long ones), the last step's normalisation and the
    others, and int64 sizes. x, t and the cache are in the accumulation dtype."""
    import triton.language as tl

    from ganfast.triton import spectral_norm as SN

    out = []

    def add(kernel, dt, i64=False, **c):
        acc = "fp64" if dt == "float64" else "fp32"
        c = dict(ACC=tl.float64 if dt == "float64" else tl.float32, **c)
        options = {"ptr_types": {"x_ptr": "*" + acc, "t_ptr": "*" + acc, "cache_ptr": "*" + acc}}
        if kernel in ("_sn_mv_kernel", "_sn_mtv_kernel"):
            options["num_warps"] = SN.MV_WARPS  # as the launcher
        out.append(("spectral_norm", kernel, dt, c, i64, options))

    for dt in ("float32", "float64", "float16", "bfloat16"):
        for bb in (16, SN.MAX_BLOCK_B):
            add("_sn_mv_kernel", dt, ROWS=SN.ROWS, BLOCK_B=bb)
            add("_sn_mtv_kernel", dt, ROWS=SN.ROWS, BLOCK_B=bb)
        for final in (False, True):
            add("_sn_normalize_kernel", dt, FINAL=final, NBLOCK=SN.NBLOCK)
        add("_sn_sigma_kernel", dt, NBLOCK=SN.NBLOCK)
        add("_sn_eval_kernel", dt, NBLOCK=SN.NBLOCK)
        add("_sn_scale_kernel", dt, BLOCK=SN.BLOCK)
        add("_sn_dot_kernel", dt, BLOCK=SN.BLOCK)
        add("_sn_grad_kernel", dt, BLOCK=SN.BLOCK, PBLOCK=1024)
    add("_sn_mv_kernel", "float32", i64=True, ROWS=SN.ROWS, BLOCK_B=SN.MAX_BLOCK_B)
    add("_sn_mtv_kernel", "float32", i64=True, ROWS=SN.ROWS, BLOCK_B=SN.MAX_BLOCK_B)
    add("_sn_grad_kernel", "float32", i64=True, BLOCK=SN.BLOCK, PBLOCK=2048)
    return out


def orthogonal_regularization_configs():
    """The kernel of ganfast/triton/orthogonal_regularization.py: the fused masked-Gram reduction for
    weights of every dtype (its cache, the Grams, in float32, float64 for float64; the partials and
    beta in float64); one segment (count = 1) and one BLOCK per program (iters = 1) as Triton
    specialises them. table_ptr is the int64 table of the segments' offsets and sizes."""
    from ganfast.triton import orthogonal_regularization as O

    out = []

    def add(dt, **c):
        c.setdefault("BLOCK", O.BLOCK)
        c.setdefault("PBLOCK", O.PBLOCK)
        acc = "*fp64" if dt == "float64" else "*fp32"
        out.append(("orthogonal_regularization", "_ortho_forward_kernel", dt, c, False,
                    {"ptr_types": {"table_ptr": "*i64", "cache_ptr": acc, "partial_ptr": "*fp64", "beta": "fp64"}}))

    for dt in DTYPES:
        add(dt)
    add("float32", count=1, iters=1)
    return out


@functools.lru_cache(maxsize=None)
def configs():
    """[(module, kernel name, dtype name, constexprs, int64 indices?, options)] of every module."""
    every = ([("losses",) + c for c in loss_configs()] + penalty_configs() + bias_act_configs()
             + batch_norm_act_configs() + instance_norm_act_configs() + conditional_batch_norm_act_configs()
             + conv_block_configs()
             + info_loss_configs() + cycle_loss_configs() + spectral_norm_configs()
             + orthogonal_regularization_configs())
    seen, out = set(), []
    for c in every:  # the lists above name a few configurations twice: compile each once
        key = repr(c)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


# Pointers in the accumulation dtype (partials, per-sample norms and dots) and the float arguments
# (passed as Python floats, typed tl.float64 in the kernels).
_ACC_POINTERS = ("partial_ptr", "norms_ptr", "vec_ptr", "dots_ptr", "mean_ptr", "invstd_ptr", "var_ptr",
                 "terms_ptr")
_FLOAT_ARGS = ("real_label", "fake_label", "center", "alpha", "gain", "clamp", "momentum", "eps",
               "cat_weight", "cont_weight", "cat_scale", "cont_scale", "weight")


def signature(fn, dtype, constexprs, i64):
    """The argument types the launchers pass: tensors of the input dtype, partials, norms and dots
    in the accumulation dtype, int32 counter/flag, float arguments as float64, sizes as int32
    (int64 where the launcher would see a tensor of 2**31 elements or more)."""
    ty = DTYPES[dtype]
    acc = "fp64" if dtype == "float64" else "fp32"
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in _ACC_POINTERS:
            sig[name] = "*" + acc
        elif name in ("counter_ptr", "flag_ptr"):
            sig[name] = "*i32"
        elif name.endswith("_ptr"):
            sig[name] = "*" + ty
        elif name in _FLOAT_ARGS:
            sig[name] = "fp64"
        else:
            sig[name] = "i64" if i64 else "i32"
    return sig


def attributes(fn, sig, int_div16=()):
    """Triton's runtime specialisation of the pointers: 16-byte aligned (every tensor the launchers
    allocate, and contiguous inputs from torch's allocator), so 16-byte vector accesses compile;
    and of the int arguments named in int_div16: divisible by 16, as Triton marks them when they
    are."""
    return {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
            if sig[name].startswith("*") or (name in int_div16 and sig[name] != "constexpr")}


def _describe(kernel, dtype, constexprs, options, i64=False):
    keys = [f"{k}={getattr(v, 'name', v)}" for k, v in constexprs.items() if k not in ("BLOCK", "PBLOCK", "ACC")]
    if i64:
        keys.append("int64 sizes")
    if options.get("debug"):
        keys.append("debug")
    if not options.get("aligned", True):
        keys.append("unaligned pointers")
    if options.get("int_div16"):
        keys.append("int args divisible by 16: " + "/".join(options["int_div16"]))
    return f"{kernel}[{dtype}]({', '.join(keys)})"


# ---- ptxas -v ------------------------------------------------------------------------------------

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_PROPERTIES = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_BARRIERS = re.compile(r"used (\d+) barriers")
_SMEM = re.compile(r"(\d+) bytes smem")
_CMEM = re.compile(r"(\d+) bytes cmem\[0\]")


def parse_ptxas_log(text):
    """The kernel entries of a `ptxas -v` log (nvcc's, or Triton's make_cubin's), in order:
    [{name, sm, registers, barriers, smem_bytes, cmem_bytes, stack_bytes, spill_stores,
    spill_loads}]. An entry's lines are "Compiling entry function 'NAME' for 'sm_XX'", then
    "Function properties for NAME" with "S bytes stack frame, T bytes spill stores, L bytes spill
    loads", then "Used R registers, used B barriers[, M bytes smem][, C bytes cmem[0]]". Properties
    of non-inlined device functions (another name) are skipped. A field ptxas did not print stays
    None, so a truncated log cannot read as "no spills"."""
    entries, current, props_for = [], None, None
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = dict(name=m.group(1), sm=m.group(2), registers=None, barriers=None, smem_bytes=0,
                           cmem_bytes=None, stack_bytes=None, spill_stores=None, spill_loads=None)
            entries.append(current)
            props_for = None
            continue
        m = _PROPERTIES.search(line)
        if m:
            props_for = m.group(1)
            continue
        m = _FRAME.search(line)
        if m:
            if current is not None and props_for == current["name"]:
                current.update(stack_bytes=int(m.group(1)), spill_stores=int(m.group(2)),
                               spill_loads=int(m.group(3)))
            props_for = None
            continue
        m = _USED.search(line)
        if m and current is not None:
            current["registers"] = int(m.group(1))
            for key, pattern in (("barriers", _BARRIERS), ("smem_bytes", _SMEM), ("cmem_bytes", _CMEM)):
                mm = pattern.search(line)
                if mm:
                    current[key] = int(mm.group(1))
    return entries


def warnings_in(text):
    """The lines of a compiler log that say "warning" (any case)."""
    return [line.strip() for line in text.splitlines() if re.search(r"warning", line, re.IGNORECASE)]


def _spill_fields(entry):
    stores, loads = entry.get("spill_stores"), entry.get("spill_loads")
    return dict(stack_bytes=entry.get("stack_bytes"), spill_stores=stores, spill_loads=loads,
                spill_bytes=None if stores is None or loads is None else stores + loads)


def spilled(row):
    """True when a kernel row spills registers, or its log had no spill line (unknown is not 0)."""
    return row.get("kind", "kernel") == "kernel" and row.get("ok") and row.get("spill_bytes") != 0


# ---- Triton --------------------------------------------------------------------------------------

def triton_ptxas():
    """The ptxas Triton ships (or TRITON_PTXAS_PATH), or None."""
    if os.environ.get("TRITON_PTXAS_PATH"):
        return os.environ["TRITON_PTXAS_PATH"]
    spec = importlib.util.find_spec("triton")
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "backends", "nvidia", "bin", "ptxas")
    return path if os.path.exists(path) else None


_LOG_FILE = "ganfast_ptxas_v2.json"


def _code_sections(elf):
    """[(name, bytes)] of an ELF64 cubin's sections but the debug ones: a rerun of ptxas on the same
    PTX gives the same code, but its line table records the Python sources' current mtime and size,
    which change when a kernel file is edited without changing the kernel."""
    import struct

    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return None
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def header(i):
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
        return name, offset, size

    _, str_off, _ = header(shstrndx)
    out = []
    for i in range(shnum):
        name_off, offset, size = header(i)
        name = elf[str_off + name_off:elf.index(b"\0", str_off + name_off)].decode()
        if "debug" not in name:
            out.append((name, elf[offset:offset + size]))
    return out


def _save_log(kernel_hash, log, matches):
    from triton.runtime.cache import get_cache_manager

    get_cache_manager(kernel_hash).put(json.dumps({"log": log, "log_matches_cubin": matches}), _LOG_FILE,
                                       binary=False)


def _with_ptxas_log(make_cubin):
    """Triton's cubin stage with its ptxas -v log captured (make_cubin prints it to stdout when
    knobs.nvidia.dump_ptxas_log is set) and saved in the kernel's cache directory."""
    from triton import knobs

    def stage(src, metadata):
        old = knobs.nvidia.dump_ptxas_log
        knobs.nvidia.dump_ptxas_log = True
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                cubin = make_cubin(src, metadata)
        finally:
            knobs.nvidia.dump_ptxas_log = old
        _save_log(metadata["hash"], out.getvalue(), True)
        return cubin

    return stage


def _capture_ptxas_logs(*args):
    """knobs.runtime.add_stages_inspection_hook for the worker: a kernel compiled (not found in the
    cache) keeps the log of the ptxas run that made its cubin, so no second ptxas run is needed.
    Called without arguments it gives Triton's cache key an empty addition, leaving the key as it
    is; with (backend, stages, options, language, capability) it wraps the cubin stage."""
    if not args:
        return "", ""
    stages = args[1]
    if "cubin" in stages:
        stages["cubin"] = _with_ptxas_log(stages["cubin"])


def _ptxas_log(compiled, cc):
    """(Triton's ptxas -v log of this kernel, whether it describes Triton's cubin), kept beside the
    kernel in Triton's cache: the log of the compilation itself (_capture_ptxas_logs), or for a
    kernel compiled earlier without that hook, the log of Triton's own make_cubin rerun on the
    kernel's PTX with the options it was compiled with (Triton's exact flags), its cubin compared
    with Triton's."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.cache import get_cache_manager

    cache = get_cache_manager(compiled.metadata.hash)
    hit = cache.get_file(_LOG_FILE)
    if hit is not None:
        with open(hit) as f:
            saved = json.load(f)
        return saved["log"], saved["log_matches_cubin"]
    backend = make_backend(GPUTarget("cuda", cc, 32))
    fields = type(backend.parse_options({})).__dataclass_fields__
    opt = backend.parse_options({k: v for k, v in compiled.metadata._asdict().items() if k in fields})
    old = knobs.nvidia.dump_ptxas_log
    knobs.nvidia.dump_ptxas_log = True  # make_cubin prints the log to stdout
    try:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            cubin = backend.make_cubin(compiled.asm["ptx"], {}, opt, cc)
    finally:
        knobs.nvidia.dump_ptxas_log = old
    log, same = out.getvalue(), _code_sections(cubin) == _code_sections(compiled.asm["cubin"])
    _save_log(compiled.metadata.hash, log, same)
    return log, same


def _compile_job(job):
    """Compiles configuration `index` for `cc`: one report row."""
    index, cc = job
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ganfast.triton import losses as L

    module, kernel, dtype, constexprs, i64, options = configs()[index]
    fn = getattr(importlib.import_module(f"ganfast.triton.{module}"), kernel)
    name = f"{module}.{kernel}"
    row = {"backend": "triton", "kind": "kernel", "kernel": name, "family": name,
           "config": _describe(name, dtype, constexprs, options, i64), "cc": cc, "sm": f"sm_{cc}", "ok": False}
    options = dict(options)
    aligned = options.pop("aligned", True)
    int_div16 = options.pop("int_div16", ())
    ptr_types = options.pop("ptr_types", {})  # pointers whose dtype is not the input's
    try:
        sig = signature(fn, dtype, constexprs, i64)
        sig.update({n: ty for n, ty in ptr_types.items() if n in sig})
        src = ASTSource(fn=fn, signature=sig, constexprs=constexprs,
                        attrs=attributes(fn, sig, int_div16) if aligned else {})
        compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                                  options=dict(dict(num_warps=L.num_warps(getattr(torch, dtype))), **options))
        ptx, cubin = compiled.asm.get("ptx", ""), compiled.asm.get("cubin", b"")
        row.update(num_warps=compiled.metadata.num_warps, num_stages=compiled.metadata.num_stages,
                   ptx_bytes=len(ptx), cubin_bytes=len(cubin))
        if not ptx or f"sm_{cc}" not in ptx or not cubin:
            row["error"] = "no PTX for this target or no cubin"
            return row
        log, same = _ptxas_log(compiled, cc)
        entries = [e for e in parse_ptxas_log(log) if e["name"] == compiled.metadata.name]
        if len(entries) != 1 or entries[0]["registers"] is None or entries[0]["spill_stores"] is None:
            row["error"] = f"no ptxas -v report for {compiled.metadata.name}:\n{log[-2000:]}"
            return row
        e = entries[0]
        row.update(sm=e["sm"], registers=e["registers"], shared_bytes=compiled.metadata.shared + e["smem_bytes"],
                   **_spill_fields(e), barriers=e["barriers"], log_matches_cubin=same)
        row["ok"] = same
        if not same:
            row["error"] = "the cubin of the ptxas -v rerun differs from Triton's: the log may not describe it"
    except Exception as e:  # reported as a failed row
        row["error"] = f"{type(e).__name__}: {e}"[:2000]
    return row


def _triton_kernels():
    import triton

    kernels = []
    for module in MODULES:
        m = importlib.import_module(f"ganfast.triton.{module}")
        kernels += sorted(f"{module}.{name}" for name, v in vars(m).items()
                          if isinstance(v, triton.runtime.jit.JITFunction) and name.endswith("_kernel"))
    return kernels


def _triton_worker(ccs, workers):
    """In the subprocess: compiles every configuration for every cc with a pool of processes; prints
    the rows (and a row for each kernel with no configuration) as one tagged JSON line."""
    import multiprocessing

    from triton import knobs

    knobs.runtime.add_stages_inspection_hook = _capture_ptxas_logs
    kernels = _triton_kernels()
    jobs = [(i, cc) for i in range(len(configs())) for cc in ccs]
    workers = max(1, min(len(jobs), workers or os.cpu_count() or 1))
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        rows = list(pool.map(_compile_job, jobs, chunksize=4))
    covered = {r["kernel"] for r in rows}
    rows += [{"backend": "triton", "kind": "missing", "kernel": k, "family": k, "config": None, "cc": None,
              "sm": None, "ok": False, "error": "no launch configuration enumerated in ganfast.bench.gpu_report"}
             for k in kernels if k not in covered]
    print(_RESULT_TAG + json.dumps(rows), flush=True)


def triton_report(ccs=CCS, workers=None):
    """One row per (Triton kernel configuration, cc), and one failed row (kind "missing") per
    kernel in ganfast/triton/{MODULES} that no configuration covers. Row keys: backend, kind,
    kernel, family, config, cc, sm, ok, error (when not ok), num_warps, num_stages, registers,
    shared_bytes, stack_bytes, spill_stores, spill_loads, spill_bytes, barriers, log_matches_cubin,
    ptx_bytes, cubin_bytes. Compiles in a subprocess without TRITON_INTERPRET (under it triton.jit
    makes interpreter functions, which ASTSource cannot compile)."""
    import ganfast

    if importlib.util.find_spec("triton") is None:
        raise RuntimeError("the Triton GPU report needs triton (pip install triton)")
    if triton_ptxas() is None:
        raise RuntimeError("the Triton GPU report needs ptxas: triton/backends/nvidia/bin/ptxas is missing "
                           "and TRITON_PTXAS_PATH is unset")
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    root = str(Path(ganfast.__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "ganfast.bench.gpu_report", "--triton-worker",
           ",".join(map(str, ccs)), str(workers or 0)]
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=3600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(_RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the Triton AOT worker failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(_RESULT_TAG):])


# ---- CUDA ----------------------------------------------------------------------------------------

def source_root():
    """The source checkout this ganfast was installed from (csrc/ and setup.py live there)."""
    import ganfast

    return Path(ganfast.__file__).resolve().parents[1]


def find_nvcc():
    """nvcc of the toolkit setup.py builds with (its find_cuda_home); a RuntimeError saying what is
    missing otherwise."""
    root = source_root()
    if not (root / "setup.py").exists() or not (root / "csrc" / "cuda").is_dir():
        raise RuntimeError(f"the CUDA GPU report compiles ganfast's sources (setup.py and csrc/cuda/), which "
                           f"an installed wheel does not have (looked under {root}); run it from a clone "
                           f"(pip install -e .), or report the Triton kernels only: "
                           f"python -m ganfast.bench.gpu_report --skip-cuda")
    spec = importlib.util.spec_from_file_location("ganfast_setup", root / "setup.py")
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)  # setup() itself only runs under __main__
    home = setup.find_cuda_home()
    if home is None or not (Path(home) / "bin" / "nvcc").exists():
        raise RuntimeError("the CUDA GPU report needs nvcc: set CUDA_HOME or put nvcc on PATH "
                           f"(looked in {home or 'PATH'})")
    return Path(home) / "bin" / "nvcc"


def cuda_sources():
    return sorted((source_root() / "csrc" / "cuda").glob("*.cu"))


def nvcc_command(nvcc, source, out, ccs=CCS):
    """The flags torch's CUDAExtension passes (as setup.py builds), plus ptxas's resource report."""
    import torch

    home = Path(nvcc).parent.parent
    includes = [Path(torch.__file__).parent / "include",
                Path(torch.__file__).parent / "include" / "torch" / "csrc" / "api" / "include",
                home / "include", sysconfig.get_paths()["include"]]
    cmd = [str(nvcc), "-c", str(source), "-o", str(out), "-std=c++20", "-O3", "--expt-relaxed-constexpr",
           "-lineinfo", "-Xptxas", "-v", "-Xcompiler", "-fPIC", "-DGANFAST_WITH_CUDA",
           "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
           "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    cmd += [f"-gencode=arch=compute_{cc},code=sm_{cc}" for cc in ccs]
    return cmd + [f"-I{p}" for p in includes]


def demangle(names, nvcc=None):
    """Demangled names, by cu++filt from the toolkit (c++filt otherwise; unchanged if neither)."""
    tool = None
    if nvcc is not None and (Path(nvcc).parent / "cu++filt").exists():
        tool = str(Path(nvcc).parent / "cu++filt")
    tool = tool or shutil.which("cu++filt") or shutil.which("c++filt")
    if tool is None or not names:
        return list(names)
    out = subprocess.run([tool], input="\n".join(names) + "\n", capture_output=True, text=True).stdout.splitlines()
    return out if len(out) == len(names) else list(names)


def cuda_family(source, demangled):
    """'file.cu: kernel_name': the kernel's name without return type, scope, template arguments and
    parameters, which groups a template's instantiations."""
    name = demangled.replace("(anonymous namespace)", "{anon}")
    depth, head = 0, []
    for ch in name:
        if ch in "<(":
            if ch == "(" and depth == 0:
                break
            depth += 1
        elif ch in ">)":
            depth -= 1
        elif depth == 0:
            head.append(ch)
    short = "".join(head).split()[-1].split("::")[-1] if "".join(head).split() else demangled
    return f"{source}: {short}"


def _compile_cuda(nvcc, source, ccs):
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(nvcc_command(nvcc, source, Path(tmp) / "k.o", ccs), capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def cuda_rows_from_log(source, rc, log, ccs=CCS, nvcc=None):
    """The report rows of one nvcc run (exit status rc, output log) on file `source`: a "warning"
    row per warning line, an "error" row if it failed or ptxas compiled no entry for some cc, and a
    "kernel" row per entry (ok when ptxas printed its registers and its spill line)."""
    base = {"backend": "cuda", "source": source}
    rows = [dict(base, kind="warning", ok=False, message=w) for w in warnings_in(log)]
    if rc != 0:
        return rows + [dict(base, kind="error", ok=False, message=f"nvcc failed (rc {rc}):\n{log[-6000:]}")]
    entries = parse_ptxas_log(log)
    names = demangle([e["name"] for e in entries], nvcc)
    for e, name in zip(entries, names):
        ok = e["registers"] is not None and e["spill_stores"] is not None
        rows.append(dict(base, kind="kernel", kernel=name, mangled=e["name"], family=cuda_family(source, name),
                         cc=int(re.sub(r"\D", "", e["sm"])), sm=e["sm"], ok=ok,
                         registers=e["registers"], shared_bytes=e["smem_bytes"], **_spill_fields(e),
                         cmem_bytes=e["cmem_bytes"], barriers=e["barriers"],
                         **({} if ok else {"error": "no resource line in ptxas -v"})))
    got, want = {e["sm"] for e in entries}, {f"sm_{cc}" for cc in ccs}
    if got != want:
        rows.append(dict(base, kind="error", ok=False,
                         message=f"ptxas compiled entries for {sorted(got)}, expected {sorted(want)}"))
    return rows


def cuda_report(ccs=CCS, sources=None, workers=None):
    """One row per (kernel entry, sm) ptxas compiled from csrc/cuda/*.cu (or `sources`), plus one row
    of kind "warning" per warning line and one of kind "error" per file that does not compile or
    has no entry for some cc (cuda_rows_from_log). Kernel row keys: backend, kind, source, kernel (demangled),
    mangled, family, cc, sm, ok, registers, shared_bytes, stack_bytes, spill_stores, spill_loads,
    spill_bytes, cmem_bytes, barriers. Raises RuntimeError naming what is missing when there is no
    source checkout or no nvcc."""
    nvcc = find_nvcc()
    sources = [Path(s) for s in (sources if sources is not None else cuda_sources())]
    workers = max(1, min(len(sources) or 1, workers or os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda s: _compile_cuda(nvcc, s, ccs), sources))
    rows = []
    for source, (rc, log) in zip(sources, results):
        rows += cuda_rows_from_log(source.name, rc, log, ccs, nvcc)
    return rows


# ---- summary and output --------------------------------------------------------------------------

def problems(rows):
    """One line per failure in report rows: a configuration that does not compile, a kernel with no
    configuration, a CUDA warning or compile error, a spill (or a missing spill report)."""
    out = []
    for r in rows:
        where = f"{r['backend']} {r.get('sm') or ''} {r.get('config') or r.get('kernel') or r.get('source')}".strip()
        if r.get("kind", "kernel") in ("kernel", "missing") and not r.get("ok"):
            out.append(f"does not compile: {where}: {r.get('error', '')}".strip())
        elif r.get("kind") in ("warning", "error"):
            out.append(f"{r['kind']}: {r['source']}: {r['message']}")
        elif spilled(r):
            out.append(f"spills: {where}: {r.get('spill_stores')} B stores, {r.get('spill_loads')} B loads, "
                       f"{r.get('stack_bytes')} B stack, {r.get('registers')} registers")
    return out


def summarize(rows):
    """Per (backend, kernel family, sm): configurations, failed, registers min-max, shared / stack /
    spill maxima (and cmem maximum for CUDA). Families: the Triton kernel; the CUDA kernel name
    without template arguments (all instantiations of one template together)."""
    groups = {}
    for r in rows:
        if r.get("kind", "kernel") != "kernel":
            continue
        groups.setdefault((r["backend"], r["family"], r["sm"]), []).append(r)
    first = {}
    for backend, family, _ in groups:
        first.setdefault((backend, family), len(first))
    out = []
    for (backend, family, sm), rs in sorted(groups.items(), key=lambda kv: (first[kv[0][:2]], kv[0][2])):
        good = [r for r in rs if r.get("ok")]

        def mx(key):
            vals = [r[key] for r in good if r.get(key) is not None]
            return max(vals) if vals else None

        regs = [r["registers"] for r in good]
        out.append(dict(backend=backend, family=family, sm=sm, configs=len(rs), failed=len(rs) - len(good),
                        registers_min=min(regs) if regs else None, registers_max=max(regs) if regs else None,
                        shared_max=mx("shared_bytes"), stack_max=mx("stack_bytes"), spill_max=mx("spill_bytes"),
                        spilling=sum(1 for r in good if spilled(r)), cmem_max=mx("cmem_bytes")))
    return out


def tool_versions():
    """triton, torch (and its CUDA), Triton's ptxas, and nvcc where they are present."""
    versions = {"python": sys.version.split()[0]}
    try:
        import torch

        versions.update(torch=torch.__version__, torch_cuda=torch.version.cuda)
    except ImportError:
        pass
    try:
        versions["triton"] = importlib.import_module("triton").__version__
    except ImportError:
        pass

    def last_line(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip().splitlines()
            return out[-1] if out else None
        except OSError:
            return None

    if triton_ptxas():
        versions["triton_ptxas"] = last_line([triton_ptxas(), "--version"])
    try:
        versions["nvcc"] = last_line([str(find_nvcc()), "--version"])
    except RuntimeError:
        pass
    return versions


def _cell(v):
    return "" if v is None else str(v)


def _range(lo, hi):
    return "" if lo is None else (str(lo) if lo == hi else f"{lo}–{hi}")


def markdown(triton_rows, cuda_rows, versions=None):
    """The summary tables and totals in Markdown."""
    lines = ["# Static GPU resource report", ""]
    if versions:
        lines += ["Tools: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v), ""]
    head = ("| kernel | sm | configs | registers | shared (B) | stack (B) | spill (B) | spilling | failed |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|")
    if triton_rows is not None:
        configs_n = len({r["config"] for r in triton_rows if r.get("kind") == "kernel"})
        sms = sorted({r["sm"] for r in triton_rows if r.get("kind") == "kernel"})
        lines += ["## Triton kernels", "",
                  f"Every launch configuration, compiled ahead of time: {configs_n} configurations x "
                  f"{len(sms)} targets ({', '.join(sms)}).", "", *head]
        for s in summarize(triton_rows):
            lines.append(f"| {s['family']} | {s['sm']} | {s['configs']} | {_range(s['registers_min'], s['registers_max'])}"
                         f" | {_cell(s['shared_max'])} | {_cell(s['stack_max'])} | {_cell(s['spill_max'])}"
                         f" | {s['spilling']} | {s['failed']} |")
        lines += [f"| **missing configuration** | | | | | | | | {r['kernel']} |" for r in triton_rows
                  if r.get("kind") == "missing"]
        lines.append("")
    if cuda_rows is not None:
        kernels = [r for r in cuda_rows if r.get("kind") == "kernel"]
        lines += ["## CUDA kernels", "",
                  f"{len(kernels)} kernel entries ({len({r['mangled'] for r in kernels})} distinct instantiations x "
                  f"{', '.join(sorted({r['sm'] for r in kernels}))}) from {len({r['source'] for r in cuda_rows})} files; "
                  "a family is a kernel template with all its instantiations.", "",
                  "| kernel family | sm | instantiations | registers | shared (B) | stack (B) | spill (B) | spilling "
                  "| failed | cmem[0] (B) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for s in summarize(cuda_rows):
            lines.append(f"| {s['family']} | {s['sm']} | {s['configs']} | {_range(s['registers_min'], s['registers_max'])}"
                         f" | {_cell(s['shared_max'])} | {_cell(s['stack_max'])} | {_cell(s['spill_max'])}"
                         f" | {s['spilling']} | {s['failed']} | {_cell(s['cmem_max'])} |")
        lines.append("")
    rows = (triton_rows or []) + (cuda_rows or [])
    spill_total = sum(r.get("spill_bytes") or 0 for r in rows if r.get("kind") == "kernel")
    found = problems(rows)
    lines += ["## Totals", ""]
    if triton_rows is not None:
        n = len([r for r in triton_rows if r.get("kind") == "kernel"])
        lines.append(f"- Triton: {n} compilations ({len({r['config'] for r in triton_rows if r.get('kind') == 'kernel'})}"
                     f" configurations x {len({r['sm'] for r in triton_rows if r.get('kind') == 'kernel'})} targets), "
                     f"{sum(1 for r in triton_rows if r.get('kind') == 'kernel' and not r.get('ok'))} failed")
    if cuda_rows is not None:
        lines.append(f"- CUDA: {len([r for r in cuda_rows if r.get('kind') == 'kernel'])} kernel entries, "
                     f"{sum(1 for r in cuda_rows if r.get('kind') == 'warning')} warnings, "
                     f"{sum(1 for r in cuda_rows if r.get('kind') == 'error')} compile errors")
    lines.append(f"- spills: {sum(1 for r in rows if spilled(r))} kernel compilations (configuration x sm) spill, "
                 f"{spill_total} bytes of spill stores and loads in all")
    if found:
        lines += ["", "## Problems", ""] + [f"- {p.splitlines()[0]}" for p in found]
    return "\n".join(lines) + "\n"


def write_report(triton_rows, cuda_rows, out_dir):
    """gpu_report.json (every row, the summaries, the tool versions) and gpu_report.md (the tables)
    in out_dir; {"json": path, "md": path}. None for a part skips it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    versions = tool_versions()
    rows = (triton_rows or []) + (cuda_rows or [])
    paths = {"json": out_dir / "gpu_report.json", "md": out_dir / "gpu_report.md"}
    doc = {"versions": versions, "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "summary": summarize(rows), "problems": problems(rows), "triton": triton_rows, "cuda": cuda_rows}

    def lines(key):  # one row a line: a readable diff between two reports
        if doc[key] is None:
            return "null"
        return "[\n" + ",\n".join(json.dumps(r) for r in doc[key]) + "\n]"

    paths["json"].write_text("{\n" + ",\n".join(f"{json.dumps(k)}: " + (lines(k) if k in ("summary", "triton", "cuda")
                                                                       else json.dumps(v, indent=1))
                                                for k, v in doc.items()) + "\n}\n")
    paths["md"].write_text(markdown(triton_rows, cuda_rows, versions))
    return paths


def main(argv=None):
    """`python -m ganfast.bench.gpu_report [--out DIR] [--skip-triton] [--skip-cuda]`: writes the
    report, prints its Markdown; 1 if anything fails to compile, warns (CUDA) or spills."""
    parser = argparse.ArgumentParser(prog="ganfast bench --gpu-report", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: ./ganfast-bench in the current directory; the "
                             "checkout's committed report: --out benchmarks/results)")
    parser.add_argument("--skip-triton", action="store_true", help="leave out the Triton kernels")
    parser.add_argument("--skip-cuda", action="store_true", help="leave out the CUDA kernels")
    parser.add_argument("--workers", type=int, default=None, help="compile processes (default: one per CPU)")
    args = parser.parse_args(argv)
    out = args.out or Path("ganfast-bench")
    triton_rows = cuda_rows = None
    try:
        if not args.skip_triton:
            t = time.time()
            print(f"gpu-report: compiling every Triton configuration for sm_{'/sm_'.join(map(str, CCS))} ...",
                  file=sys.stderr, flush=True)
            triton_rows = triton_report(workers=args.workers)
            print(f"gpu-report: Triton done in {time.time() - t:.0f} s", file=sys.stderr, flush=True)
        if not args.skip_cuda:
            t = time.time()
            print("gpu-report: compiling csrc/cuda/*.cu with nvcc -Xptxas -v ...", file=sys.stderr, flush=True)
            cuda_rows = cuda_report(workers=args.workers)
            print(f"gpu-report: CUDA done in {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    except RuntimeError as e:
        print(f"gpu-report: {e}", file=sys.stderr)
        return 1
    paths = write_report(triton_rows, cuda_rows, out)
    print(paths["md"].read_text())
    print(f"written: {paths['json']}, {paths['md']}")
    return 1 if problems((triton_rows or []) + (cuda_rows or [])) else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--triton-worker"]:
        _triton_worker(tuple(int(c) for c in sys.argv[2].split(",")), int(sys.argv[3]) or None)
    else:
        sys.exit(main())
