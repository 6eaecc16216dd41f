"""Synchronised BatchNorm (issue 15): ganfast.ops.batch_norm_act(process_group=...),
ganfast.nn.convert_sync_batchnorm and fuse(sync_batchnorm=True), in 2 gloo processes.

One spawn runs every multi-process check (starting processes costs seconds): float64, random
inputs and upstream gradients, odd shapes, each rank an uneven slice (3 and 2 samples) of one
global batch. The synchronised op / model on the slices is compared with the unsynchronised one on
the whole batch in one process (outputs and input gradients slice by slice; parameter gradients
summed over the ranks; running statistics), and with torch.nn.SyncBatchNorm's semantics written
in torch ops over an all-reduce with autograd (the gradients autograd's, not ganfast's formula):
torch's own torch.nn.SyncBatchNorm refuses CPU tensors (and aten::batch_norm_stats has no CPU
kernel), so it cannot run here. All-reduces are counted: one each way per layer in training, none in eval or with
a group of one process.
"""
from __future__ import annotations

import copy
import datetime

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import ganfast
from conftest import assert_close, implementation_device, selected
from ganfast import ops
from ganfast.nn import (ConditionalBatchNorm2d, Conv2dBlock, ConvTransposeBlock, LinearBlock, SAGANGenerator,
                        convert_sync_batchnorm, fuse)

SLICES = (3, 2)  # samples of rank 0 and rank 1: the global batch is 5
C, H, W = 5, 3, 7
MOMENTUM, EPS = 0.3, 1e-3
TOL = dict(atol=1e-10, rtol=1e-9)  # float64: reduction order only
# The implementations the multi-process checks run (those absent here are left out, as the family
# tests skip them): the C++ CPU kernels, the reference, Triton through the interpreter, the CUDA
# kernels through the emulator (one configuration).
NAMES = ("reference", "cpu", "triton", "cuda-emu-sm4-reverse")


def _lo_hi(rank):
    lo = sum(SLICES[:rank])
    return lo, lo + SLICES[rank]


_ALL_REDUCE = dist.all_reduce  # the test's own collectives, not counted


def _act(v, act):
    return F.relu(v) if act == "relu" else F.leaky_relu(v, 0.2)


class _CountAllReduce:
    """Counts torch.distributed.all_reduce calls (ganfast's synchronised path looks it up per call)."""

    def __init__(self):
        self.n = 0

    def __call__(self, *args, **kwargs):
        self.n += 1
        return _ALL_REDUCE(*args, **kwargs)

    def take(self):
        n, self.n = self.n, 0
        return n


class _AllReduce(torch.autograd.Function):
    """all_reduce (SUM) with its adjoint, all_reduce of the gradient (as torch.distributed.nn's)."""

    @staticmethod
    def forward(ctx, t):
        t = t.clone()
        _ALL_REDUCE(t)
        return t

    @staticmethod
    def backward(ctx, g):
        g = g.clone()
        _ALL_REDUCE(g)
        return g


def _torch_sync_bn(x, w, b, eps, act):
    """torch.nn.SyncBatchNorm's training forward (+ activation) from an all-reduce with autograd:
    the gradients are torch autograd's, not ganfast's formula. (N, C) or (C,) w / b."""
    all_reduce = _AllReduce.apply
    dims = [0] + list(range(2, x.dim()))
    n = x.new_tensor(float(x.numel() // x.size(1)))
    s = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), n.view(1)]))
    c = x.size(1)
    mean = s[:c] / s[2 * c]
    var = s[c:2 * c] / s[2 * c] - mean * mean
    view = (1, c) + (1,) * (x.dim() - 2)
    z = (x - mean.view(view)) * torch.rsqrt(var.view(view) + eps)
    shape = lambda t: t.shape + (1,) * (x.dim() - 2) if t.dim() == 2 else view  # noqa: E731
    z = z * w.view(shape(w)) if w is not None else z
    z = z + b.view(shape(b)) if b is not None else z
    return _act(z, act), mean.detach(), (var * s[2 * c] / (s[2 * c] - 1)).detach()


def _summed(t):
    t = t.detach().clone()
    _ALL_REDUCE(t)
    return t


