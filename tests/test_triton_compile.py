"""Ahead-of-time GPU compilation of every Triton kernel in ganfast/triton (MODULES: losses.py,
penalty.py, bias_act.py, batch_norm_act.py, conv_block.py).

The Triton interpreter (how the kernels are tested on this GPU-less machine) accepts code that
the GPU compiler rejects, so every kernel is also compiled with triton.compile(ASTSource(...),
target=GPUTarget("cuda", cc, 32)) for sm_80 and sm_90, for the constexpr configurations the
launchers use: each loss / GAN kind, each reduction and upstream-gradient form, each way of
reading weight and pos_weight; each penalty kind, per-sample indexing and reduction tile; each
activation with each derivative order, from x or from y, clamp, bias map and upstream-gradient
form; float32 / float16 / bfloat16 / float64, with the specialisations Triton's JIT makes at run
time (16-byte-aligned pointers, so vector accesses compile; an int argument equal to 1 as a
constexpr; int arguments divisible by 16) and without them. PTX and a cubin must come out, without
register spills; registers, shared memory and spill (local) bytes are read from the cubin with
the cuobjdump Triton ships, printed with `pytest -s`.

The compilation runs in a subprocess without TRITON_INTERPRET (with it set, triton.jit makes
interpreter functions that ASTSource cannot compile), with one worker per CPU, and Triton's
cache makes reruns fast. ptxas is the one Triton ships (triton/backends/nvidia/bin).
"""
import json
import os
import subprocess
import sys

import pytest

CCS = (80, 90)
MODULES = ("losses", "penalty", "bias_act", "batch_norm_act", "conv_block")
DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}
_RESULT_TAG = "GANFAST_AOT_RESULTS "


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
                        {"num_warps": 4, "ptr_types": ptrs(dt)}))
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
        o = {"num_warps": CB.NUM_WARPS, "num_stages": CB.NUM_STAGES}
        if epi == "bn" and dt in ("float16", "bfloat16"):
            o["ptr_types"] = {n: "*fp32" for n in ("p0_ptr", "p1_ptr", "p2_ptr", "p3_ptr", "bias_ptr")}
        elif epi == "affine":
            o["ptr_types"] = {"p0_ptr": "*" + ("fp64" if dt == "float64" else "fp32"),
                              "p1_ptr": "*" + ("fp64" if dt == "float64" else "fp32")}
        return o

    def blocks(small):
        return dict(BLOCK_M=CB.BLOCK_M if not small else 32, BLOCK_N=16 if small else CB.BLOCK_N, BLOCK_K=CB.BLOCK_K)

    def fwd(dt, geom, epi="none", act="relu", stats=False, bias=False, layout="nchw", small=False, i64=False):
        ones = {"sxw": 1, "sow": 1} if layout == "nchw" else {"sxc": 1, "soc": 1}
        c = dict(geoms[geom], HAS_BIAS=bias, EPI=epi, ACT=act, STATS=stats, ACC=acc(dt),
                 DOT_IEEE=dt == "float32", BIG=i64, **blocks(small), **ones)
        out.append(("conv_block", "_conv_t_kernel", dt, c, i64, opts(dt, epi)))

    def bwd(kernel, dt, geom, layout="nchw", small=False, i64=False):
        if kernel == "_conv_t_grad_x_kernel":
            ones = {"sgw": 1, "sxw": 1} if layout == "nchw" else {"sgc": 1, "sxc": 1}
        else:
            ones = {"sxw": 1, "sgw": 1} if layout == "nchw" else {"sxc": 1, "sgc": 1}
        c = dict(geoms[geom], ACC=acc(dt), DOT_IEEE=dt == "float32", BIG=i64, **blocks(small), **ones)
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


def configs():
    """[(module, kernel name, dtype name, constexprs, int64 indices?, options)] of every module."""
    return ([("losses",) + c for c in loss_configs()] + penalty_configs() + bias_act_configs()
            + batch_norm_act_configs() + conv_block_configs())


# Pointers in the accumulation dtype (partials, per-sample norms and dots) and the float arguments
# (passed as Python floats, typed tl.float64 in the kernels).
_ACC_POINTERS = ("partial_ptr", "norms_ptr", "vec_ptr", "dots_ptr", "mean_ptr", "invstd_ptr", "var_ptr",
                 "terms_ptr")
_FLOAT_ARGS = ("real_label", "fake_label", "center", "alpha", "gain", "clamp", "momentum", "eps")


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


def _describe(kernel, dtype, constexprs, options):
    keys = [f"{k}={getattr(v, 'name', v)}" for k, v in constexprs.items() if k not in ("BLOCK", "PBLOCK", "ACC")]
    if options.get("debug"):
        keys.append("debug")
    if not options.get("aligned", True):
        keys.append("unaligned pointers")
    if options.get("int_div16"):
        keys.append("int args divisible by 16: " + "/".join(options["int_div16"]))
    return f"{kernel}[{dtype}]({', '.join(keys)})"


