"""The timing harness every benchmark shares: contenders, the correctness gate, the clocks, and
the description of the machine the numbers come from.

Timing rules (the same for every script and for `ganfast bench`):
- CPU: time.perf_counter_ns around each step. Every contender is warmed up first (excluded),
  then timed in interleaved rounds of equal duration, so a change in machine load hits every
  contender alike; the garbage collector is off while timing. Median, p20 and p80.
- CUDA: triton.testing.do_bench (CUDA events per step, L2 flushed between steps), or CUDA
  events around each step when triton is missing. No host synchronisation inside a step.
- A contender is compared with eager before it is timed; one that disagrees is not timed.
"""
from __future__ import annotations

import contextlib
import gc
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

import ganfast
from ganfast.backend import BackendUnavailableError

GANFAST_BACKENDS = ("cpu", "cuda", "triton", "reference")
# Compilers whose presence means another build is competing for this machine's cores.
COMPILER_PROCESSES = ("cc1plus", "cc1", "nvcc", "ptxas", "cicc", "cudafe++", "fatbinary", "nvlink")


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


def one_line(exc: BaseException, limit: int = 160) -> str:
    """`Type: first line of the message`, cut to `limit` characters: an error for a table cell."""
    text = str(exc).strip()
    text = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def ganfast_backends(device: torch.device, include_interpreter: bool = False):
    """(backends to time on `device`, {backend: why it is not timed})."""
    info = ganfast.available_backends()
    run, skipped = [], {}
    for name in GANFAST_BACKENDS:
        if name == "triton" and device.type == "cpu" and not include_interpreter:
            skipped[name] = ("on CPU it runs only through the Triton interpreter (TRITON_INTERPRET=1), "
                             "a correctness path far too slow to compare")
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


# ---- the correctness gate ----------------------------------------------------------------------

class Disagreement(AssertionError):
    """A contender computes something other than eager: its timings would mean nothing."""


def compare(who: str, got: Sequence, expected: Sequence, rtol: float, atol_scale: float) -> float:
    """got / expected: [(what, tensor or None)]. Raise Disagreement unless every tensor agrees
    (atol = atol_scale x max|expected|); return the largest |a - e| / max|e| seen."""
    if len(got) != len(expected):
        raise Disagreement(f"{who}: {len(got)} outputs, eager has {len(expected)}")
    worst = 0.0
    for (what, a), (_, e) in zip(got, expected):
        if a is None or e is None:
            if a is None and e is None:
                continue
            raise Disagreement(f"{who}: {what} is {'missing' if a is None else 'present but eager has none'}")
        a, e = a.detach(), e.detach()
        scale = float(e.abs().max()) if e.numel() else 0.0
        atol = atol_scale * scale
        try:
            torch.testing.assert_close(a, e, rtol=rtol, atol=atol, check_device=True)
        except AssertionError as exc:
            raise Disagreement(f"{who} disagrees with eager on {what} (rtol={rtol}, atol={atol:.3g}):\n{exc}") from None
        if e.numel() and scale > 0:
            worst = max(worst, float((a.double() - e.double()).abs().max()) / scale)
    return worst


def deviations(got: Sequence, expected64: Sequence) -> list:
    """Per output: the norm-wise relative deviation ||a - e|| / ||e|| from a float64 run (None
    where one is missing or the shapes differ). Norm-wise, not element-wise: float32 rounding
    that moves one pre-activation across a ReLU's kink switches that element's gradient on or
    off, which moves a few entries of the layer's weight gradient by ~1e-2 relative in any
    float32 implementation (eager's included); over the whole tensor that is small, while a
    wrong formula is still O(1)."""
    out = []
    for (what, a), (_, e) in zip(got, expected64):
        if a is None or e is None or a.shape != e.shape:
            out.append((what, None))
            continue
        scale = float(e.double().norm()) if e.numel() else 0.0
        err = float((a.double() - e.double()).norm()) if e.numel() else 0.0
        out.append((what, err / scale if scale else err))
    return out


DEV_FACTOR, DEV_FLOOR = 10.0, 1e-5


def check_against_float64(who: str, got: Sequence, expected64: Sequence, eager_devs: Sequence,
                          factor: float = DEV_FACTOR, floor: float = DEV_FLOOR) -> float:
    """Every output of a contender may deviate from the float64 run by at most `factor` x the
    largest deviation eager float32 shows on any output of the same step (+ `floor`).

    Why the largest: a GAN step at initialisation is ill-conditioned in places. A generator's
    BatchNorm backward loses ~1e-3 relative in float32 through cancellation; D's gradients on
    fakes move by ~1e-3 when G's float32 output moves by 1e-6 (thin BatchNorm batches). Which
    outputs eager happens to get closest is luck of rounding, so a per-output bar would fail an
    equally exact implementation, and a fixed bar would either do the same or hide bugs. The
    step's own float32 noise level still catches a wrong formula (error ~1). Returns the largest
    deviation; raises Disagreement."""
    levels = [d for _, d in eager_devs if d is not None]
    bound = factor * (max(levels) if levels else 0.0) + floor
    worst = 0.0
    for what, d in deviations(got, expected64):
        if d is None:
            raise Disagreement(f"{who}: {what} is missing or has the wrong shape")
        if d > bound:
            raise Disagreement(f"{who} disagrees on {what}: deviation from float64 {d:.2e} > {bound:.2e} "
                               f"({factor:g} x eager float32's largest deviation in this step + {floor:g})")
        worst = max(worst, d)
    return worst