def _gathered(t, rank):
    """The slices of all ranks concatenated along dim 0 (uneven: padded to the largest)."""
    pad = torch.zeros((max(SLICES),) + tuple(t.shape[1:]), dtype=t.dtype)
    pad[:t.size(0)] = t.detach()
    parts = [torch.empty_like(pad) for _ in SLICES]
    dist.all_gather(parts, pad)
    return torch.cat([p[:n] for p, n in zip(parts, SLICES)])


# ---- the op ------------------------------------------------------------------------------------

def _check_op(rank, name, count, gen):
    lo, hi = _lo_hi(rank)
    n = sum(SLICES)
    world = dist.group.WORLD
    # (act, weight shape, bias shape): per-channel affine, none, per-sample (conditional), weight only
    for act, wshape, bshape in (("relu", (C,), (C,)), ("lrelu", None, None), ("relu", (n, C), (n, C)),
                                ("lrelu", (C,), None)):
        X = torch.randn(n, C, H, W, generator=gen, dtype=torch.float64) * 1.5 + 0.7
        G = torch.randn(n, C, H, W, generator=gen, dtype=torch.float64)
        Wt = None if wshape is None else torch.randn(wshape, generator=gen, dtype=torch.float64)
        Bt = None if bshape is None else torch.randn(bshape, generator=gen, dtype=torch.float64)
        RM, RV = torch.randn(C, generator=gen, dtype=torch.float64), torch.rand(C, generator=gen, dtype=torch.float64) + 0.5

        def local(t):  # this rank's slice of the samples (the per-channel vectors whole)
            return None if t is None else (t if t.dim() == 1 else t[lo:hi]).clone().requires_grad_()

        def full(t):
            return None if t is None else t.clone().requires_grad_()

        what = f"[{name}] {act} weight {wshape} bias {bshape}"
        x, w, b, rm, rv = local(X), local(Wt), local(Bt), RM.clone(), RV.clone()
        y = ops.batch_norm_act(x, w, b, rm, rv, True, MOMENTUM, EPS, act, process_group=world)
        y.backward(G[lo:hi])
        assert count.take() == 2, f"{what}: one all-reduce forward and one backward"
        # the unsynchronised op of the same implementation on the whole batch, in one process
        xf, wf, bf, rmf, rvf = full(X), full(Wt), full(Bt), RM.clone(), RV.clone()
        yf = ops.batch_norm_act(xf, wf, bf, rmf, rvf, True, MOMENTUM, EPS, act)
        yf.backward(G)
        assert count.take() == 0
        assert_close(y, yf[lo:hi], **TOL, name=f"{what}: output")
        assert_close(x.grad, xf.grad[lo:hi], **TOL, name=f"{what}: grad input")
        for t, tf, arg in ((w, wf, "weight"), (b, bf, "bias")):
            if t is None:
                continue
            if t.dim() == 2:  # per sample: each rank has its samples' gradients
                assert_close(_gathered(t.grad, rank), tf.grad, **TOL, name=f"{what}: grad {arg} (N, C)")
            else:  # local, as torch.nn.SyncBatchNorm's (DDP averages them): the ranks' sum is the global one
                assert_close(_summed(t.grad), tf.grad, **TOL, name=f"{what}: grad {arg} summed over ranks")
        assert_close(rm, rmf, **TOL, name=f"{what}: running_mean")
        assert_close(rv, rvf, **TOL, name=f"{what}: running_var")
        # torch.nn.SyncBatchNorm's semantics through torch's own autograd, on the same slices
        xt, wt, bt = local(X), local(Wt), local(Bt)
        yt, mean_t, var_t = _torch_sync_bn(xt, wt, bt, EPS, act)
        yt.backward(G[lo:hi])
        count.take()
        assert_close(y, yt, **TOL, name=f"{what}: output vs SyncBatchNorm")
        assert_close(x.grad, xt.grad, **TOL, name=f"{what}: grad input vs SyncBatchNorm")
        for t, tt, arg in ((w, wt, "weight"), (b, bt, "bias")):
            if t is not None:  # local in both
                assert_close(t.grad, tt.grad, **TOL, name=f"{what}: grad {arg} vs SyncBatchNorm")
        assert_close(rm, RM * (1 - MOMENTUM) + mean_t * MOMENTUM, **TOL, name=f"{what}: running_mean vs torch")
        assert_close(rv, RV * (1 - MOMENTUM) + var_t * MOMENTUM, **TOL, name=f"{what}: running_var vs torch")
        count.take()


