"""Where the flagship step's device operations went (issue 17): the three penalty steps of the
suite (DCGAN WGAN-GP, DCGAN lazy R1, MLP WGAN-GP on ring8) counted with each of ganfast's changes
added one at a time, so that every removed operation is attributed to one change.

    eager            the suite's eager contender (torch.nn, as a training script writes it)
    textbook         ganfast's kernels in eager's program: fuse(G), fuse(D), ganfast.losses and
                     ganfast.penalty.gradient_penalty with separate passes through D
    + lean           gradient_penalty(lean=True): no exact zeros sent back through D's forward
    + joint          ganfast.steps.discriminator_step_loss: real and fake in one pass through D
                     (and, for R1, R1 in a lean pass of its own)
    + G-only grads   the G step computes G's gradients only (D's are discarded by the next D
                     step's zero_grad): the suite's ganfast contender, the engine's step
    bias in conv     the alternative to the fused bias gradient (ganfast::bias_act_backward_with_bias):
                     the critic's bias handed back to the convolution (F.conv2d(x, w, b), then
                     bias_act without a bias), whose backward computes the bias gradient inside;
                     DCGAN steps only (the MLP's bias is in torch.nn.Linear already)

The counts are machine-independent (ganfast.bench.dispatch); run it on the CPU backend.
--time also times eager, the engine's step and the bias-in-conv alternative on this CPU
(ganfast.bench.harness: interleaved rounds, medians):

    python benchmarks/bench_lean_step.py [--quick] [--time] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

import ganfast
from ganfast.bench import cases as C
import ganfast.losses as L
import ganfast.penalty as P
import ganfast.steps as S
from ganfast.bench.dispatch import GEMM_AND_CONV_OPS, count_device_ops
from ganfast.bench.suite import gpu_model_us
from ganfast.nn import blocks

VARIANTS = ("eager", "textbook", "+ lean", "+ joint", "+ G-only grads")
BIAS_IN_CONV = "bias in conv"


_CONV2D_FORWARD = blocks.conv2d_forward  # the fused critic layer's forward, as shipped


def _conv2d_bias_in_conv(x, weight, bias, bn, stride, padding, dilation, groups, act, alpha):
    """ganfast.nn.blocks.conv2d_forward with the bias inside the convolution (no BatchNorm)."""
    if bn is not None:
        return _CONV2D_FORWARD(x, weight, bias, bn, stride, padding, dilation, groups, act, alpha)
    y = torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return y if (act or "linear") == "linear" else ganfast.ops.bias_act(y, None, 1, act, alpha, 1.0, None)


def with_bias_in_conv(step):
    """step run with the critic's bias inside its convolutions."""
    def run():
        blocks.conv2d_forward = _conv2d_bias_in_conv
        try:
            return step()
        finally:
            blocks.conv2d_forward = _CONV2D_FORWARD
    return run


def d_loss_of(objective: str, variant: str, eps):
    """The D loss function of one variant (the eager one comes from the suite)."""
    lean = variant != "textbook"
    if objective == "r1":
        if variant == "eager":
            return C.eager_r1_d_loss
        if variant in ("textbook", "+ lean"):
            return lambda D, real, fake: (L.discriminator_loss(D(real), D(fake), "nonsaturating")
                                          + P.gradient_penalty(D, real, None, "r1", C.R1_WEIGHT, lean=lean))
        return lambda D, real, fake: S.discriminator_step_loss(D, real, fake, "nonsaturating",
                                                               r1_weight=C.R1_WEIGHT).total
    if variant == "eager":
        return C.eager_wgan_gp_d_loss(eps)
    if variant in ("textbook", "+ lean"):
        return lambda D, real, fake: (L.discriminator_loss(D(real), D(fake), "wasserstein")
                                      + P.gradient_penalty(D, real, fake, "wgan-gp", C.GP_WEIGHT, eps=eps, lean=lean))
    return C.ganfast_wgan_gp_d_loss(eps)


def dcgan_step(objective, variant, batch, image_size, width):
    if variant == BIAS_IN_CONV:
        return with_bias_in_conv(dcgan_step(objective, "+ G-only grads", batch, image_size, width))
    impl = "eager" if variant == "eager" else "ganfast"
    G, D = C._dcgan_models(impl, torch.device("cpu"), image_size, width, width, 128, False)
    gen = C._gen(6)
    real = torch.rand(batch, 3, image_size, image_size, generator=gen) * 2 - 1
    z = torch.randn(batch, 128, 1, 1, generator=gen)
    eps = torch.rand(batch, 1, 1, 1, generator=gen)
    if objective == "r1":
        betas, lr, g_loss = (0.0, 0.99), 2e-3, (C.eager_bce_g_loss if impl == "eager" else C.ganfast_bce_g_loss)
    else:
        betas, lr, g_loss = (0.0, 0.9), 1e-4, (C.eager_wgan_g_loss if impl == "eager" else C.ganfast_wgan_g_loss)
    return C._gan_step(G, D, C._adam(G.parameters(), lr, betas), C._adam(D.parameters(), lr, betas), real, z,
                       d_loss_of(objective, variant, eps), g_loss, g_step_d_grads=variant != "+ G-only grads")


