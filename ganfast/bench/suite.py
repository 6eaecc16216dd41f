"""`ganfast bench`: the benchmark suite, side by side in one run.

For every case of ganfast/bench/cases.py (each op family and eight whole training steps; they ship
in the package, so the suite runs from any install), in this order:
  1. build eager, torch.compile and ganfast under every backend present (ganfast/bench/cases.py);
  2. run each once from the same initial state and compare with eager (float32 tolerance): a
     contender that disagrees is not timed and the run exits with status 1; torch.compile's
     refusals (double backward) are recorded as its row, with the error;
  3. time them (ganfast/bench/harness.py: interleaved rounds and perf_counter on CPU,
     triton.testing.do_bench on CUDA; median, p20, p80, warm-up excluded);
  4. count one step of eager and of each ganfast backend under the device-operation counter
     (ganfast/bench/dispatch.py): operations, bytes read and written, and the achieved
     bandwidth (those bytes / the median time) against a measured device-to-device copy.
Writes <out>/<name>.json, .md and .png (name: suite, or suite-quick with --quick); <out> is
./ganfast-bench in the current directory unless --out says otherwise (the checkout's committed
results are written with `--out benchmarks/results`).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from . import harness as H

# Relative to the current directory, never inside the installed package.
DEFAULT_OUT = Path("ganfast-bench")


# ---- loading the cases ---------------------------------------------------------------------------

def load_cases_module(suite_dir: Optional[str] = None):
    """The suite's cases: ganfast.bench.cases, or a cases.py of your own in `suite_dir` (or in the
    directory the environment variable GANFAST_BENCHMARKS names), imported by path. Such a file
    defines `cases(device, quick=False)` returning ganfast.bench.cases.Case objects."""
    directory = suite_dir or os.environ.get("GANFAST_BENCHMARKS")
    if not directory:
        from . import cases
        return cases
    path = Path(directory) / "cases.py"
    if not path.is_file():
        raise FileNotFoundError(
            f"ganfast bench: no benchmark cases at {path}: --suite DIR (or GANFAST_BENCHMARKS) names a "
            "directory holding a cases.py; without it the suite built into ganfast runs")
    spec = importlib.util.spec_from_file_location("ganfast_benchmark_cases", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def select(cases, only: Optional[str]):
    """Cases whose family or name contains one of the comma-separated words of `only`."""
    if not only:
        return cases
    words = [w.strip().lower() for w in only.split(",") if w.strip()]
    chosen = [c for c in cases if any(w in c.family.lower() or w in c.name.lower() for w in words)]
    if not chosen:
        raise ValueError(f"ganfast bench: --only {only!r} matches no case; families: "
                         f"{', '.join(sorted({c.family for c in cases}))}")
    return chosen


# ---- one case ------------------------------------------------------------------------------------

def _clone_outputs(outputs):
    return [(what, None if t is None else t.detach().clone()) for what, t in outputs]


def _build(contender, case, impl):
    """Build contender's step and run it once; its outputs, or None with contender.error set."""
    t0 = time.perf_counter()
    try:
        with contender.selected():
            step = case.make_step(impl)
            outputs = _clone_outputs(step())
            if case.separate_check:  # the outputs to verify come from a step built for checking
                outputs = _clone_outputs(case.make_step(impl, check=True)())
    except H.BackendUnavailableError as exc:
        contender.error = f"unavailable: {H.one_line(exc)}"
        return None, None
    except Exception as exc:  # noqa: BLE001  (recorded in the table)
        if impl == "compile":
            contender.error = f"refused: {H.one_line(exc, 200)}"
            return None, None
        raise
    if impl == "compile":
        contender.note = f"compiled in {time.perf_counter() - t0:.1f} s (first call, not timed)"
    return step, outputs