def _check_op_edges(rank, count, gen):
    lo, hi = _lo_hi(rank)
    world = dist.group.WORLD
    X = torch.randn(sum(SLICES), C, H, W, generator=gen, dtype=torch.float64)
    rm, rv = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    # eval: the running statistics, no collective (rank 1 calls nothing: a collective would fail)
    if rank == 0:
        x = X[lo:hi].clone().requires_grad_()
        y = ops.batch_norm_act(x, None, None, rm, rv, False, MOMENTUM, EPS, "relu", process_group=world)
        y.sum().backward()
        assert torch.equal(y, ops.batch_norm_act(X[lo:hi], None, None, rm, rv, False, MOMENTUM, EPS, "relu"))
        assert count.take() == 0, "eval must not all-reduce"
    # a group of one process: exactly the unsynchronised op, no collective
    groups = [dist.new_group([r]) for r in range(2)]
    count.take()
    x = X[lo:hi]
    rm1, rv1, rm2, rv2 = rm.clone(), rv.clone(), rm.clone(), rv.clone()
    y1 = ops.batch_norm_act(x, None, None, rm1, rv1, True, MOMENTUM, EPS, "relu", process_group=groups[rank])
    y2 = ops.batch_norm_act(x, None, None, rm2, rv2, True, MOMENTUM, EPS, "relu")
    assert count.take() == 0, "a group of one process must not all-reduce"
    assert torch.equal(y1, y2) and torch.equal(rm1, rm2) and torch.equal(rv1, rv2)
    # training under no_grad (e.g. sampling a train-mode G): synchronised, no graph kept
    with torch.no_grad():
        y = ops.batch_norm_act(X[lo:hi], None, None, None, None, True, MOMENTUM, EPS, "relu", process_group=world)
    assert count.take() == 1 and y.grad_fn is None
    dims = (0, 2, 3)
    expected = F.relu((X - X.mean(dims, keepdim=True)) / torch.sqrt(X.var(dims, unbiased=False, keepdim=True) + EPS))
    assert_close(y, expected[lo:hi], **TOL, name="no_grad forward")
    # double backward raises (never a silently wrong gradient)
    x = X[lo:hi].clone().requires_grad_()
    w = torch.ones(C, dtype=torch.float64, requires_grad=True)
    y = ops.batch_norm_act(x, w, None, None, None, True, MOMENTUM, EPS, "lrelu", process_group=world)
    (gx,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="first derivatives only"):
        gx.sum().backward()
    count.take()
    # one value per channel on a rank is fine when the group has more (BatchNorm1d, batch 1 per rank)
    xs = X[rank:rank + 1, :, 0, 0].clone().requires_grad_()
    y = ops.batch_norm_act(xs, None, None, None, None, True, MOMENTUM, EPS, "linear", process_group=world)
    two = X[:2, :, 0, 0]
    expected = (two - two.mean(0)) / torch.sqrt(two.var(0, unbiased=False) + EPS)
    assert_close(y, expected[rank:rank + 1], **TOL, name="one value per rank")
    count.take()


# ---- modules -----------------------------------------------------------------------------------

def _models(gen_seed):
    """Models whose every BatchNorm ganfast runs (fused), built identically on every rank."""
    torch.manual_seed(gen_seed)
    blocks = nn.Sequential(ConvTransposeBlock(4, C, 3, 1, 0), ConvTransposeBlock(C, 3, 4, 2, 1, act="lrelu"),
                           Conv2dBlock(3, 4, 3, 2, 1, norm="batch"), nn.Flatten(), LinearBlock(4 * 3 * 3, 6, norm="batch"))
    fused = fuse(nn.Sequential(nn.ConvTranspose2d(4, C, 3, 1, 0, bias=False), nn.BatchNorm2d(C, momentum=None),
                               nn.ReLU(), nn.Conv2d(C, 3, 3, 1, 1), nn.BatchNorm2d(3), nn.LeakyReLU(0.2)))
    for m in (blocks, fused):
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d) or type(bn).__name__ == "BatchNorm2dParams":
                with torch.no_grad():  # not the identity affine / statistics of a fresh BatchNorm
                    bn.weight.uniform_(0.5, 1.5)
                    bn.bias.uniform_(-0.5, 0.5)
                    bn.running_mean.uniform_(-0.5, 0.5)
    return {"blocks": blocks.double(), "fused": fused.double()}


