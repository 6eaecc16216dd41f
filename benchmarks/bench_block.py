#!/usr/bin/env python
"""Benchmark of the fused generator block and the DCGAN generator built from it.

    python benchmarks/bench_block.py [--quick] [--json out.json] [--device auto|cpu|cuda]
                                     [--sections block,generator,sample] [--batch 64]
                                     [--include-interpreter] [--no-compile]

Three sections, contenders side by side in one run (interleaved rounds, each verified against
eager before any timing; the script aborts with exit status 1 on a disagreement):

block      ConvTranspose2d(256, 128, 4, 2, 1, bias=False) -> BatchNorm2d(128) -> ReLU, x (64, 256, 8, 8)
           -> (64, 128, 16, 16), training mode; step: y = block(x); y.backward(u); grads = None
generator  DCGANGenerator(nz=128, ngf=64, nc=3, image_size=64), batch 64, training mode;
           step: img = G(z); img.backward(u); grads = None
sample     the same generator in eval mode under torch.no_grad(): img = G(z); reported in images/s

Contenders:
  eager                      the torch.nn Sequential (ConvTranspose2d, BatchNorm2d, ReLU(inplace=True) /
                             Tanh) as PyTorch's DCGAN example writes it, NCHW
  eager channels_last        the same modules and input in torch.channels_last (what a user can get
                             from torch alone; reported for context, the targets are against eager)
  torch.compile              of the eager module, default mode, compilation excluded
  ganfast[<backend>]         ganfast.nn.ConvTransposeBlock / DCGANGenerator (same weights) under
                             use_backend(<backend>): cpu, reference; cuda on a GPU; triton on a GPU (on
                             CPU only with --include-interpreter, block section, 2 steps)
  ganfast[cpu] nchw          the cpu backend with ganfast.ops.conv_block.CPU_CHANNELS_LAST = False:
                             what the channels_last convolution contributes (CPU only)
  ganfast[cpu] no post-op    (sample) CPU_FUSED_INFERENCE = False: F.conv_transpose2d + the activation
                             in place instead of the activation as oneDNN post-op

Every contender starts from copies of the same module state; the verification step compares the
output, every parameter gradient and the running statistics after it with the eager model run in
float64: each tensor's max |a - e| / max |e| must be within 10x eager float32's own (+ 1e-5). (The
generator's BatchNorm backward loses up to ~1e-2 relative in float32 through cancellation, in
eager too: a fixed float32 tolerance would fail eager's own channels_last twin.)
Timing is ganfast.bench.harness's (shared with `ganfast bench` and the other bench_*.py): on CPU
time.perf_counter_ns per step, time-boxed interleaved rounds after a warm-up of at least 5 steps
and 1 s (excluded), GC off, median / p20 / p80 in milliseconds; on CUDA triton.testing.do_bench.
The options, machine header and exit status are benchmarks/_script.py's. speedup = eager median /
contender median. With --json: {"meta": header, "rows", "load_before", "load_after", "args"}.
Targets (CPU): generator forward+backward >= 1.15x eager; eval sampling >= 1.3x eager.
"""
from __future__ import annotations

import copy

import _script as S  # standard library only: the environment is set before torch is imported

SECTIONS = ("block", "generator", "sample")


def parse_args(argv=None):
    p = S.parser(__doc__, quick_help="short time boxes (a few minutes on 2 CPU cores)",
                 interpreter_help="on CPU, also run ganfast[triton] through the Triton interpreter (block "
                                  "section only, 2 steps after the others; many minutes at batch 64: use "
                                  "with a small --batch)")
    S.add_sections(p, SECTIONS)
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    args = p.parse_args(argv)
    S.parse_sections(p, args, SECTIONS)
    return args


_ARGS = S.command_line(parse_args, __name__)

import torch  # noqa: E402
from torch import nn  # noqa: E402