def run_case(case, device, backends, use_compile: bool, quick: bool, count: bool) -> dict:
    """Every contender of `case`: verified, timed and counted. A dict of rows and failures."""
    contenders, steps, impls, failures = [], {}, {}, []

    eager = H.Contender("eager")
    steps["eager"], expected = _build(eager, case, "eager")
    contenders.append(eager)
    impls["eager"] = "eager"
    variants = []
    if use_compile:
        variants.append((H.Contender("torch.compile"), "compile"))
    variants += [(H.Contender(f"ganfast[{b}]", backend=b), "ganfast") for b in backends]
    if case.check64:  # the float64 run is the truth; eager float32's own distance from it sets the bar
        expected64 = _clone_outputs(case.make_step("eager", dtype=torch.float64, check=case.separate_check)())
        eager_devs = H.deviations(expected, expected64)

        def check(who, outputs):
            return H.check_against_float64(who, outputs, expected64, eager_devs,
                                           factor=getattr(case, "check64_factor", H.DEV_FACTOR))
    else:
        def check(who, outputs):
            return H.compare(who, outputs, expected, case.rtol, case.atol_scale)
    for c, impl in variants:
        if impl == "compile":
            torch._dynamo.reset()  # a fresh graph per case, as a one-model training script gets
        step, outputs = _build(c, case, impl)
        contenders.append(c)
        if step is None:
            continue
        try:
            check(f"{c.name} [{case.key}]", outputs)
        except H.Disagreement as exc:
            c.error = "DISAGREES with eager (not timed)"
            failures.append(str(exc))
            continue
        steps[c.name], impls[c.name] = step, impl

    timed = [c for c in contenders if c.error is None]
    if device.type == "cuda":
        H.time_cuda(timed, steps, rep_ms=100 if quick else 500, warmup_ms=25 if quick else 100)
    else:
        if quick:
            H.time_cpu(timed, steps, target_s=0.1, warmup_s=0.0, min_iters=3, rounds=3, warmup_n=1)
        else:
            H.time_cpu(timed, steps, target_s=1.5, warmup_s=0.2, min_iters=10, rounds=5, warmup_n=3)

    counts = {}
    from . import dispatch
    if count:
        for c in timed:
            if impls[c.name] == "compile":
                continue  # compiled kernels run outside the dispatcher: nothing to count
            with c.selected():
                counts[c.name] = dispatch.count_device_ops(steps[c.name])

    base = eager.stats_us[0] if eager.stats_us else None
    compiled = next((c for c in contenders if c.name == "torch.compile" and c.stats_us), None)
    rows = []
    for c in contenders:
        row = {"family": case.family, "case": case.name, "size": case.size, "contender": c.name,
               "backend": c.backend, "median_us": None, "p20_us": None, "p80_us": None,
               "iterations": c.iterations or None, "speedup_vs_eager": None, "speedup_vs_compile": None,
               "error": c.error, "note": c.note, "ops": None, "bytes_read": None, "bytes_written": None,
               "host_syncs": None, "achieved_gbs": None, "fusable_ops": None, "fusable_bytes": None,
               "gpu_model_us": None}
        if c.stats_us:
            med, p20, p80 = c.stats_us
            row.update(median_us=med, p20_us=p20, p80_us=p80, speedup_vs_eager=base / med)
            if compiled is not None:
                row["speedup_vs_compile"] = compiled.stats_us[0] / med
        if c.name in counts:
            n = counts[c.name]
            row.update(ops=n.ops, bytes_read=n.bytes_read, bytes_written=n.bytes_written,
                       host_syncs=n.host_syncs)
            # what fusion can act on: neither GEMMs / convolutions nor the optimizer
            f = n.filter(lambda r: r.name not in dispatch.GEMM_AND_CONV_OPS
                         and not r.name.startswith(("aten::_foreach", "aten::_fused_adam")))
            row.update(fusable_ops=f.ops, fusable_bytes=f.total_bytes, op_breakdown=n.breakdown(),
                       gpu_model_us=gpu_model_us(n.ops, f.total_bytes))
            if c.stats_us:
                row["achieved_gbs"] = (n.bytes_read + n.bytes_written) / (c.stats_us[0] * 1e-6) / 1e9
        rows.append(row)
    return {"case": case.key, "family": case.family, "name": case.name, "size": case.size,
            "detail": case.detail, "rows": rows, "failures": failures}


# ---- the report ----------------------------------------------------------------------------------

# The paper model of a step on a GPU, from the counts alone: every device operation costs a launch
# (MODEL_LAUNCH_US, about what a small kernel's launch and tail take on an A100/H100-class GPU),
# and the traffic outside GEMMs, convolutions and the optimizer moves at MODEL_BANDWIDTH (about
# an H100's HBM3). GEMMs and convolutions are left out: cuBLAS/cuDNN run them for every contender
# alike. A projection to compare contenders by, not a measurement.
MODEL_LAUNCH_US = 5.0
MODEL_BANDWIDTH = 3e12  # bytes / s


def gpu_model_us(ops: int, fusable_bytes: int) -> float:
    return ops * MODEL_LAUNCH_US + fusable_bytes / MODEL_BANDWIDTH * 1e6

def _ratio(v):
    return f"{v:.2f}x" if v is not None else ""


def _mb(nbytes):
    return f"{nbytes / 1e6:.2f}" if nbytes is not None else ""


