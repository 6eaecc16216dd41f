"""The CUDA emulator itself (tests/cuda_emu): its own checks, that it runs every CUDA kernel of
csrc/cuda, and what only it can check here: that the reductions do not depend on the order the
GPU schedules their blocks in. The kernels' results are checked against the reference by the
family tests, where the emulated kernels are the implementations "cuda-emu-<config>".
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch

import cuda_emu
import ganfast
from conftest import assert_close, randn
from ganfast import ops

pytestmark = pytest.mark.skipif(not cuda_emu.enabled(), reason="the CUDA emulator is switched off "
                                                               "(GANFAST_CUDA_EMU=0)")


@pytest.fixture(scope="module")
def emulator():
    try:
        cuda_emu.load()
    except RuntimeError as exc:
        pytest.fail(str(exc))


def test_emulator_selftest(tmp_path):
    """cuda_emu.h's own test, without torch: barriers, shuffles (idx, up, down, xor, ballot),
    atomics, and the errors it must raise (divergent barriers, bad shuffle masks, deadlocks)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.fail("no C++ compiler on PATH: the emulator needs one")
    exe = tmp_path / "selftest"
    subprocess.run([cxx, "-std=c++17", "-O1", "-I", str(cuda_emu.INCLUDE), "-include", "cuda_emu.h",
                    str(cuda_emu.HERE / "selftest.cpp"), "-o", str(exe)], check=True)
    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_cuda_kernel_is_emulated(emulator):
    """Every ganfast op csrc/cuda registers is in the emulated library: a new .cu file or op
    joins the emulated tests without a line here."""
    names = [n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("ganfast::")]
    assert set(cuda_emu.ops()) <= set(names)
    if ganfast.backend.cuda_kernels_built():
        with_cuda = {n for n in names if torch._C._dispatch_has_kernel_for_dispatch_key(f"ganfast::{n}", "CUDA")}
        assert with_cuda == set(cuda_emu.ops())
    # and, independently of this install, one op of every family csrc/cuda holds
    families = {"losses.cu": "gan_d_loss", "penalty.cu": "penalty_from_grad", "bias_act.cu": "bias_act",
                "batch_norm_act.cu": "batch_norm_act", "info_loss.cu": "info_loss",
                "cycle_loss.cu": "cycle_loss", "spectral_norm.cu": "spectral_norm",
                "orthogonal_regularization.cu": "orthogonal_regularization"}
    for cu in (cuda_emu.REPO / "csrc" / "cuda").glob("*.cu"):
        assert cu.name in families, f"csrc/cuda/{cu.name} is new: name one of its ops in this test"
        assert cuda_emu.has_kernel(families[cu.name]), cu.name
    # ops that share a file with another: each named
    assert cuda_emu.has_kernel("bias_act_backward_with_bias")
    assert cuda_emu.has_kernel("instance_norm_act")  # batch_norm_act.cu's kernels over the per-(n, c) axis
    assert cuda_emu.has_kernel("spectral_norm_backward")


def test_routing_runs_the_emulated_kernel(emulator):
    """Inside emulating(), ganfast.ops on CPU tensors run the CUDA code: an out-of-range
    probability is the CUDA kernel's device-side assert, not the CPU kernel's error, and the
    emulator recovers from it; outside, the CPU kernel is back."""
    p = torch.full((10,), 0.5)
    p[3] = 1.5
    t = torch.rand(10)
    with ganfast.use_backend("cpu"):
        with cuda_emu.emulating("sm4-reverse"):
            with pytest.raises(RuntimeError, match="device-side assert"):
                ops.binary_cross_entropy(p, t, None, "mean")
            q = torch.rand(10)
            assert_close(ops.binary_cross_entropy(q, t, None, "mean"),
                         torch.nn.functional.binary_cross_entropy(q.double(), t.double()), check_dtype=False)
        with pytest.raises(RuntimeError) as outside:
            ops.binary_cross_entropy(p, t, None, "mean")
        assert "device-side assert" not in str(outside.value)


