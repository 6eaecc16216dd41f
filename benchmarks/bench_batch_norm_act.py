#!/usr/bin/env python
"""Benchmark of the fused BatchNorm + activation (ganfast.ops.batch_norm_act), training mode,
forward + backward, against eager PyTorch and torch.compile.

    python benchmarks/bench_batch_norm_act.py [--quick] [--no-compile] [--act relu]
                                              [--channels-last] [--json out.json]

Shapes (N, C, H, W), float32: (64, 256, 8, 8), (64, 128, 16, 16), (64, 64, 32, 32) (the
generator's BatchNorm2d inputs in a 64x64 DCGAN, batch 64).
step: y = f(x, weight, bias, running_mean, running_var); y.backward(u); the .grad of x, weight and
      bias = None (inside the timed step, same for every contender); u a fixed random tensor.
    eager              F.relu(F.batch_norm(x, rm, rv, weight, bias, True, 0.1, 1e-5))
    torch.compile      that eager function, default mode, compilation excluded
    ganfast[cpu]       ganfast.ops.batch_norm_act(..., act) under use_backend("cpu")
Every contender is checked against eager first (output, the three gradients, the running
statistics after one step; rtol 1e-4, atol 1e-5 x max|eager|): the script exits with status 1 on a
disagreement. Timing is bench_losses.py's (imported): time.perf_counter_ns per step, interleaved
time-boxed rounds, warm-up excluded, GC off; median / p20 / p80 in microseconds; speedup = eager
median / contender median.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

SHAPES = ((64, 256, 8, 8), (64, 128, 16, 16), (64, 64, 32, 32))
RTOL, ATOL_SCALE = 1e-4, 1e-5


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="~0.3 s per contender per shape instead of ~2 s")
    p.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    p.add_argument("--act", default="relu", choices=("relu", "lrelu", "tanh"))
    p.add_argument("--channels-last", action="store_true", help="x in channels_last memory format")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    return p.parse_args(argv)


_ARGS = parse_args() if __name__ == "__main__" else None
if _ARGS is not None:
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # as bench_losses: no worker pool

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_losses as bl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import ganfast  # noqa: E402
from ganfast import ops  # noqa: E402

ACTS = {"relu": F.relu, "lrelu": lambda v: F.leaky_relu(v, 0.2), "tanh": torch.tanh}


def eager_fn(act):
    a = ACTS[act]

    def f(x, w, b, rm, rv):
        return a(F.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5))

    return f


def ganfast_fn(act):
    def f(x, w, b, rm, rv):
        return ops.batch_norm_act(x, w, b, rm, rv, True, 0.1, 1e-5, act)

    return f


def make_inputs(shape, channels_last, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = torch.randn(shape, generator=g) * 2 + 0.5
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    w = (1 + 0.1 * torch.randn(c, generator=g)).requires_grad_(True)
    b = (0.1 * torch.randn(c, generator=g)).requires_grad_(True)
    u = torch.randn(shape, generator=g)
    if channels_last:
        u = u.to(memory_format=torch.channels_last)
    return x, w, b, u


def run_once(fn, x, w, b, u):
    rm, rv = torch.zeros(x.shape[1]), torch.ones(x.shape[1])
    y = fn(x, w, b, rm, rv)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), u)
    return [y.detach(), gx, gw, gb, rm, rv]


def make_step(fn, x, w, b, u):
    rm, rv = torch.zeros(x.shape[1]), torch.ones(x.shape[1])

    def step():
        y = fn(x, w, b, rm, rv)
        y.backward(u)
        x.grad = None
        w.grad = None
        b.grad = None

    return step


def check(c, got, expected, shape) -> None:
    names = ("output", "grad x", "grad weight", "grad bias", "running_mean", "running_var")
    for name, g, e in zip(names, got, expected):
        atol = ATOL_SCALE * float(e.abs().max()) if e.numel() else 0.0
        if not torch.allclose(g, e, rtol=RTOL, atol=atol):
            diff = float((g - e).abs().max())
            print(f"ERROR: {c.name} disagrees with eager at {shape}: {name}, max abs diff {diff:.3g}")
            sys.exit(1)


def main(args) -> int:
    contenders = [bl.Contender("eager", eager_fn(args.act))]
    if not args.no_compile:
        contenders.append(bl.Contender("torch.compile", torch.compile(eager_fn(args.act))))
    contenders.append(bl.Contender("ganfast[cpu]", ganfast_fn(args.act), backend="cpu"))
    target_s = 0.3 if args.quick else 2.0
    print("# ganfast batch_norm_act benchmark: BatchNorm2d (training) + activation, forward + backward")
    print()
    print(f"- command: `{' '.join([os.path.basename(sys.executable)] + sys.argv)}`")
    print(f"- device: cpu, {bl.cpu_model()} ({os.cpu_count()} logical CPUs), torch {torch.__version__}, "
          f"ganfast {ganfast.__version__}, torch threads {torch.get_num_threads()}")
    print(f"- act {args.act}, float32, {'channels_last' if args.channels_last else 'NCHW contiguous'}; "
          f"~{target_s} s per contender per shape in 5 interleaved rounds; median / p20 / p80 in us")
    print(f"- machine before: {bl.machine_load()}")
    print()
    print("| shape | contender | median us | p20 | p80 | speedup vs eager | iterations |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for shape in SHAPES:
        torch._dynamo.reset()
        x, w, b, u = make_inputs(shape, args.channels_last)
        expected = run_once(contenders[0].fn, x, w, b, u)
        for c in contenders:
            c.samples_ns = []
            with c.selected():
                check(c, run_once(c.fn, x, w, b, u), expected, shape)
        steps = {}
        for c in contenders:
            with c.selected():
                steps[c.name] = make_step(c.fn, x, w, b, u)
        bl.time_cpu(contenders, steps, target_s, 0.2 if args.quick else 0.5, 10, 5)
        eager_med = contenders[0].stats_us[0]
        for c in contenders:
            med, p20, p80 = c.stats_us
            print(f"| {tuple(shape)} | {c.name} | {bl.fmt_us(med)} | {bl.fmt_us(p20)} | {bl.fmt_us(p80)} | "
                  f"{eager_med / med:.2f}x | {c.iterations} |")
            rows.append({"shape": list(shape), "contender": c.name, "median_us": med, "p20_us": p20, "p80_us": p80,
                         "speedup": eager_med / med, "iterations": c.iterations})
    print()
    print(f"- machine after: {bl.machine_load()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(_ARGS))
