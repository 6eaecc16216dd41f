#!/usr/bin/env python
"""Benchmark of the losses op family: one GAN loss step, D loss + G loss, forward and backward.

    python benchmarks/bench_losses.py [--sizes 64,1024,65536] [--quick] [--json out.json]
                                      [--device auto|cpu|cuda] [--include-interpreter]
                                      [--no-compile] [--no-floor]

Per iteration, for every contender and every batch size B:

    real_logits, fake_logits, fake_logits_g: (B, 1) float32 leaves, requires_grad
    loss_d = D loss(real_logits, fake_logits); loss_g = G loss(fake_logits_g)
    torch.autograd.backward([loss_d, loss_g])
    real_logits.grad = fake_logits.grad = fake_logits_g.grad = None      (inside the timed step)

Two workloads: the non-saturating objective (DCGAN) and the hinge objective (SAGAN, BigGAN).
Contenders, side by side in one run:

    eager              torch.nn.functional, as a training script writes it
    torch.compile      the same eager function, default mode (compilation excluded from timing)
    ganfast[<backend>] ganfast.losses.discriminator_loss / generator_loss under
                       ganfast.use_backend(<backend>), for each backend present here:
                       cpu, reference; cuda on a GPU; triton on a GPU, or on CPU through the
                       Triton interpreter only with --include-interpreter (it is very slow)

Before timing, every contender's two losses and three gradients are checked against eager
(float32 tolerance); the script aborts (exit status 1) on any disagreement.

Timing: on CPU, time.perf_counter_ns around each step; iterations auto-scaled so that each
contender runs ~0.5 s (~0.1 s with --quick), split into interleaved rounds so that a change in
machine load hits every contender alike; warm-up excluded; median, p20 and p80 reported.
On CUDA, triton.testing.do_bench (CUDA events per step, L2 flushed between steps), or CUDA
events directly if triton is missing. speedup = eager median / contender median. The clocks, the
contenders and the comparison are ganfast.bench.harness's (shared with `ganfast bench`); the
options, header and exit status are benchmarks/_script.py's (shared with the other bench_*.py).
A floor row (two torch.sum 'losses', not a loss; --no-floor leaves it out) shows the fixed
autograd cost of a step. With --json, {"meta": header, "rows": one per size and contender}.
"""
from __future__ import annotations

import os
from typing import Callable

import _script as S  # standard library only: the environment is set before torch is imported

WORKLOADS = ("nonsaturating", "hinge")

# Float32 agreement with eager: values and gradients.
RTOL = 1e-5
ATOL_SCALE = 1e-6  # atol = ATOL_SCALE * max|eager tensor| (gradients are O(1/B))


def parse_args(argv=None):
    p = S.parser(__doc__, quick_help="~0.1 s per contender instead of ~0.5 s (CUDA: shorter do_bench)",
                 interpreter_help="on CPU, also time ganfast[triton] through the Triton interpreter")
    p.add_argument("--sizes", default="64,1024,65536",
                   help="comma-separated batch sizes (default: 64,1024,65536)")
    p.add_argument("--no-floor", action="store_true",
                   help="skip the autograd floor row (two torch.sum 'losses')")
    args = p.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        p.error(f"--sizes must be comma-separated integers; got {args.sizes!r}")
    if not args.sizes or min(args.sizes) < 1:
        p.error("--sizes needs at least one positive batch size")
    return args


_ARGS = S.command_line(parse_args, __name__)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import ganfast.losses as L  # noqa: E402
from ganfast.bench import harness as H  # noqa: E402
from ganfast.bench.harness import Contender  # noqa: E402


# ---- the workloads ---------------------------------------------------------------------------

def eager_nonsaturating(real_logits, fake_logits, fake_logits_g):
    """DCGAN as written in the PyTorch examples: BCE-with-logits against all-ones / all-zeros."""
    loss_d = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
              + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
    loss_g = F.binary_cross_entropy_with_logits(fake_logits_g, torch.ones_like(fake_logits_g))
    return loss_d, loss_g


def eager_hinge(real_logits, fake_logits, fake_logits_g):
    """SAGAN / BigGAN hinge loss as written in their training scripts."""
    loss_d = F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    loss_g = -fake_logits_g.mean()
    return loss_d, loss_g