def mlp_step(variant, batch, width):
    from ganfast.train.data import ring8
    from ganfast.train.models import MLPDiscriminator, MLPGenerator

    torch.manual_seed(7)
    G, D = MLPGenerator(2, 2, width, 3), MLPDiscriminator(2, width, 3)
    if variant == "eager":
        twin = C._TorchMLP(2, 1, width, 3, lambda: torch.nn.LeakyReLU(C.SLOPE))
        twin.load_state_dict({k: v for k, v in D.state_dict().items() if k.startswith("net.")})
        D.net = twin.net
    gen = C._gen(8)
    real = ring8().sample(batch, gen)
    z = torch.randn(batch, 2, generator=gen)
    eps = torch.rand(batch, 1, generator=gen)
    g_loss = C.eager_wgan_g_loss if variant == "eager" else C.ganfast_wgan_g_loss
    return C._gan_step(G, D, C._adam(G.parameters(), 1e-4, (0.0, 0.9)), C._adam(D.parameters(), 1e-4, (0.0, 0.9)),
                       real, z, d_loss_of("wgan-gp", variant, eps), g_loss, g_step_d_grads=variant != "+ G-only grads")


def count(step):
    step()  # first call: lazy state (optimizer moments, layouts) out of the count
    n = count_device_ops(step)
    f = n.filter(lambda r: r.name not in GEMM_AND_CONV_OPS
                 and not r.name.startswith(("aten::_foreach", "aten::_fused_adam")))
    return {"ops": n.ops, "fusable_mb": f.total_bytes / 1e6, "gpu_model_us": gpu_model_us(n.ops, f.total_bytes),
            "by_op": dict(n.by_op), "host_syncs": n.host_syncs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the suite's --quick sizes")
    p.add_argument("--json", metavar="PATH", help="also write the counts as JSON")
    p.add_argument("--time", action="store_true", help="also time eager, the engine's step and bias in conv")
    args = p.parse_args(argv)
    ganfast.set_backend("cpu")
    dcgan = (4, 32, 16) if args.quick else (32, 64, 64)
    mlp = (256, 128)
    steps = {
        f"DCGAN WGAN-GP step [B={dcgan[0]}, {dcgan[1]}x{dcgan[1]}, width {dcgan[2]}]":
            lambda v: dcgan_step("wgan-gp", v, *dcgan),
        f"DCGAN lazy R1 step [B={dcgan[0]}, {dcgan[1]}x{dcgan[1]}, width {dcgan[2]}]":
            lambda v: dcgan_step("r1", v, *dcgan),
        f"MLP WGAN-GP step on ring8 [B={mlp[0]}, width {mlp[1]}, depth 3]": lambda v: mlp_step(v, *mlp),
    }
    results = {}
    print("| step | variant | device ops | vs eager | MB outside GEMM, conv, optimizer | vs eager | "
          "GPU model | vs eager | host syncs |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, make in steps.items():
        variants = VARIANTS + ((BIAS_IN_CONV,) if name.startswith("DCGAN") else ())
        rows = results[name] = {v: count(make(v)) for v in variants}
        e = rows["eager"]
        for v, r in rows.items():
            print(f"| {name} | {v} | {r['ops']} | {r['ops'] / e['ops']:.0%} | {r['fusable_mb']:.1f} | "
                  f"{r['fusable_mb'] / e['fusable_mb']:.0%} | {r['gpu_model_us']:.0f} us | "
                  f"{e['gpu_model_us'] / r['gpu_model_us']:.2f}x | {r['host_syncs']} |")
    print("\nOperations removed by each change (op: count before -> after):")
    for name, rows in results.items():
        print(f"\n{name}")
        for before, after in zip(VARIANTS[1:], VARIANTS[2:]):
            a, b = rows[before]["by_op"], rows[after]["by_op"]
            diff = {op: (a.get(op, 0), b.get(op, 0)) for op in sorted(set(a) | set(b)) if a.get(op, 0) != b.get(op, 0)}
            print(f"  {after}: {rows[before]['ops']} -> {rows[after]['ops']}: "
                  + ", ".join(f"{op} {x}->{y}" for op, (x, y) in diff.items()))
    if args.time:
        from ganfast.bench import harness as H

        print("\nCPU time per step (interleaved rounds, median [p20, p80]):")
        for name, make in steps.items():
            names = ["eager", "+ G-only grads"] + ([BIAS_IN_CONV] if name.startswith("DCGAN") else [])
            contenders = [H.Contender(v) for v in names]
            fns = {v: make(v) for v in names}
            H.time_cpu(contenders, fns, target_s=3.0 if args.quick else 12.0, warmup_s=0.5, min_iters=5, rounds=3)
            base = contenders[0].stats_us[0]
            print(f"  {name}: " + "; ".join(
                f"{'ganfast' if c.name == '+ G-only grads' else c.name} {H.fmt_time(c.stats_us[0])} "
                f"[{H.fmt_time(c.stats_us[1])}, {H.fmt_time(c.stats_us[2])}] ({base / c.stats_us[0]:.2f}x)"
                for c in contenders))
            for c in contenders:
                results[name][c.name]["cpu_us"] = c.stats_us
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