def _check_model(rank, what, model, inputs, count, layers, steps=2):
    """model synchronised on this rank's slice vs a copy of it unsynchronised on the whole batch:
    `steps` training steps (outputs, input and parameter gradients, buffers), then eval."""
    lo, hi = _lo_hi(rank)
    ref = copy.deepcopy(model)
    synced = convert_sync_batchnorm(copy.deepcopy(model))
    for step in range(steps):
        local = [t[lo:hi].clone().requires_grad_(t.is_floating_point()) for t in inputs(step)]
        full = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs(step)]
        y = synced(*local)
        grad = torch.randn(full[0].size(0), *y.shape[1:], generator=torch.Generator().manual_seed(step),
                           dtype=y.dtype)
        y.backward(grad[lo:hi])
        calls = count.take()
        assert calls == 2 * layers, f"{what}: {calls} all-reduces, expected 2 per BatchNorm ({layers})"
        yf = ref(*full)
        yf.backward(grad)
        assert count.take() == 0
        assert_close(y, yf[lo:hi], **TOL, name=f"{what} step {step}: output")
        assert_close(local[0].grad, full[0].grad[lo:hi], **TOL, name=f"{what} step {step}: grad input")
        for (k, p), pf in zip(synced.named_parameters(), ref.parameters()):
            assert_close(_summed(p.grad), pf.grad, **TOL, name=f"{what} step {step}: grad {k} summed over ranks")
        for (k, t), tf in zip(synced.state_dict().items(), ref.state_dict().values()):
            assert_close(t, tf, **TOL, check_dtype=False, name=f"{what} step {step}: {k}")
    synced.eval(), ref.eval()
    local = [t[lo:hi] for t in inputs(steps)]
    with torch.no_grad():
        y, yf = synced(*local), ref(*[t for t in inputs(steps)])
    assert count.take() == 0, f"{what}: eval must not all-reduce"
    assert_close(y, yf[lo:hi], **TOL, name=f"{what}: eval output")


def _check_models(rank, name, count, full):
    """full: every model, two training steps; else (the interpreted / emulated implementations, slow
    here) the blocks' model for one step (the other models run the same batch_norm_act path)."""
    n = sum(SLICES)
    for key, model in _models(7).items():
        if not full and key != "blocks":
            continue
        layers = sum(1 for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)
                     or type(m).__name__ == "BatchNorm2dParams")
        _check_model(rank, f"[{name}] {key}", model,
                     lambda s: [torch.randn(n, 4, 1 + 2 * (key == "fused"), 1 + 2 * (key == "fused"),
                                            generator=torch.Generator().manual_seed(100 + s), dtype=torch.float64)],
                     count, layers, steps=2 if full else 1)
    if not full:
        return
    torch.manual_seed(3)
    cbn = ConditionalBatchNorm2d(C, 6, act="lrelu", momentum=None).double()
    with torch.no_grad():
        cbn.gain.weight.normal_(0, 0.5), cbn.bias.weight.normal_(0, 0.5)

    def cbn_inputs(s):
        g = torch.Generator().manual_seed(200 + s)
        return [torch.randn(n, C, H, W, generator=g, dtype=torch.float64) + 0.3,
                torch.randn(n, 6, generator=g, dtype=torch.float64)]

    _check_model(rank, f"[{name}] ConditionalBatchNorm2d", cbn, cbn_inputs, count, 1)
    if full:
        torch.manual_seed(5)
        g = SAGANGenerator(n_classes=3, z_dim=6, ch=2, resolution=32, channels=1, attn_res=()).double()

        def g_inputs(s):
            gen = torch.Generator().manual_seed(300 + s)
            return [torch.randn(n, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen)]

        # every block's two conditional BatchNorms and the output BatchNorm
        _check_model(rank, f"[{name}] SAGANGenerator", g, g_inputs, count, 2 * len(g.blocks) + 1, steps=1)