EAGER = {"nonsaturating": eager_nonsaturating, "hinge": eager_hinge}


def ganfast_loss_fn(kind: str) -> Callable:
    discriminator_loss, generator_loss = L.discriminator_loss, L.generator_loss

    def fn(real_logits, fake_logits, fake_logits_g):
        return (discriminator_loss(real_logits, fake_logits, kind),
                generator_loss(fake_logits_g, kind))

    fn.__name__ = f"ganfast_{kind}"
    return fn


FLOOR_NAME = "floor: 2 x torch.sum (not a loss)"


def floor_losses(real_logits, fake_logits, fake_logits_g):
    """Two one-kernel 'losses' with trivial backward: the fixed cost of a step's autograd."""
    return real_logits.sum(), fake_logits_g.sum()


def make_inputs(batch: int, device: torch.device, seed: int = 0):
    """D's logits as they look mid-training: reals mostly positive, fakes mostly negative."""
    g = torch.Generator().manual_seed(seed + batch)
    real = torch.randn(batch, 1, generator=g) * 2.0 + 1.0
    fake = torch.randn(batch, 1, generator=g) * 2.0 - 1.0
    fake_g = torch.randn(batch, 1, generator=g) * 2.0 - 1.0
    return tuple(t.to(device).requires_grad_() for t in (real, fake, fake_g))


def make_step(fn: Callable, leaves) -> Callable[[], None]:
    """One iteration, identical for every contender: forward, backward, clear the gradients."""
    real, fake, fake_g = leaves
    backward = torch.autograd.backward

    def step():
        loss_d, loss_g = fn(real, fake, fake_g)
        backward([loss_d, loss_g])
        real.grad = None
        fake.grad = None
        fake_g.grad = None

    return step


# ---- contenders and their correctness gate --------------------------------------------------

def build_contenders(kind: str, backends, use_compile: bool):
    contenders = [Contender("eager", fn=EAGER[kind])]
    if use_compile:
        torch._dynamo.reset()  # a fresh, shape-specialised graph per size, as a fixed-batch script gets
        try:
            contenders.append(Contender("torch.compile", fn=torch.compile(EAGER[kind])))
        except Exception as exc:  # noqa: BLE001  (reported in the table)
            contenders.append(Contender("torch.compile", error=f"compile failed: {H.one_line(exc)}"))
    for name in backends:
        contenders.append(Contender(f"ganfast[{name}]", fn=ganfast_loss_fn(kind), backend=name))
    return contenders


OUTPUTS = ("loss_d", "loss_g", "grad real_logits", "grad fake_logits", "grad fake_logits_g")


def run_once(fn: Callable, leaves, context) -> list:
    """Both losses and the three gradients from fresh copies of the leaves; `context` (the
    contender's backend) around the forward."""
    fresh = [t.detach().clone().requires_grad_() for t in leaves]
    with context:
        loss_d, loss_g = fn(*fresh)
    torch.autograd.backward([loss_d, loss_g])
    return list(zip(OUTPUTS, [loss_d.detach(), loss_g.detach()] + [t.grad for t in fresh]))


def verify(contender: Contender, expected: list, leaves, kind: str, batch: int) -> None:
    """Run once and compare with eager (Disagreement aborts); other errors go into the table."""
    got = S.first_call(contender, lambda fn: run_once(fn, leaves, contender.selected()), select=False)
    if got is not None:
        H.compare(f"{contender.name} [{kind}, B={batch}]", got, expected, RTOL, ATOL_SCALE)


# ---- main ------------------------------------------------------------------------------------

def print_header(device, args, backends, skipped) -> dict:
    if device.type == "cpu":
        target = "~0.1 s" if args.quick else "~0.5 s"
        timing = (f"timing: time.perf_counter_ns per step, {target} per contender per size in 5 interleaved "
                  "rounds, warm-up excluded, GC off while timing; median / p20 / p80 in microseconds")
    else:
        timing = ("timing: triton.testing.do_bench (CUDA events per step, L2 flushed between steps), "
                  "warm-up excluded; median / p20 / p80 in microseconds")
    details = [
        timing,
        "step: loss_d, loss_g = f(real, fake, fake_g); autograd.backward([loss_d, loss_g]); "
        "the three .grad = None (inside the timed step, same for all); inputs (B, 1) float32",
        "torch.compile: default mode, the eager function, re-compiled per size (dynamo reset), "
        f"compilation excluded; TORCHINDUCTOR_COMPILE_THREADS={os.environ.get('TORCHINDUCTOR_COMPILE_THREADS')} "
        "(no compile-worker processes running beside the timings)",
        f"checked before timing: both losses and all three gradients agree with eager "
        f"(rtol {RTOL}, atol {ATOL_SCALE} x max|eager|), else abort",
    ]
    return S.header("ganfast losses benchmark: D loss + G loss, forward and backward", device, details,
                    backends, skipped, sizes=args.sizes, quick=args.quick)