import ganfast  # noqa: E402
import ganfast.nn as gnn  # noqa: E402
from ganfast.bench import harness as H  # noqa: E402
from ganfast.bench.harness import Contender  # noqa: E402
from ganfast.ops import conv_block as block_ops  # noqa: E402



# ---- models ------------------------------------------------------------------------------------

def eager_sequential(blocks) -> nn.Sequential:
    """The torch.nn layers a list of ConvTransposeBlocks stands for, sharing nothing (deep copies)."""
    layers = []
    for b in blocks:
        layers.append(copy.deepcopy(b.conv))
        if b.bn is not None:
            layers.append(copy.deepcopy(b.bn))
        layers.append(nn.ReLU(inplace=True) if b.act == "relu" else nn.Tanh())
    return nn.Sequential(*layers)


def make_models(section, device):
    torch.manual_seed(0)
    if section == "block":
        g = gnn.ConvTransposeBlock(256, 128, 4, 2, 1)
        with torch.no_grad():  # non-trivial BatchNorm state
            g.bn.weight.normal_(1.0, 0.2), g.bn.bias.normal_(0.0, 0.2)
        blocks = [g]
    else:
        g = gnn.DCGANGenerator(nz=128, ngf=64, nc=3, image_size=64)
        blocks = list(g.main)
    return g.to(device), eager_sequential(blocks).to(device)


def make_input(section, batch, device):
    gen = torch.Generator().manual_seed(1)
    shape = (batch, 256, 8, 8) if section == "block" else (batch, 128, 1, 1)
    return torch.randn(shape, generator=gen).to(device)


class ChannelsLast(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m.to(memory_format=torch.channels_last)

    def forward(self, x):
        return self.m(x.contiguous(memory_format=torch.channels_last))


class LayoutSwitch:
    """Selects ganfast's CPU convolution layout and inference post-op around a contender's calls."""

    def __init__(self, backend, channels_last, post_op):
        self.backend, self.cl, self.post_op = backend, channels_last, post_op

    def __enter__(self):
        self.saved = block_ops.CPU_CHANNELS_LAST, block_ops.CPU_FUSED_INFERENCE
        block_ops.CPU_CHANNELS_LAST, block_ops.CPU_FUSED_INFERENCE = self.cl, self.post_op
        self.ctx = ganfast.use_backend(self.backend)
        self.ctx.__enter__()

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)
        block_ops.CPU_CHANNELS_LAST, block_ops.CPU_FUSED_INFERENCE = self.saved


class GanfastContender(Contender):
    def selected(self):
        return LayoutSwitch(self.backend, getattr(self, "channels_last", True), getattr(self, "post_op", True))


def contenders(section, device, backends, use_compile, ganfast_model, eager_model, training):
    models = {}

    def add(name, model, backend=None, channels_last=True, post_op=True, error=None):
        model = copy.deepcopy(model).train(training)
        c = (GanfastContender if backend else Contender)(name, fn=model, backend=backend, error=error)
        c.channels_last, c.post_op = channels_last, post_op
        models[name] = model
        return c

    cs = [add("eager", eager_model)]
    if device.type == "cpu":
        cs.append(add("eager channels_last", ChannelsLast(copy.deepcopy(eager_model))))
    if use_compile:
        torch._dynamo.reset()
        c = add("torch.compile", eager_model)
        c.fn = torch.compile(c.fn)
        cs.append(c)
    for b in backends:
        if b == "triton" and device.type == "cpu" and section != "block":
            continue
        cs.append(add(f"ganfast[{b}]", ganfast_model, backend=b))
        if b == "cpu":
            cs.append(add("ganfast[cpu] nchw", ganfast_model, backend=b, channels_last=False))
            if section == "sample":
                cs.append(add("ganfast[cpu] no post-op", ganfast_model, backend=b, post_op=False))
    return cs, models


# ---- one step, its verification ----------------------------------------------------------------

def params_of(model):
    return [p for p in model.parameters()]