# One call of each reducing kernel path; each returns the tensors to compare.
def _reductions(gen, dtype):
    x = randn((3, 5, 37, 41), dtype, gen=gen, scale=3.0)  # 22755 elements: many blocks
    r = randn((4099,), dtype, gen=gen)
    f = randn((3000,), dtype, gen=gen)
    g = torch.rand((), dtype=dtype, generator=gen) + 0.5
    grad_grad = randn(x.shape, dtype, gen=gen)
    pen, norms = ops.penalty_from_grad(x, "wgan-gp", 1.0)
    out = {
        "bce_with_logits": ops.bce_with_logits(r, torch.rand(r.shape, generator=gen, dtype=dtype), None, None, "mean"),
        "gan_d_loss": ops.gan_d_loss(r, f, "nonsaturating", 1.0, 0.0),
        "penalty": pen,
        "penalty_norms": norms,
        "penalty_double_backward": torch.ops.ganfast.penalty_from_grad_double_backward(
            grad_grad, g, x, norms, "wgan-gp", 1.0)[0],
    }
    bn, mean, invstd = torch.ops.ganfast.batch_norm_act(x, None, None, None, None, True, 0.1, 1e-5, "relu", 0.0)
    out.update(bn_mean=mean, bn_invstd=invstd)
    # info_loss: 300 categorical rows (a warp each) and 600 Gaussian terms over several blocks
    logits, mu, ls = randn((300, 10), dtype, gen=gen), randn((300, 2), dtype, gen=gen), randn((300, 2), dtype, gen=gen)
    out["info_loss"] = ops.info_loss(logits, torch.randint(0, 10, (300,), generator=gen), mu, mu.flip(0), ls, 0.7, 1.3)
    gi, gw, gb = torch.ops.ganfast.batch_norm_act_backward(randn(x.shape, dtype, gen=gen), x, None, None, mean,
                                                          invstd, True, "relu", 0.0)
    out.update(bn_grad_weight=gw, bn_grad_bias=gb)
    # instance_norm_act: 15 instances of 1517 values (several reduce blocks each, their pieces added in
    # order), the per-instance weight / bias gradients summed over n
    w5 = randn((5,), dtype, gen=gen)
    _, in_mean, in_invstd = torch.ops.ganfast.instance_norm_act(x, w5, None, 1e-5, "tanh", 0.0)
    _, in_gw, in_gb = torch.ops.ganfast.instance_norm_act_backward(grad_grad, x, w5, w5, in_mean, in_invstd, "lrelu",
                                                                  0.2)
    out.update(in_mean=in_mean, in_invstd=in_invstd, in_grad_weight=in_gw, in_grad_bias=in_gb)
    cl = x.contiguous(memory_format=torch.channels_last)
    out["bn_channels_last_invstd"] = torch.ops.ganfast.batch_norm_act(cl, None, None, None, None, True, 0.1, 1e-5,
                                                                      "relu", 0.0)[2]
    # bias_act's bias gradient: Rows (NCHW) and Cyclic (channels_last), x + b and y-only
    b = randn((5,), dtype, gen=gen)
    fused = torch.ops.ganfast.bias_act_backward_with_bias
    out["bias_grad_rows"] = fused(grad_grad, x, b, x, 1, "swish", 0.0, 1.0, -1.0)[1]
    # cycle_loss: several pairs in one launch, the partials of every pair's blocks added in order
    out["cycle_loss"] = ops.cycle_loss([x, r, cl], [grad_grad, torch.roll(r, 1), cl * 0.5], 1.5)
    # orthogonal_regularization: a 111 x 111 Gram over several blocks with its diagonal, a tall weight's two segments
    out["orthogonal_regularization"] = ops.orthogonal_regularization([x.reshape(111, 205), r[:4000].reshape(200, 20)],
                                                                     0.3)
    out["bias_grad_channels_last"] = fused(grad_grad.contiguous(memory_format=torch.channels_last), None, b, cl, 1,
                                           "lrelu", 0.2, 1.0, -1.0)[1]
    # spectral_norm: W^T u's per-column warp sums added through shared memory, the norms' block_sum, and
    # the backward's <G, W> over several blocks (every grad block adding the partials itself)
    wsn = randn((40, 7, 3, 3), dtype, gen=gen)
    usn = torch.nn.functional.normalize(randn((40,), dtype, gen=gen), dim=0)
    vsn = torch.nn.functional.normalize(randn((63,), dtype, gen=gen), dim=0)
    _, sn_cache = torch.ops.ganfast.spectral_norm(wsn, usn, vsn, 0, 2, 1e-12, True)
    out.update(sn_cache=sn_cache, sn_u=usn, sn_v=vsn,
               sn_grad=torch.ops.ganfast.spectral_norm_backward(randn(wsn.shape, dtype, gen=gen), wsn, sn_cache, 0))
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_reductions_do_not_depend_on_block_order(emulator, monkeypatch, dtype):
    """The same grid run in four block orders (which block finishes last, which warp runs ahead)
    gives bit-identical results: every reduction adds its partials in a fixed order. (float64
    shows it best: its partials carry all their digits, so any other order rounds differently.)"""
    monkeypatch.setenv("CUDAEMU_SM_COUNT", "4")
    monkeypatch.setenv("CUDAEMU_BLOCKS_PER_SM", "2")
    results = {}
    with ganfast.use_backend("cpu"), cuda_emu.emulating("sm4-reverse"):
        for order in ("forward", "reverse", "shuffle:1", "shuffle:2"):
            os.environ["CUDAEMU_ORDER"] = order  # emulating() restores it on exit
            results[order] = _reductions(torch.Generator().manual_seed(7), dtype)
    first = results["forward"]
    for order, res in results.items():
        for name, value in res.items():
            assert torch.equal(value, first[name]), f"{name}: block order {order} differs from forward"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_batch_norm_statistics_are_finalised_in_double_as_on_the_cpu(emulator, dtype):
    """The CUDA and CPU kernels finalise a channel's statistics in double and round once, so
    where no sum is involved (eval: the running statistics) their save_mean / save_invstd are
    bit-identical. (A float finalize, 1 / sqrtf(var + eps) in float, differs in the last bit of
    many channels.)"""
    gen = torch.Generator().manual_seed(11)
    C = 2048
    x = randn((2, C, 3), dtype, gen=gen)
    rm = randn((C,), torch.float32, gen=gen)
    rv = torch.rand((C,), generator=gen) * 4 + 1e-3
    w, b = randn((C,), dtype, gen=gen), randn((C,), dtype, gen=gen)
    args = (x, w, b, rm, rv, False, 0.1, 1e-5, "relu", 0.0)
    with ganfast.use_backend("cpu"):
        cpu = torch.ops.ganfast.batch_norm_act(*args)
        with cuda_emu.emulating("sm4-reverse"):
            emulated = torch.ops.ganfast.batch_norm_act(*args)
    assert torch.equal(emulated[1], cpu[1]), "save_mean"
    assert torch.equal(emulated[2], cpu[2]), "save_invstd"
