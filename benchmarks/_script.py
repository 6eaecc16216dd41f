"""What the deep-dive benchmark scripts (bench_losses.py, bench_penalty.py, bench_block.py,
bench_batch_norm_act.py) share around the timing harness of ganfast.bench.harness: their common
command-line options, the environment set before torch and triton are imported, the machine
header, the first (verification) call of a contender, and the end of a run (machine after, JSON,
exit status; exit 1 with no timings when a contender disagrees with eager).

Importing this module imports only the standard library: a script imports it, parses its
command line with `command_line`, and only then imports torch (which imports triton).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

# Table cells of contenders that could not run for a reason that is not a defect.
NOT_FAILURES = ("compile failed", "torch.compile error", "unavailable")


# ---- the command line and the environment ----------------------------------------------------

def parser(doc: str, quick_help: str, interpreter_help: str = None, device: bool = True) -> argparse.ArgumentParser:
    """--quick, --json, --no-compile, and where the script has them --device and
    --include-interpreter (`interpreter_help` says what it adds)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--json", metavar="PATH", help="also write every row (and the header) as JSON")
    if device:
        p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="auto: cuda when a GPU is visible, else cpu")
    if interpreter_help:
        p.add_argument("--include-interpreter", action="store_true",
                       help=f"{interpreter_help}; sets TRITON_INTERPRET=1 before triton is imported (very slow)")
    p.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    return p


def add_sections(p: argparse.ArgumentParser, sections) -> None:
    p.add_argument("--sections", default=",".join(sections),
                   help=f"comma-separated subset of {','.join(sections)} (default: all)")


def parse_sections(p: argparse.ArgumentParser, args: argparse.Namespace, sections) -> None:
    """--sections as a list, or a usage error naming the valid choices."""
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in args.sections if s not in sections]
    if bad or not args.sections:
        p.error(f"--sections: choose from {', '.join(sections)}; got {bad or 'nothing'}")


def command_line(parse_args, module_name: str):
    """The parsed arguments when the script runs as a program (None when imported), after
    setting the environment torch and triton read at import."""
    if module_name != "__main__":
        return None
    args = parse_args()
    # The interpreter must be chosen before triton (or anything importing it) is imported.
    if getattr(args, "include_interpreter", False):
        os.environ["TRITON_INTERPRET"] = "1"
    # Inductor otherwise starts a pool of compile-worker processes at the first torch.compile;
    # their start-up (each imports torch) competes with the timed steps on a small machine.
    # Compiling in this process changes how long compilation takes (not timed), not the code.
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    return args


def device_and_backends(args):
    """(device, ganfast backends to time, {backend: why it is not timed}) from --device and
    --include-interpreter; exit status 2 when --device cuda finds no GPU."""
    import torch
    from ganfast.bench import harness as H

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no GPU is visible", file=sys.stderr)
        sys.exit(2)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    backends, skipped = H.ganfast_backends(device, args.include_interpreter)
    if "triton" in skipped and device.type == "cpu" and not args.include_interpreter:
        skipped["triton"] += "; pass --include-interpreter to time it"
    return device, backends, skipped


# ---- the machine header ----------------------------------------------------------------------

def header(title: str, device, details, backends=None, skipped=None, **fields) -> dict:
    """Print the Markdown header (machine, versions, the script's `details` lines, the ganfast
    backends, the machine's load) and return it as a dict for the JSON: harness.environment
    plus `fields` and, where given, the backends."""
    from ganfast.bench import harness as H

    meta = H.environment(device)
    meta.update(fields)
    if backends is not None:
        meta.update(ganfast_backends_timed=backends, ganfast_backends_skipped=skipped)
    print(f"# {title}")
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
    for line in details:
        print(f"- {line}")
    if backends is not None:
        print(f"- ganfast backends timed: {', '.join(backends) or 'none'}")
        for name, why in skipped.items():
            print(f"- ganfast[{name}] not timed: {why}")
    if meta["triton_interpret"] not in ("", "0"):
        print("- TRITON_INTERPRET=1: ganfast[triton] runs through the Triton interpreter "
              "(correctness path, not a speed claim)")
    print(f"- machine before: {meta['load_before']}")
    print()
    return meta


# ---- contenders ------------------------------------------------------------------------------

def first_call(c, call, compile_error: str = "compile failed", select: bool = True):
    """A contender's first call, `call(c.fn)` (under its backend unless select=False): its
    outputs for the correctness gate, or None with c.error set where it could not run
    (backend unavailable here, torch.compile refused, any other exception: FAILED)."""
    from ganfast.backend import BackendUnavailableError
    from ganfast.bench.harness import one_line

    is_compile = c.name == "torch.compile"
    t0 = time.perf_counter()
    try:
        if select:
            with c.selected():
                got = call(c.fn)
        else:
            got = call(c.fn)
    except BackendUnavailableError as exc:
        c.error = f"unavailable: {one_line(exc)}"
        return None
    except Exception as exc:  # noqa: BLE001  (reported in the table)
        c.error = f"{compile_error if is_compile else 'FAILED'}: {one_line(exc, limit=200)}"
        c.note = f"raised after {time.perf_counter() - t0:.1f} s (first call, compilation included)"
        return None
    if is_compile:
        c.note = f"first call (compilation) {time.perf_counter() - t0:.1f} s"
    return got


def interpreted(c) -> bool:
    """Whether the contender runs ganfast's Triton kernels through the interpreter."""
    import ganfast

    return c.backend == "triton" and ganfast.backend.triton_interpreter()


def time_few(c, step, n: int) -> None:
    """Time `n` steps of a very slow contender (the Triton interpreter) one after another, after
    the interleaved rounds of the others; its verification call was its warm-up."""
    from ganfast.bench import harness as H

    with c.selected():
        H.run_for(step, 0.0, n, c.samples_ns)
    c.iterations = len(c.samples_ns)
    c.stats_us = H.percentiles_us(c.samples_ns)
    c.note = (c.note + "; " if c.note else "") + f"Triton interpreter: {n} steps timed after the others, not interleaved"


def is_failure(error: str) -> bool:
    """A table cell's error that makes the run exit with status 2 (not a refusal or a backend
    this machine lacks)."""
    return not error.startswith(NOT_FAILURES)


# ---- the end of a run ------------------------------------------------------------------------

def print_table(table, notes) -> None:
    """A Markdown table (its lines) and the notes under it, as a bullet list."""
    print("\n".join(table))
    print()
    for n in notes:
        print(f"- {n}")
    print()


def print_targets(lines) -> None:
    if lines:
        print("## targets (measured, not tuned for)")
        print()
        print("\n".join(lines))
        print()


def finish(meta: dict, json_path, payload, failures) -> int:
    """Machine load after the run, the JSON (`payload`, which may hold `meta`), exit status."""
    from ganfast.bench.harness import machine_load

    meta["load_after"] = machine_load()
    print(f"machine after: {meta['load_after']}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(payload() if callable(payload) else payload, f, indent=2)
        print(f"rows written to {json_path}")
    if failures:
        print("\nERROR: contenders failed to run:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 2
    return 0


def run(main, args) -> None:
    """sys.exit(main(args)); exit 1, with no timings, when a contender disagrees with eager."""
    from ganfast.bench.harness import Disagreement

    try:
        code = main(args)
    except Disagreement as exc:
        print("\n" + "!" * 78, file=sys.stderr)
        print(f"ABORTED: a contender disagrees with eager; no timings are reported.\n{exc}", file=sys.stderr)
        print("!" * 78, file=sys.stderr)
        code = 1
    sys.exit(code)