def buffers_of(model):
    return [b for b in model.buffers() if b.is_floating_point()]


def run_train(fn, x, up):
    out = fn(x)
    out.backward(up)
    ps = params_of(fn)
    res = [("output", out.detach())] + [(f"grad param {i}", p.grad) for i, p in enumerate(ps)]
    res += [(f"buffer {i}", b.clone()) for i, b in enumerate(buffers_of(fn))]
    for p in ps:
        p.grad = None
    return res


def step_train(fn, x, up):
    ps = params_of(fn)

    def step():
        fn(x).backward(up)
        for p in ps:
            p.grad = None
    return step


def run_eval(fn, x):
    with torch.no_grad():
        return [("output", fn(x))]


def step_eval(fn, x):
    def step():
        with torch.no_grad():
            fn(x)
    return step


def verify(c, run, expected64, eager_devs, where):
    """First call, compared with the float64 oracle (Disagreement aborts); errors go in the table."""
    got = S.first_call(c, run)
    if got is None:
        return
    worst = H.check_against_float64(f"{c.name} [{where}]", got, expected64, eager_devs)
    c.note = (c.note + "; " if c.note else "") + f"max rel. deviation from float64 {worst:.1e}"


# ---- main --------------------------------------------------------------------------------------

def fmt_ms(us):
    return f"{us / 1e3:.1f}"


