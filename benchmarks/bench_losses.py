#!/usr/bin/env python
"""Benchmark of the losses op family: one GAN loss step, D loss + G loss, forward and backward.

    python benchmarks/bench_losses.py [--sizes 64,1024,65536] [--quick] [--json out.json]
                                      [--device auto|cpu|cuda] [--include-interpreter]

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
events directly if triton is missing. speedup = eager median / contender median.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

WORKLOADS = ("nonsaturating", "hinge")
GANFAST_BACKENDS = ("cpu", "cuda", "triton", "reference")
# Compilers whose presence means another build is competing for this machine's cores.
COMPILER_PROCESSES = ("cc1plus", "cc1", "nvcc", "ptxas", "cicc", "cudafe++", "fatbinary", "nvlink")

# Float32 agreement with eager: values and gradients.
RTOL = 1e-5
ATOL_SCALE = 1e-6  # atol = ATOL_SCALE * max|eager tensor| (gradients are O(1/B))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="64,1024,65536",
                   help="comma-separated batch sizes (default: 64,1024,65536)")
    p.add_argument("--quick", action="store_true",
                   help="~0.1 s per contender instead of ~0.5 s (CUDA: shorter do_bench)")
    p.add_argument("--no-floor", action="store_true",
                   help="skip the autograd floor row (two torch.sum 'losses')")
    p.add_argument("--json", metavar="PATH", help="also write every row (and the header) as JSON")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: cuda when a GPU is visible, else cpu")
    p.add_argument("--include-interpreter", action="store_true",
                   help="on CPU, also time ganfast[triton] through the Triton interpreter "
                        "(sets TRITON_INTERPRET=1 before triton is imported; very slow)")
    p.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    args = p.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        p.error(f"--sizes must be comma-separated integers; got {args.sizes!r}")
    if not args.sizes or min(args.sizes) < 1:
        p.error("--sizes needs at least one positive batch size")
    return args


# The interpreter must be chosen before triton (or anything importing it) is imported.
_ARGS = parse_args() if __name__ == "__main__" else None
if _ARGS is not None and _ARGS.include_interpreter:
    os.environ["TRITON_INTERPRET"] = "1"
# Inductor otherwise starts a pool of compile-worker processes at the first torch.compile; their
# start-up (each imports torch) competes with the timed steps on a small machine. Compiling in
# this process changes how long compilation takes (not timed), not the code it produces.
if _ARGS is not None:
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import ganfast  # noqa: E402
import ganfast.losses as L  # noqa: E402
from ganfast.backend import BackendUnavailableError  # noqa: E402


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


# ---- contenders ------------------------------------------------------------------------------

@dataclass
class Contender:
    name: str
    fn: Optional[Callable] = None
    backend: Optional[str] = None         # ganfast backend selected around its runs
    error: Optional[str] = None           # set: shown in the table instead of timings
    note: Optional[str] = None
    samples_ns: list = field(default_factory=list)
    iterations: int = 0
    stats_us: Optional[tuple] = None      # (median, p20, p80)

    def selected(self):
        return ganfast.use_backend(self.backend) if self.backend else contextlib.nullcontext()


def ganfast_backends(device: torch.device, include_interpreter: bool):
    """(backends to time, {backend: why it is not timed})."""
    info = ganfast.available_backends()
    run, skipped = [], {}
    for name in GANFAST_BACKENDS:
        if name == "triton" and device.type == "cpu" and not include_interpreter:
            skipped[name] = ("on CPU it runs only through the Triton interpreter (TRITON_INTERPRET=1), "
                             "which is far too slow to compare; pass --include-interpreter to time it")
            continue
        if name == "cpu" and device.type != "cpu":
            skipped[name] = f"runs CPU tensors only (this run is on {device.type})"
            continue
        if name == "cuda" and device.type != "cuda":
            skipped[name] = f"runs CUDA tensors only (this run is on {device.type}): {info['cuda'].detail}"
            continue
        if not info[name].available:
            skipped[name] = info[name].detail
            continue
        run.append(name)
    return run, skipped


def build_contenders(kind: str, backends, use_compile: bool):
    contenders = [Contender("eager", fn=EAGER[kind])]
    if use_compile:
        torch._dynamo.reset()  # a fresh, shape-specialised graph per size, as a fixed-batch script gets
        try:
            contenders.append(Contender("torch.compile", fn=torch.compile(EAGER[kind])))
        except Exception as exc:  # noqa: BLE001  (reported in the table)
            contenders.append(Contender("torch.compile", error=f"compile failed: {_one_line(exc)}"))
    for name in backends:
        contenders.append(Contender(f"ganfast[{name}]", fn=ganfast_loss_fn(kind), backend=name))
    return contenders


def _one_line(exc: BaseException, limit: int = 160) -> str:
    text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- correctness gate ------------------------------------------------------------------------

class Disagreement(AssertionError):
    pass


def run_once(fn: Callable, leaves, context) -> list:
    fresh = [t.detach().clone().requires_grad_() for t in leaves]
    with context:
        loss_d, loss_g = fn(*fresh)
    torch.autograd.backward([loss_d, loss_g])
    return [loss_d.detach(), loss_g.detach()] + [t.grad for t in fresh]


def verify(contender: Contender, expected: list, leaves, kind: str, batch: int, is_compile: bool) -> None:
    """Run once and compare with eager; errors other than a disagreement go into the table."""
    t0 = time.perf_counter()
    try:
        got = run_once(contender.fn, leaves, contender.selected())
    except BackendUnavailableError as exc:
        contender.error = f"unavailable: {_one_line(exc)}"
        return
    except Exception as exc:  # noqa: BLE001
        contender.error = (f"compile failed: {_one_line(exc)}" if is_compile
                           else f"FAILED: {_one_line(exc)}")
        return
    if is_compile:
        contender.note = f"first call (compilation) {time.perf_counter() - t0:.1f} s"
    names = ("loss_d", "loss_g", "grad real_logits", "grad fake_logits", "grad fake_logits_g")
    for what, a, e in zip(names, got, expected):
        if a is None or e is None:
            raise Disagreement(f"{contender.name} [{kind}, B={batch}]: {what} is "
                               f"{'missing' if a is None else 'present but eager has none'}")
        atol = ATOL_SCALE * float(e.abs().max()) if e.numel() else 0.0
        try:
            torch.testing.assert_close(a, e, rtol=RTOL, atol=atol)
        except AssertionError as exc:
            raise Disagreement(f"{contender.name} [{kind}, B={batch}] disagrees with eager on {what} "
                               f"(rtol={RTOL}, atol={atol:.3g}):\n{exc}") from None


# ---- timing ----------------------------------------------------------------------------------

def _percentiles_us(samples_ns):
    s = sorted(samples_ns)

    def q(p):  # linear interpolation, as numpy's default
        pos = p * (len(s) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(s) - 1)
        return (s[lo] + (s[hi] - s[lo]) * (pos - lo)) / 1e3

    return q(0.5), q(0.2), q(0.8)


def _run_for(step, seconds: float, min_n: int, out: list) -> None:
    """Time steps one by one until `seconds` have passed and at least `min_n` ran."""
    clock = time.perf_counter_ns
    deadline = clock() + int(seconds * 1e9)
    n = 0
    while True:
        t0 = clock()
        step()
        t1 = clock()
        out.append(t1 - t0)
        n += 1
        if n >= min_n and t1 >= deadline:
            return


def time_cpu(contenders, steps, target_s: float, warmup_s: float, min_iters: int, rounds: int) -> None:
    """Warm up each contender, then time them in interleaved rounds of equal duration.

    Time-boxed rather than counted, so that a slow first estimate cannot leave a contender with
    a handful of samples: each gets target_s in all, split over `rounds` turns.
    """
    for c in contenders:
        with c.selected():
            _run_for(steps[c.name], warmup_s, 5, [])
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            for c in contenders:
                with c.selected():
                    _run_for(steps[c.name], target_s / rounds, max(1, min_iters // rounds), c.samples_ns)
    finally:
        if gc_was_enabled:
            gc.enable()
    for c in contenders:
        c.iterations = len(c.samples_ns)
        c.stats_us = _percentiles_us(c.samples_ns)


def time_cuda(contenders, steps, rep_ms: int, warmup_ms: int) -> None:
    try:
        from triton.testing import do_bench
    except Exception:  # noqa: BLE001
        do_bench = None
    for c in contenders:
        step = steps[c.name]
        with c.selected():
            if do_bench is not None:
                med, p20, p80 = do_bench(step, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
                c.stats_us = (med * 1e3, p20 * 1e3, p80 * 1e3)
                c.note = (c.note + "; " if c.note else "") + "do_bench"
            else:
                c.stats_us = _cuda_events(step, rep_ms, warmup_ms, c)


def _cuda_events(step, rep_ms: int, warmup_ms: int, c: Contender):
    step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    est_ms = max((time.perf_counter() - t0) * 1e3 / 5, 1e-3)
    for _ in range(max(1, int(warmup_ms / est_ms))):
        step()
    n = max(10, int(rep_ms / est_ms))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        starts[i].record()
        step()
        ends[i].record()
    torch.cuda.synchronize()
    c.samples_ns = [s.elapsed_time(e) * 1e6 for s, e in zip(starts, ends)]
    c.iterations = n
    c.note = (c.note + "; " if c.note else "") + "CUDA events"
    return _percentiles_us(c.samples_ns)


# ---- the machine -----------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _cpu_busy_percent(seconds: float = 1.0) -> Optional[float]:
    """Share of all CPUs busy over `seconds` while this process sleeps: other processes' load."""
    def snapshot():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values), idle

    try:
        total0, idle0 = snapshot()
        time.sleep(seconds)
        total1, idle1 = snapshot()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return 100.0 * (1 - (idle1 - idle0) / total) if total > 0 else None


