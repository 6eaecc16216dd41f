"""Merge `ganfast compare` results made in separate invocations with the same settings into one
compare.csv / compare.md / compare.png, through ganfast.compare's own writers.

Why: a comparison's run directories are large and a session's disk is not kept, but compare.csv is;
when a comparison is extended later (more objectives, the same data, steps and seeds), the published
table is the union of the CSVs. Every input must come from the same data, steps and budget; the
script checks what the CSVs record (steps requested) and that no run appears twice; with --replace
a later input's run replaces the earlier one's row (an objective re-run after its defaults changed).

    python benchmarks/merge_compare.py --data digits --out benchmarks/results/compare-digits \\
        --command "..." A/compare.csv B/compare.csv
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from ganfast import compare


def number(value: str):
    """A CSV cell back to what rows_of wrote: int, float, or the string (empty stays empty)."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def read_rows(path: Path) -> tuple[list[dict], list[str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        metrics = [c for c in reader.fieldnames if c not in compare.BASE_COLUMNS]
        rows = [{k: (number(v) if k not in ("run", "model", "objective", "status", "action", "error", "out", "log")
                     else v) for k, v in row.items()} for row in reader]
    return rows, metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csvs", nargs="+", type=Path)
    p.add_argument("--data", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--command", required=True, help="the commands that made the inputs, for compare.md")
    p.add_argument("--replace", action="store_true",
                   help="a run that a later input made again replaces the earlier row (e.g. an objective re-run "
                        "after its defaults changed); without it a run found twice is an error")
    args = p.parse_args()
    args.budget_minutes = None
    by_run: dict = {}
    metrics: list = []
    for path in args.csvs:
        r, m = read_rows(path)
        for row in r:
            if row["run"] in by_run and not args.replace:
                raise SystemExit(f"merge_compare: run {row['run']} appears twice (pass --replace to keep the later)")
            by_run[row["run"]] = row
        metrics += [k for k in m if k not in metrics]
    rows = list(by_run.values())
    seeds = sorted({r["seed"] for r in rows})
    args.seeds, args.seed_start = len(seeds), seeds[0]  # what compare.md's header reports
    steps = {r["steps_requested"] for r in rows}
    if len(steps) != 1:
        raise SystemExit(f"merge_compare: the inputs were made with different --steps: {sorted(steps)}")
    args.out.mkdir(parents=True, exist_ok=True)
    compare.write_csv(rows, metrics, args.out / "compare.csv")
    kind = "points" if "ema.modes" in metrics else "images"
    compare.write_markdown(rows, metrics, kind, args, args.out / "compare.md", args.command)
    compare.write_plot(rows, metrics, args.out / "compare.png",
                       f"ganfast compare on {args.data}: {args.seeds} seeds, {steps.pop()} steps")


if __name__ == "__main__":
    main()