# ---- the clocks --------------------------------------------------------------------------------

def percentiles_us(samples_ns):
    """(median, p20, p80) in microseconds; linear interpolation, as numpy's default."""
    s = sorted(samples_ns)

    def q(p):
        pos = p * (len(s) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(s) - 1)
        return (s[lo] + (s[hi] - s[lo]) * (pos - lo)) / 1e3

    return q(0.5), q(0.2), q(0.8)


def run_for(step, seconds: float, min_n: int, out: list) -> None:
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


def time_cpu(contenders, steps, target_s: float, warmup_s: float, min_iters: int, rounds: int,
             warmup_n: int = 5) -> None:
    """Warm up each contender (at least `warmup_n` steps and `warmup_s`), then time them in
    interleaved rounds of equal duration.

    Time-boxed rather than counted, so that a slow first estimate cannot leave a contender with
    a handful of samples: each gets target_s in all, split over `rounds` turns, and at least
    min_iters steps.
    """
    for c in contenders:
        if warmup_n <= 0 and warmup_s <= 0:
            break  # no warm-up asked for (a caller whose verification call already warmed up)
        with c.selected():
            run_for(steps[c.name], warmup_s, warmup_n, [])
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            for c in contenders:
                with c.selected():
                    run_for(steps[c.name], target_s / rounds, max(1, -(-min_iters // rounds)), c.samples_ns)
    finally:
        if gc_was_enabled:
            gc.enable()
    for c in contenders:
        c.iterations = len(c.samples_ns)
        c.stats_us = percentiles_us(c.samples_ns)


def time_cuda(contenders, steps, rep_ms: int, warmup_ms: int) -> None:
    """triton.testing.do_bench per contender (CUDA events; warm-up excluded; L2 flushed).

    do_bench hands back every timed step (return_mode="all", in ms), so the GPU's median, p20
    and p80 are computed exactly as the CPU's (percentiles_us) and the iteration count is the
    real one; a triton without "all" gives its own quantiles instead."""
    try:
        from triton.testing import do_bench
    except Exception:  # noqa: BLE001  (triton missing or broken: plain CUDA events)
        do_bench = None
    for c in contenders:
        step = steps[c.name]
        with c.selected():
            if do_bench is None:
                c.stats_us = _cuda_events(step, rep_ms, warmup_ms, c)
                continue
            try:
                times_ms = do_bench(step, warmup=warmup_ms, rep=rep_ms, return_mode="all")
            except (TypeError, AssertionError):  # an older triton: no return_mode="all"
                times_ms = None
            if times_ms is not None:
                c.samples_ns = [t * 1e6 for t in times_ms]
                c.iterations = len(c.samples_ns)
                c.stats_us = percentiles_us(c.samples_ns)
            else:
                med, p20, p80 = do_bench(step, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
                c.stats_us = (med * 1e3, p20 * 1e3, p80 * 1e3)
                c.iterations = max(1, int(rep_ms / max(med, 1e-3)))  # do_bench's own count, estimated
            c.note = (c.note + "; " if c.note else "") + "do_bench"


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
    return percentiles_us(c.samples_ns)


def copy_bandwidth_gbs(device: torch.device, nbytes: int = 256 << 20, quick: bool = False) -> float:
    """Achievable memory bandwidth on `device`: a device-to-device copy of `nbytes` (read +
    written bytes per second, GB/s, median), the yardstick for a kernel's achieved bandwidth."""
    n = nbytes // 4
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch outside the clock
    if device.type == "cuda":
        from triton.testing import do_bench
        ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=100 if quick else 400)
        return 2 * nbytes / (ms * 1e-3) / 1e9
    samples = []
    run_for(lambda: dst.copy_(src), 0.2 if quick else 1.0, 5, samples)
    return 2 * nbytes / (percentiles_us(samples)[0] * 1e-6) / 1e9


# ---- the machine -------------------------------------------------------------------------------

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


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({os.cpu_count()} logical CPUs)"


def environment(device: torch.device) -> dict:
    """Where and with what the numbers were measured."""
    try:
        import triton
        triton_version = triton.__version__
    except Exception as exc:  # noqa: BLE001
        triton_version = f"not importable ({one_line(exc)})"
    return {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "device": device.type,
        "device_name": device_name(device),
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
        "load_before": machine_load(),
    }


def fmt_us(v: float) -> str:
    return f"{v:.1f}" if v < 1e4 else f"{v:.0f}"


def fmt_time(us: float) -> str:
    """A duration for a table: us below 10 ms, ms above."""
    return f"{us:.1f} us" if us < 1e4 else f"{us / 1e3:.1f} ms"


__all__ = ["Contender", "Disagreement", "BackendUnavailableError", "GANFAST_BACKENDS", "check_against_float64",
           "compare", "deviations",
           "copy_bandwidth_gbs", "cpu_model", "device_name", "environment", "fmt_time", "fmt_us",
           "ganfast_backends", "machine_load", "one_line", "percentiles_us", "run_for", "time_cpu",
           "time_cuda"]