def machine_load() -> str:
    """Evidence that the timings ran on a quiet machine: load, CPU busy, compilers running."""
    try:
        load = "loadavg %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = "loadavg n/a"
    busy_pct = _cpu_busy_percent()
    if busy_pct is not None:
        load += f"; CPU busy (other processes, 1 s sample) {busy_pct:.0f}%"
    busy = []
    me = os.getpid()
    try:
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == me:
                continue
            try:
                with open(f"/proc/{pid}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            if comm in COMPILER_PROCESSES:
                busy.append(f"{comm}({pid})")
    except OSError:
        return load
    return f"{load}; compilers running: {', '.join(busy) if busy else 'none'}"


def header(device: torch.device, args, backends, skipped) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except Exception as exc:  # noqa: BLE001
        triton_version = f"not importable ({_one_line(exc)})"
    meta = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "device": device.type,
        "cpu": cpu_model(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version,
        "ganfast": ganfast.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
        "torchinductor_compile_threads": os.environ.get("TORCHINDUCTOR_COMPILE_THREADS"),
        "sizes": args.sizes,
        "quick": args.quick,
        "ganfast_backends_timed": backends,
        "ganfast_backends_skipped": skipped,
        "load_before": machine_load(),
    }
    print("# ganfast losses benchmark: D loss + G loss, forward and backward")
    print()
    print(f"- command: `{meta['command']}`")
    if device.type == "cuda":
        print(f"- device: cuda, {meta['gpu']} (CPU: {meta['cpu']})")
    else:
        print(f"- device: cpu, {meta['cpu']} ({meta['cpu_count']} logical CPUs)")
    print(f"- torch {meta['torch']} (CUDA {meta['torch_cuda']}), triton {meta['triton']}, "
          f"ganfast {meta['ganfast']}, python {meta['python']}")
    print(f"- torch threads: {meta['torch_num_threads']} intra-op (torch default, left as is), "
          f"{meta['torch_num_interop_threads']} inter-op")
    if device.type == "cpu":
        target = "~0.1 s" if args.quick else "~0.5 s"
        print(f"- timing: time.perf_counter_ns per step, {target} per contender per size in 5 interleaved "
              "rounds, warm-up excluded, GC off while timing; median / p20 / p80 in microseconds")
    else:
        print("- timing: triton.testing.do_bench (CUDA events per step, L2 flushed between steps), "
              "warm-up excluded; median / p20 / p80 in microseconds")
    print("- step: loss_d, loss_g = f(real, fake, fake_g); autograd.backward([loss_d, loss_g]); "
          "the three .grad = None (inside the timed step, same for all); inputs (B, 1) float32")
    print("- torch.compile: default mode, the eager function, re-compiled per size (dynamo reset), "
          f"compilation excluded; TORCHINDUCTOR_COMPILE_THREADS={os.environ.get('TORCHINDUCTOR_COMPILE_THREADS')} "
          "(no compile-worker processes running beside the timings)")
    print(f"- ganfast backends timed: {', '.join(backends) or 'none'}")
    for name, why in skipped.items():
        print(f"- ganfast[{name}] not timed: {why}")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("- TRITON_INTERPRET=1: ganfast[triton] runs through the Triton interpreter "
              "(correctness path, not a speed claim)")
    print(f"- checked before timing: both losses and all three gradients agree with eager "
          f"(rtol {RTOL}, atol {ATOL_SCALE} x max|eager|), else abort")
    print(f"- machine before: {meta['load_before']}")
    print()
    return meta


# ---- main ------------------------------------------------------------------------------------

def fmt_us(v: float) -> str:
    return f"{v:.1f}" if v < 1e4 else f"{v:.0f}"


def main(args: argparse.Namespace) -> int:
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            print("error: --device cuda but no GPU is visible", file=sys.stderr)
            return 2
    backends, skipped = ganfast_backends(device, args.include_interpreter)
    meta = header(device, args, backends, skipped)

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
                    verify(c, expected, leaves, kind, batch, is_compile=(c.name == "torch.compile"))
            timed = [c for c in contenders if c.error is None]
            if not args.no_floor:
                # Not a loss: the least any two single-op losses can cost through autograd here
                # (two ops, one backward call, three leaves), against which B=64 ratios are read.
                floor = Contender(FLOOR_NAME, fn=floor_losses)
                contenders.append(floor)
                timed.append(floor)
            steps = {c.name: make_step(c.fn, leaves) for c in timed}
            if device.type == "cuda":
                time_cuda(timed, steps, rep_ms=rep_ms, warmup_ms=max(10, rep_ms // 4))
            else:
                time_cpu(timed, steps, target_s, warmup_s, min_iters, rounds=5)
            base = eager.stats_us[0]
            for c in contenders:
                row = {"workload": kind, "size": batch, "contender": c.name, "device": device.type,
                       "median_us": None, "p20_us": None, "p80_us": None, "speedup_vs_eager": None,
                       "iterations": c.iterations or None, "error": c.error, "note": c.note}
                if c.error is not None:
                    table.append(f"| {batch} | {c.name} | {c.error} | | | |")
                    if not c.error.startswith(("compile failed", "unavailable")):
                        failures.append(f"{c.name} [{kind}, B={batch}]: {c.error}")
                else:
                    med, p20, p80 = c.stats_us
                    ratio = base / med
                    row.update(median_us=med, p20_us=p20, p80_us=p80, speedup_vs_eager=ratio)
                    table.append(f"| {batch} | {c.name} | {fmt_us(med)} | {fmt_us(p20)} | {fmt_us(p80)} "
                                 f"| {ratio:.2f}x |")
                    if c.note and c.name == "torch.compile":
                        notes.append(f"B={batch}: torch.compile {c.note}")
                rows.append(row)
            counts = ", ".join(f"{c.name} {c.iterations}" for c in timed if c.iterations)
            if counts:
                notes.append(f"B={batch}: timed steps: {counts}")
        print("\n".join(table))
        print()
        for n in notes:
            print(f"- {n}")
        print()

    meta["load_after"] = machine_load()
    print(f"machine after: {meta['load_after']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
        print(f"rows written to {args.json}")
    if failures:
        print("\nERROR: contenders failed to run:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(_ARGS))
    except Disagreement as exc:
        print("\n" + "!" * 78, file=sys.stderr)
        print(f"ABORTED: a contender disagrees with eager; no timings are reported.\n{exc}", file=sys.stderr)
        print("!" * 78, file=sys.stderr)
        sys.exit(1)