def main(args) -> int:
    device, backends, skipped = S.device_and_backends(args)
    meta = print_header(device, args, backends, skipped)

    target_s = 0.1 if args.quick else 0.5
    warmup_s = 0.02 if args.quick else 0.1
    min_iters = 10 if args.quick else 25  # per contender, over all rounds
    rep_ms = int(target_s * 1e3)
    rows, failures = [], []

    for kind in WORKLOADS:
        print(f"## {kind}: D loss + G loss, forward + backward")
        print()
        if kind == "nonsaturating":
            print("eager: `F.binary_cross_entropy_with_logits(real, ones_like) + (fake, zeros_like)`; "
                  "G `(fake_g, ones_like)`; ganfast: `discriminator_loss` / `generator_loss`, kind='nonsaturating'")
        else:
            print("eager: `F.relu(1 - real).mean() + F.relu(1 + fake).mean()`; G `-fake_g.mean()`; "
                  "ganfast: `discriminator_loss` / `generator_loss`, kind='hinge'")
        print()
        table = ["| size | contender | median us | p20 | p80 | speedup vs eager |",
                 "|---:|---|---:|---:|---:|---:|"]
        notes = []
        for batch in args.sizes:
            leaves = make_inputs(batch, device)
            contenders = build_contenders(kind, backends, not args.no_compile)
            eager = contenders[0]
            expected = run_once(eager.fn, leaves, eager.selected())
            for c in contenders[1:]:
                if c.error is None:
                    verify(c, expected, leaves, kind, batch)
            timed = [c for c in contenders if c.error is None]
            if not args.no_floor:
                # Not a loss: the least any two single-op losses can cost through autograd here
                # (two ops, one backward call, three leaves), against which B=64 ratios are read.
                floor = Contender(FLOOR_NAME, fn=floor_losses)
                contenders.append(floor)
                timed.append(floor)
            steps = {c.name: make_step(c.fn, leaves) for c in timed}
            if device.type == "cuda":
                H.time_cuda(timed, steps, rep_ms=rep_ms, warmup_ms=max(10, rep_ms // 4))
            else:
                H.time_cpu(timed, steps, target_s, warmup_s, min_iters, rounds=5)
            base = eager.stats_us[0]
            for c in contenders:
                row = {"workload": kind, "size": batch, "contender": c.name, "device": device.type,
                       "median_us": None, "p20_us": None, "p80_us": None, "speedup_vs_eager": None,
                       "iterations": c.iterations or None, "error": c.error, "note": c.note}
                if c.error is not None:
                    table.append(f"| {batch} | {c.name} | {c.error} | | | |")
                    if S.is_failure(c.error):
                        failures.append(f"{c.name} [{kind}, B={batch}]: {c.error}")
                else:
                    med, p20, p80 = c.stats_us
                    ratio = base / med
                    row.update(median_us=med, p20_us=p20, p80_us=p80, speedup_vs_eager=ratio)
                    table.append(f"| {batch} | {c.name} | {H.fmt_us(med)} | {H.fmt_us(p20)} | {H.fmt_us(p80)} "
                                 f"| {ratio:.2f}x |")
                    if c.note and c.name == "torch.compile":
                        notes.append(f"B={batch}: torch.compile {c.note}")
                rows.append(row)
            counts = ", ".join(f"{c.name} {c.iterations}" for c in timed if c.iterations)
            if counts:
                notes.append(f"B={batch}: timed steps: {counts}")
        S.print_table(table, notes)

    return S.finish(meta, args.json, {"meta": meta, "rows": rows}, failures)


if __name__ == "__main__":
    S.run(main, _ARGS)