def markdown(meta: dict, results: list) -> str:
    out = [f"# ganfast bench{' --quick' if meta['quick'] else ''}", ""]
    out.append(f"- device: {meta['device']}, {meta['device_name']}")
    out.append(f"- torch {meta['torch']} (CUDA {meta['torch_cuda']}), triton {meta['triton']}, "
               f"ganfast {meta['ganfast']}, python {meta['python']}; torch threads {meta['torch_num_threads']}")
    out.append(f"- command: `{meta['command']}`; {meta['started']}, {meta['wall_s']:.0f} s")
    out.append(f"- timing: {meta['timing']}")
    out.append(f"- ganfast backends timed: {', '.join(meta['backends']) or 'none'}"
               + "".join(f"; {b} not timed: {why}" for b, why in meta["backends_skipped"].items()))
    if meta.get("copy_gbs"):
        out.append(f"- device-to-device copy: {meta['copy_gbs']:.1f} GB/s (read + write), the yardstick "
                   "for the achieved bandwidth column")
    out.append(f"- machine before: {meta['load_before']}; after: {meta.get('load_after', '')}")
    out.append("")
    out.append("| family | case | size | contender | median | p20 | p80 | vs eager | vs compile |")
    out.append("|---|---|---|---|---:|---:|---:|---:|---:|")
    for res in results:
        for r in res["rows"]:
            if r["median_us"] is None:
                out.append(f"| {res['family']} | {res['name']} | {res['size']} | {r['contender']} | "
                           f"{r['error']} | | | | |")
                continue
            out.append(f"| {res['family']} | {res['name']} | {res['size']} | {r['contender']} | "
                       f"{H.fmt_time(r['median_us'])} | {H.fmt_time(r['p20_us'])} | {H.fmt_time(r['p80_us'])} | "
                       f"{_ratio(r['speedup_vs_eager'])} | {_ratio(r['speedup_vs_compile'])} |")
    counted = [(res, r) for res in results for r in res["rows"] if r["ops"] is not None]
    if counted:
        out += ["", "Device operations and memory traffic of one step (ganfast/bench/dispatch.py; views and "
                "allocations excluded, a fused op counts once; bytes = every operand read + every result written):",
                "", "| case | size | contender | device ops | MB read | MB written | achieved GB/s | "
                "ops vs eager | traffic vs eager | ops / MB outside GEMM, conv, optimizer | GPU model | "
                "model vs eager |",
                "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for res in results:
            rows = [r for r in res["rows"] if r["ops"] is not None]
            eager = next((r for r in rows if r["contender"] == "eager"), None)
            for r in rows:
                ops_ratio = traffic_ratio = model_ratio = ""
                if eager is not None and r is not eager and r["ops"]:
                    ops_ratio = _ratio(eager["ops"] / r["ops"])
                    model_ratio = _ratio(eager["gpu_model_us"] / r["gpu_model_us"])
                    traffic = r["bytes_read"] + r["bytes_written"]
                    if traffic:
                        traffic_ratio = _ratio((eager["bytes_read"] + eager["bytes_written"]) / traffic)
                gbs = ""
                if r["achieved_gbs"] is not None:
                    gbs = f"{r['achieved_gbs']:.1f}"
                    if meta.get("copy_gbs"):
                        gbs += f" ({100 * r['achieved_gbs'] / meta['copy_gbs']:.0f}% of copy)"
                out.append(f"| {res['name']} | {res['size']} | {r['contender']} | {r['ops']} | "
                           f"{_mb(r['bytes_read'])} | {_mb(r['bytes_written'])} | {gbs} | {ops_ratio} | "
                           f"{traffic_ratio} | {r['fusable_ops']} / {_mb(r['fusable_bytes'])} | "
                           f"{H.fmt_time(r['gpu_model_us'])} | {model_ratio} |")
        out += ["", f"GPU model: {MODEL_LAUNCH_US:g} us per device operation + the bytes outside GEMM, convolution "
                f"and optimizer at {MODEL_BANDWIDTH / 1e12:g} TB/s (ganfast/bench/suite.py: a projection from the "
                "counts, not a measurement)."]
    notes = [f"- {res['name']} [{res['size']}], {r['contender']}: {r['note']}"
             for res in results for r in res["rows"] if r["note"]]
    if notes:
        out += ["", "Notes:", ""] + notes
    out += ["", "Cases (one timed step each):", ""]
    out += [f"- **{res['name']}** [{res['size']}]: {res['detail']}" for res in results]
    return "\n".join(out) + "\n"


def chart(meta: dict, results: list, path: Path) -> None:
    """Horizontal bars: every contender's speedup over eager, per case; refusals written out."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c for c in dict.fromkeys(r["contender"] for res in results for r in res["rows"]) if c != "eager"]
    colours = dict(zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4))
    height = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(results) * max(1, len(names)) * 0.7 + 1.6))
    labels = []
    for i, res in enumerate(results):
        labels.append(f"{res['name']}\n{res['size']}")
        rows = {r["contender"]: r for r in res["rows"]}
        for j, name in enumerate(names):
            y = i + (j - (len(names) - 1) / 2) * height
            r = rows.get(name)
            if r is None:
                continue
            if r["speedup_vs_eager"] is None:
                err = r["error"] or ""
                short = "refused (double backward)" if "double backward" in err else err[:60]
                ax.text(0.02, y, f"{name}: {short}", va="center", fontsize=7, transform=ax.get_yaxis_transform())
                continue
            ax.barh(y, r["speedup_vs_eager"], height=height, color=colours[name],
                    label=name if i == next(k for k, rr in enumerate(results) if name in
                                            {x["contender"] for x in rr["rows"] if x["speedup_vs_eager"]}) else None)
            ax.text(r["speedup_vs_eager"], y, f" {r['speedup_vs_eager']:.2f}x", va="center", fontsize=7)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(results)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speedup over eager PyTorch (median step time; higher is better)")
    ax.set_title(f"ganfast bench{' --quick' if meta['quick'] else ''}: {meta['device_name']}, "
                 f"torch {meta['torch']}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- the command ---------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="small shapes and short timings (under 2 minutes on a 2-core CPU; what CI runs)")
    p.add_argument("--only", metavar="WORDS", default=None,
                   help="comma-separated words: run the cases whose family or name contains one "
                        "(families: losses, cycle_loss, orthogonal_regularization, penalty, bias_act, block, "
                        "instance_norm_act, spectral_norm, step)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: cuda when a GPU is visible, else cpu")
    p.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    p.add_argument("--no-count", action="store_true", help="skip the device-operation and traffic counts")
    p.add_argument("--out", metavar="DIR", default=None,
                   help=f"where the JSON, Markdown and PNG go (default: ./{DEFAULT_OUT} in the current "
                        "directory; the checkout's committed results: --out benchmarks/results)")
    p.add_argument("--suite", metavar="DIR", default=None,
                   help="a directory holding a cases.py of your own (default: the suite built into ganfast, "
                        "ganfast/bench/cases.py)")
    p.add_argument("--gpu-report", action="store_true",
                   help="instead of timing, write the static GPU resource report: every Triton kernel "
                        "configuration and every CUDA kernel compiled for sm_80/sm_90, registers, shared "
                        "memory, spills (ganfast/bench/gpu_report.py; no GPU needed, a few minutes)")


def run(args: argparse.Namespace) -> int:
    if args.gpu_report:
        from . import gpu_report
        return gpu_report.main(["--out", args.out or str(DEFAULT_OUT)])
    # Inductor otherwise starts compile-worker processes whose start-up competes with the timed
    # steps on a small machine; compiling in-process changes compile time only, not the code.
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            print("ganfast bench: --device cuda, but no GPU is visible", file=sys.stderr)
            return 2
    try:
        module = load_cases_module(args.suite)
        cases = select(module.cases(device, quick=args.quick), args.only)
    except (FileNotFoundError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    out_dir = Path(args.out) if args.out else DEFAULT_OUT
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "suite-quick" if args.quick else "suite"

    backends, skipped = H.ganfast_backends(device)
    meta = H.environment(device)
    meta.update(quick=args.quick, backends=backends, backends_skipped=skipped,
                started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                timing=("CUDA events (triton.testing.do_bench), L2 flushed, warm-up excluded" if device.type == "cuda"
                        else "time.perf_counter_ns per step, contenders warmed up then timed in interleaved "
                             f"rounds ({'3 x ~0.03 s, >= 3 steps' if args.quick else '5 x ~0.3 s, >= 10 steps'} "
                             "each), GC off; median, p20, p80"))
    t_start = time.perf_counter()
    print(f"ganfast bench: {len(cases)} cases on {meta['device_name']}; backends {', '.join(backends) or 'none'}",
          flush=True)
    if not args.no_count:
        meta["copy_gbs"] = H.copy_bandwidth_gbs(device, nbytes=(64 << 20) if args.quick else (256 << 20),
                                                quick=args.quick)
    results, failures = [], []
    for case in cases:
        t0 = time.perf_counter()
        res = run_case(case, device, backends, not args.no_compile, args.quick, not args.no_count)
        results.append(res)
        failures += res["failures"]
        summary = ", ".join(f"{r['contender']} {H.fmt_time(r['median_us'])}" if r["median_us"] is not None
                            else f"{r['contender']} ({(r['error'] or '')[:50]})" for r in res["rows"])
        print(f"  {case.key}: {summary} [{time.perf_counter() - t0:.1f} s]", flush=True)
    meta["wall_s"] = time.perf_counter() - t_start
    meta["load_after"] = H.machine_load()

    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("json", "md", "png")}
    with open(paths["json"], "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)
    text = markdown(meta, results)
    paths["md"].write_text(text)
    chart(meta, results, paths["png"])
    print()
    print(text)
    print("written: " + ", ".join(str(p) for p in paths.values()))
    if failures:
        print("\nERROR: contenders disagree with eager (not timed):\n" + "\n".join(failures), file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ganfast bench", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
