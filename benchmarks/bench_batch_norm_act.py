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
disagreement; a contender that cannot run (torch.compile refusing, the cpu backend not built) is
shown with its error instead of timings. Timing is ganfast.bench.harness's (shared with `ganfast
bench` and the other bench_*.py): time.perf_counter_ns per step, interleaved time-boxed rounds,
warm-up excluded, GC off; median / p20 / p80 in microseconds; speedup = eager median / contender
median. The options, machine header and exit status are benchmarks/_script.py's. With --json, the
rows as a JSON list.
"""
from __future__ import annotations

import _script as S  # standard library only: the environment is set before torch is imported

SHAPES = ((64, 256, 8, 8), (64, 128, 16, 16), (64, 64, 32, 32))
RTOL, ATOL_SCALE = 1e-4, 1e-5


def parse_args(argv=None):
    p = S.parser(__doc__, quick_help="~0.3 s per contender per shape instead of ~2 s", device=False)
    p.add_argument("--act", default="relu", choices=("relu", "lrelu", "tanh"))
    p.add_argument("--channels-last", action="store_true", help="x in channels_last memory format")
    return p.parse_args(argv)


_ARGS = S.command_line(parse_args, __name__)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ganfast import ops  # noqa: E402
from ganfast.bench import harness as H  # noqa: E402
from ganfast.bench.harness import Contender  # noqa: E402

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


OUTPUTS = ("output", "grad x", "grad weight", "grad bias", "running_mean", "running_var")


def run_once(fn, x, w, b, u):
    rm, rv = torch.zeros(x.shape[1]), torch.ones(x.shape[1])
    y = fn(x, w, b, rm, rv)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), u)
    return list(zip(OUTPUTS, [y.detach(), gx, gw, gb, rm, rv]))


def make_step(fn, x, w, b, u):
    rm, rv = torch.zeros(x.shape[1]), torch.ones(x.shape[1])

    def step():
        y = fn(x, w, b, rm, rv)
        y.backward(u)
        x.grad = None
        w.grad = None
        b.grad = None

    return step


def build_contenders(args):
    torch._dynamo.reset()  # a fresh, shape-specialised graph per shape
    contenders = [Contender("eager", eager_fn(args.act))]
    if not args.no_compile:
        contenders.append(Contender("torch.compile", torch.compile(eager_fn(args.act))))
    contenders.append(Contender("ganfast[cpu]", ganfast_fn(args.act), backend="cpu"))
    return contenders


def main(args) -> int:
    device = torch.device("cpu")
    target_s = 0.3 if args.quick else 2.0
    meta = S.header(
        "ganfast batch_norm_act benchmark: BatchNorm2d (training) + activation, forward + backward", device,
        [f"act {args.act}, float32, {'channels_last' if args.channels_last else 'NCHW contiguous'}; "
         f"~{target_s} s per contender per shape in 5 interleaved rounds; median / p20 / p80 in us",
         f"checked before timing: output, the three gradients and the running statistics agree with eager "
         f"(rtol {RTOL}, atol {ATOL_SCALE} x max|eager|), else abort"],
        act=args.act, channels_last=args.channels_last, quick=args.quick)
    print("| shape | contender | median us | p20 | p80 | speedup vs eager | iterations |")
    print("|---|---|---|---|---|---|---|")
    rows, failures = [], []
    for shape in SHAPES:
        x, w, b, u = make_inputs(shape, args.channels_last)
        contenders = build_contenders(args)
        expected = run_once(contenders[0].fn, x, w, b, u)
        for c in contenders[1:]:
            got = S.first_call(c, lambda fn: run_once(fn, x, w, b, u))
            if got is not None:
                H.compare(f"{c.name} at {shape}", got, expected, RTOL, ATOL_SCALE)
        timed = [c for c in contenders if c.error is None]
        steps = {c.name: make_step(c.fn, x, w, b, u) for c in timed}
        H.time_cpu(timed, steps, target_s, 0.2 if args.quick else 0.5, 10, 5)
        eager_med = contenders[0].stats_us[0]
        for c in contenders:
            if c.error is not None:
                print(f"| {tuple(shape)} | {c.name} | {c.error} | | | | |")
                rows.append({"shape": list(shape), "contender": c.name, "error": c.error})
                if S.is_failure(c.error):
                    failures.append(f"{c.name} at {shape}: {c.error}")
                continue
            med, p20, p80 = c.stats_us
            print(f"| {tuple(shape)} | {c.name} | {H.fmt_us(med)} | {H.fmt_us(p20)} | {H.fmt_us(p80)} | "
                  f"{eager_med / med:.2f}x | {c.iterations} |")
            rows.append({"shape": list(shape), "contender": c.name, "median_us": med, "p20_us": p20, "p80_us": p80,
                         "speedup": eager_med / med, "iterations": c.iterations})
    print()
    return S.finish(meta, args.json, rows, failures)


if __name__ == "__main__":
    S.run(main, _ARGS)