def main(args) -> int:
    device, backends, skipped = S.device_and_backends(args)
    q = args.quick
    # Warm-up: at least warmup_n steps and warmup_s seconds per contender, before the rounds.
    budget = dict(target_s=2.0 if q else 10.0, rounds=3 if q else 5, min_iters=3 if q else 10,
                  warmup_s=1.0, warmup_n=5)
    details = [
        f"oneDNN (mkldnn) enabled: {torch.backends.mkldnn.is_available()}",
        f"timing: per contender {budget['target_s']} s in {budget['rounds']} interleaved rounds "
        f"(>= {budget['min_iters']} steps), warm-up (>= {budget['warmup_n']} steps and {budget['warmup_s']} s) "
        "excluded, GC off; median / p20 / p80 in ms",
        f"verified before timing: output, every parameter gradient and the running statistics after the step, "
        f"each within {H.DEV_FACTOR} x eager float32's own deviation from the float64 eager run + {H.DEV_FLOOR} "
        "(max |a - e| / max |e| per tensor)",
        f"batch {args.batch}",
    ]
    meta = S.header("ganfast block benchmark: fused ConvTranspose2d + BatchNorm2d + activation, DCGAN generator",
                    device, details, backends, skipped, sections=args.sections, quick=args.quick,
                    batch=args.batch, timing_budget=budget)
    rows, failures = [], []
    for section in args.sections:
        training = section != "sample"
        g, eager = make_models(section, device)
        x = make_input(section, args.batch, device)
        cs, models = contenders(section, device, backends, not args.no_compile, g, eager, training)
        if training:
            out_shape = (args.batch, 128, 16, 16) if section == "block" else (args.batch, 3, 64, 64)
            up = torch.randn(out_shape, generator=torch.Generator().manual_seed(2)).to(device)

            def run(fn):
                return run_train(fn, x, up)

            def step_of(fn):
                return step_train(fn, x, up)
        else:
            def run(fn):
                return run_eval(fn, x)

            def step_of(fn):
                return step_eval(fn, x)
        # Every model starts from the same state; the verification step is also each one's first step.
        # The oracle: the eager model in float64 on the same inputs.
        oracle = copy.deepcopy(models["eager"]).double()
        x64, up64 = x.double(), (up.double() if training else None)
        expected64 = run_train(oracle, x64, up64) if training else run_eval(oracle, x64)
        eager_devs = H.deviations(run(cs[0].fn), expected64)
        cs[0].note = ("float32 deviation from float64 (the verification's yardstick) "
                      f"{max(d for _, d in eager_devs):.1e}")
        del oracle
        for c in cs[1:]:
            if c.error is None:
                verify(c, run, expected64, eager_devs, section)
        timed = [c for c in cs if c.error is None]
        steps = {c.name: step_of(c.fn) for c in timed}
        if device.type == "cuda":
            H.time_cuda(timed, steps, rep_ms=int(budget["target_s"] * 1e3), warmup_ms=100)
        else:
            fast = [c for c in timed if not S.interpreted(c)]
            H.time_cpu(fast, steps, budget["target_s"], budget["warmup_s"], budget["min_iters"], budget["rounds"],
                       warmup_n=budget["warmup_n"])
            for c in timed:
                if S.interpreted(c):
                    S.time_few(c, steps[c.name], 2)
        title = {"block": "block ConvT 256->128 8x8->16x16 + BN + ReLU, forward+backward",
                 "generator": "DCGANGenerator nz128 ngf64 nc3 64x64, forward+backward",
                 "sample": "DCGANGenerator eval sampling (no_grad)"}[section]
        print(f"## {section}: {title}, batch {args.batch}")
        print()
        extra = " | images/s" if section == "sample" else ""
        print(f"| contender | median ms | p20 | p80 | speedup vs eager | vs torch.compile{extra} |")
        print("|---|---:|---:|---:|---:|---:|" + ("---:|" if extra else ""))
        base = cs[0].stats_us[0]
        comp = next((c for c in timed if c.name == "torch.compile"), None)
        notes = []
        for c in cs:
            row = {"section": section, "contender": c.name, "error": c.error, "note": c.note}
            if c.error is not None:
                print(f"| {c.name} | {c.error} | | | | |" + (" |" if extra else ""))
                if S.is_failure(c.error):
                    failures.append(f"{c.name} [{section}]: {c.error}")
            else:
                med, p20, p80 = c.stats_us
                vs_c = comp.stats_us[0] / med if comp else None
                ips = args.batch / (med / 1e6)
                row.update(median_ms=med / 1e3, p20_ms=p20 / 1e3, p80_ms=p80 / 1e3, speedup_vs_eager=base / med,
                           speedup_vs_compile=vs_c, iterations=c.iterations,
                           images_per_s=ips if section == "sample" else None)
                print(f"| {c.name} | {fmt_ms(med)} | {fmt_ms(p20)} | {fmt_ms(p80)} | {base / med:.2f}x | "
                      f"{f'{vs_c:.2f}x' if vs_c else ''} |" + (f" {ips:.0f} |" if extra else ""))
            if c.note:
                notes.append(f"{c.name}: {c.note}")
            rows.append(row)
        print()
        for n in notes:
            print(f"- {n}")
        print("- timed steps: " + ", ".join(f"{c.name} {c.iterations}" for c in timed))
        print()
        del cs, models, g, eager
    main_backend = "cuda" if device.type == "cuda" else "cpu"
    targets = [("generator", 1.15), ("sample", 1.3)]
    lines = []
    for section, goal in targets:
        if section not in args.sections:
            continue
        r = next((r for r in rows if r["section"] == section and r["contender"] == f"ganfast[{main_backend}]"), None)
        if r is None or r.get("speedup_vs_eager") is None:
            verdict = f"NOT MEASURED ({r['error'] if r else 'not run'})"
        else:
            s = r["speedup_vs_eager"]
            verdict = f"{s:.2f}x: {'met' if s >= goal else 'NOT met'}"
        lines.append(f"- {section}: ganfast[{main_backend}] >= {goal}x eager: {verdict}")
    S.print_targets(lines)
    return S.finish(meta, args.json, lambda: {"meta": meta, "rows": rows, "load_before": meta["load_before"],
                                              "load_after": meta["load_after"], "args": vars(args)}, failures)


if __name__ == "__main__":
    S.run(main, _ARGS)