def _worker(rank, tmp, names):
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=120))
    try:
        torch.set_num_threads(1)
        count = _CountAllReduce()
        dist.all_reduce = count
        gen = torch.Generator().manual_seed(20240607)
        for name in names:
            implementation_device(name, ("batch_norm_act",))  # (loads the CUDA emulator in this process)
            with selected(name):
                _check_op(rank, name, count, gen)
                _check_models(rank, name, count, full=name in ("reference", "cpu"))
        _check_op_edges(rank, count, gen)
    finally:
        dist.all_reduce = _ALL_REDUCE
        dist.destroy_process_group()


def test_two_processes_match_one_process_and_sync_batchnorm(tmp_path):
    names = []
    for name in NAMES:
        try:
            implementation_device(name, ("batch_norm_act",))
        except pytest.skip.Exception:
            continue
        names.append(name)
    assert "cpu" in names and "reference" in names
    print("implementations:", names)
    mp.spawn(_worker, args=(str(tmp_path), names), nprocs=2, join=True)


# ---- one process, no torch.distributed -----------------------------------------------------------

def _sequential():
    return nn.Sequential(ConvTransposeBlock(4, 6), nn.Conv2d(6, 6, 3, 1, 1), nn.BatchNorm2d(6), nn.ReLU(),
                         ConditionalBatchNorm2d(6, 3), nn.Sequential(nn.BatchNorm1d(2)))


def test_convert_sync_batchnorm_keeps_state_dict_and_is_idempotent():
    m = _sequential()
    keys = list(m.state_dict().keys())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    assert convert_sync_batchnorm(m) is m
    assert list(m.state_dict().keys()) == keys
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    # the BatchNorms ganfast runs are marked, not replaced; the others become torch's SyncBatchNorm
    assert type(m[0].bn) is nn.BatchNorm2d and type(m[4]) is ConditionalBatchNorm2d
    assert type(m[2]) is nn.SyncBatchNorm and type(m[5][0]) is nn.SyncBatchNorm
    again = convert_sync_batchnorm(m)
    assert again is m and list(m.state_dict().keys()) == keys
    assert type(m[2]) is nn.SyncBatchNorm and type(m[5][0]) is nn.SyncBatchNorm
    assert type(m[0].bn) is nn.BatchNorm2d
    m.load_state_dict(_sequential().state_dict())  # and the unconverted model's state_dict loads


def test_fuse_sync_batchnorm_keeps_state_dict_and_without_dist_is_unchanged():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.ConvTranspose2d(4, 6, 4, 1, 0, bias=False), nn.BatchNorm2d(6), nn.ReLU())
    keys = list(seq.state_dict().keys())
    plain = fuse(copy.deepcopy(seq))
    synced = fuse(seq, sync_batchnorm=True)
    assert list(synced.state_dict().keys()) == keys
    x = torch.randn(3, 4, 1, 1)
    assert torch.equal(synced(x), plain(x))  # torch.distributed not initialised: today's path
    assert all(torch.equal(a, b) for a, b in zip(synced.state_dict().values(), plain.state_dict().values()))
    copy.deepcopy(synced)  # (the default-group marker survives a deepcopy, e.g. a G EMA copy)


def test_bad_process_group_names_the_argument():
    x = torch.randn(3, C, 2, 2)
    with pytest.raises(TypeError, match=r"process_group must be None \(no synchronisation.*got str"):
        ops.batch_norm_act(x, process_group="WORLD")
    with pytest.raises(TypeError, match="process_group"):
        ops.batch_norm_act(x, None, None, torch.zeros(C), torch.ones(C), False, process_group=1)
    with pytest.raises(TypeError, match=r"process_group must be None \(the default group.*got object"):
        convert_sync_batchnorm(nn.BatchNorm2d(3), process_group=object())
    with pytest.raises(TypeError, match="process_group"):
        ops.conv_transpose_block(x, torch.randn(C, 2, 4, 4), None, None, None, None, None, norm=False, training=True,
                                 momentum=0.1, eps=1e-5, stride=(2, 2), padding=(1, 1), act="relu", alpha=0.0,
                                 process_group=[0, 1])
    with pytest.raises(ValueError, match="sync_batchnorm"):
        fuse(nn.Sequential(), process_group=object())
    with pytest.raises(TypeError, match="sync_batchnorm"):
        fuse(nn.Sequential(), sync_batchnorm="yes")
    with pytest.raises(TypeError, match="module"):
        convert_sync_batchnorm("model")
    assert ganfast.nn.convert_sync_batchnorm is convert_sync_batchnorm