def _resource_usage(cubin):
    """(registers, local bytes, shared bytes) from cuobjdump -res-usage, or None."""
    import re
    import tempfile

    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    if m is None:
        return None
    return {"regs": int(m.group(1)), "stack": int(m.group(2)), "shared": int(m.group(3)),
            "local": int(m.group(4))}


def _compile_job(job):
    index, cc = job
    import importlib

    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ganfast.triton import losses as L

    module, kernel, dtype, constexprs, i64, options = configs()[index]
    fn = getattr(importlib.import_module(f"ganfast.triton.{module}"), kernel)
    name = f"{module}.{kernel}"
    result = {"kernel": name, "config": _describe(name, dtype, constexprs, options), "cc": cc}
    options = dict(options)
    aligned = options.pop("aligned", True)
    int_div16 = options.pop("int_div16", ())
    ptr_types = options.pop("ptr_types", {})  # pointers whose dtype is not the input's
    try:
        sig = signature(fn, dtype, constexprs, i64)
        sig.update({name: ty for name, ty in ptr_types.items() if name in sig})
        src = ASTSource(fn=fn, signature=sig, constexprs=constexprs,
                        attrs=attributes(fn, sig, int_div16) if aligned else {})
        compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                                  options=dict(dict(num_warps=L.num_warps(getattr(torch, dtype))), **options))
        ptx, cubin = compiled.asm.get("ptx", ""), compiled.asm.get("cubin", b"")
        result.update(ok=bool(ptx) and f"sm_{cc}" in ptx and len(cubin) > 0,
                      ptx_bytes=len(ptx), cubin_bytes=len(cubin))
        result.update(_resource_usage(cubin) or {})
    except Exception as e:  # reported, the test fails on it
        result.update(ok=False, error=f"{type(e).__name__}: {e}"[:2000])
    return result


def _worker():
    """Compiles every configuration for every cc; prints the results as one JSON line."""
    import concurrent.futures
    import multiprocessing

    import importlib

    import triton

    kernels = []
    for module in MODULES:
        m = importlib.import_module(f"ganfast.triton.{module}")
        kernels += sorted(f"{module}.{name}" for name, v in vars(m).items()
                          if isinstance(v, triton.runtime.jit.JITFunction) and name.endswith("_kernel"))
    jobs = [(i, cc) for i in range(len(configs())) for cc in CCS]
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        results = list(pool.map(_compile_job, jobs, chunksize=4))
    print(_RESULT_TAG + json.dumps({"kernels": kernels, "results": results}), flush=True)


def _ptxas():
    import importlib.util

    spec = importlib.util.find_spec("triton")
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "backends", "nvidia", "bin", "ptxas")
    return path if os.path.exists(path) else None


@pytest.mark.slow
def test_triton_kernels_compile_for_sm80_and_sm90():
    pytest.importorskip("triton")
    if _ptxas() is None and not os.environ.get("TRITON_PTXAS_PATH"):
        pytest.skip("no ptxas: triton/backends/nvidia/bin/ptxas is missing and TRITON_PTXAS_PATH is unset")
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker"], env=env, cwd=root,
                          capture_output=True, text=True, timeout=1800)
    lines = [l for l in proc.stdout.splitlines() if l.startswith(_RESULT_TAG)]
    assert proc.returncode == 0 and lines, f"AOT worker failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    report = json.loads(lines[-1][len(_RESULT_TAG):])
    results = report["results"]

    failed = [r for r in results if not r["ok"]]
    assert not failed, "kernels that do not compile for the GPU:\n" + "\n".join(
        f"  sm_{r['cc']} {r['config']}: {r.get('error', 'no PTX/cubin')}" for r in failed[:20])
    compiled = {r["kernel"] for r in results}
    missing = set(report["kernels"]) - compiled
    assert not missing, f"kernels with no AOT configuration in this test: {sorted(missing)}"
    spilled = [r for r in results if r.get("local", 0) > 0]

    print(f"\n{len(results)} compilations ({len(results) // len(CCS)} configurations x sm_{'/sm_'.join(map(str, CCS))})")
    for kernel in report["kernels"]:
        for cc in CCS:
            rs = [r for r in results if r["kernel"] == kernel and r["cc"] == cc and "regs" in r]
            if rs:
                regs = [r["regs"] for r in rs]
                print(f"  sm_{cc} {kernel}: {len(rs)} configs, registers {min(regs)}-{max(regs)}, "
                      f"spill bytes {max(r['local'] for r in rs)}, stack {max(r.get('stack', 0) for r in rs)} B, "
                      f"shared {max(r['shared'] for r in rs)} B")
    assert not spilled, "register spills:\n" + "\n".join(
        f"  sm_{r['cc']} {r['config']}: {r['local']} local bytes" for r in spilled[:20])


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker()
