"""Mutation evidence for the emulated CUDA tests: would they notice the bugs a GPU would hit?

Plants named bugs, one at a time, in a copy of csrc/ (the kind the emulator exists to catch: a
dropped barrier, a broken tail, a grid-stride loop that runs once, a reduction whose order depends
on the block schedule, a last-block handshake off by one), builds each mutant for the emulator, runs
the emulated family tests on it, and prints a table of which configurations caught it. The
unmutated sources run first: they must pass, or the table would prove nothing.

    python tests/cuda_emu/mutate.py [--only NAME ...] [--markdown FILE]

Each mutant costs a rebuild of the files it touches and a run of the emulated tests (a few
minutes on two cores); the output of the last run is in docs/cuda-emulator.md.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
WORK = REPO / "build" / "cuda_emu_mutants"
CONFIGS = ("sm1-forward", "sm4-reverse", "sm132-shuffle")
# The emulated implementations of the family tests, and the emulator's block-order test.
TEST_FILES = ["tests/test_losses.py", "tests/test_penalty.py", "tests/test_bias_act.py",
              "tests/test_batch_norm_act.py", "tests/test_instance_norm_act.py", "tests/test_conv_block.py",
              "tests/test_cuda_emu.py"]
SELECT = "cuda-emu or block_order"


@dataclass
class Mutant:
    name: str
    file: str  # below csrc/
    old: str
    new: str
    bug: str


MUTANTS = [
    Mutant("drop-barrier", "cuda/cuda_utils.cuh",
           "  __syncthreads();  // a previous call may still be reading warp_sums\n", "",
           "block_sum's first barrier removed: a warp that runs ahead into the next block_sum "
           "overwrites warp_sums while warp 0 still reads them"),
    Mutant("drop-fold-barrier", "cuda/channel_reduce.cuh",
           "  __syncthreads();\n  if (ty == 0 && valid) {", "  if (ty == 0 && valid) {",
           "the channels_last reduce (batch_norm_act, bias_act's bias gradient) reads the other warps' shared-memory folds "
           "without waiting for them"),
    Mutant("break-tail", "cuda/cuda_utils.cuh",
           "    if (i < n) body(std::integral_constant<int, 1>{}, i);",
           "    if (i < n - 1) body(std::integral_constant<int, 1>{}, i);",
           "vec_loop skips the last element of the unaligned tail (off by one)"),
    Mutant("break-grid-stride", "cuda/cuda_utils.cuh",
           "for (int64_t v = tid; v < nvec; v += nthreads) body(std::integral_constant<int, V>{}, v * V);",
           "if (tid < nvec) body(std::integral_constant<int, V>{}, tid * V);",
           "vec_loop's grid-stride loop made a single if: vectors beyond one wave are skipped"),
    Mutant("order-dependent-reduction", "cuda/losses.cu",
           "for (unsigned int j = threadIdx.x; j < gridDim.x; j += kThreads) p0 += __ldcg(partials + j);",
           "for (unsigned int j = threadIdx.x; j < gridDim.x; j += kThreads) "
           "p0 += __ldcg(partials + (j + blockIdx.x) % gridDim.x);",
           "the losses' last block adds the partials starting from its own index, so the result "
           "depends on which block finished last (a swapped reduction order)"),
    Mutant("last-block-off-by-one", "cuda/penalty.cu",
           "is_last = atomicAdd(a.counter, 1u) == gridDim.x - 1;",
           "is_last = atomicAdd(a.counter, 1u) == gridDim.x - 2;",
           "the penalty's penultimate block finishes the reduction, before the last block's "
           "partials are in"),
]


def prepare(mutant: Mutant | None) -> Path:
    """WORK/csrc = the repository's csrc with `mutant` applied. Files are only rewritten where
    their text changes, so ninja rebuilds just the objects the mutant touches."""
    dst = WORK / "csrc"
    for src in (REPO / "csrc").rglob("*"):
        if src.is_dir():
            continue
        target = dst / src.relative_to(REPO / "csrc")
        text = src.read_text()
        if mutant is not None and src.relative_to(REPO / "csrc").as_posix() == mutant.file:
            if text.count(mutant.old) != 1:
                raise SystemExit(f"mutant {mutant.name}: the text to replace is not in csrc/{mutant.file} "
                                 f"exactly once (the source changed): update MUTANTS")
            text = text.replace(mutant.old, mutant.new)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
    return dst


def run_tests(csrc: Path) -> tuple[int, int, dict[str, int], str]:
    """(passed, failed, failures per configuration, the summary line) of the emulated tests."""
    env = {**os.environ, "GANFAST_CUDA_EMU_CSRC": str(csrc), "GANFAST_CUDA_EMU_BUILD": str(WORK / "build")}
    cmd = [sys.executable, "-m", "pytest", *TEST_FILES, "-k", SELECT, "-q", "-p", "no:cacheprovider",
           "--tb=no", "-rf"]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    out = r.stdout
    failed_ids = re.findall(r"^FAILED (\S+)", out, flags=re.M)
    per_config = {c: sum(f"cuda-emu-{c}" in f for f in failed_ids) for c in CONFIGS}
    per_config["block order"] = sum("block_order" in f for f in failed_ids)
    summary = out.strip().splitlines()[-1] if out.strip() else r.stderr.strip()[-300:]
    passed = int(m.group(1)) if (m := re.search(r"(\d+) passed", summary)) else 0
    failed = int(m.group(1)) if (m := re.search(r"(\d+) failed", summary)) else 0
    errors = int(m.group(1)) if (m := re.search(r"(\d+) errors?", summary)) else 0
    return passed, failed + errors, per_config, summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="mutant names (default: all)", choices=[m.name for m in MUTANTS])
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]

    rows = []
    started = time.time()
    passed, failed, _, summary = run_tests(prepare(None))
    print(f"unmutated: {summary}", flush=True)
    if failed or not passed:
        print("the unmutated sources do not pass the emulated tests: no mutant can be judged")
        return 1
    for m in mutants:
        t0 = time.time()
        passed, failed, per_config, summary = run_tests(prepare(m))
        caught = failed > 0
        rows.append((m, failed, per_config, caught))
        print(f"{m.name}: {'CAUGHT' if caught else 'MISSED'} ({summary}; {time.time() - t0:.0f} s)", flush=True)
    prepare(None)

    cols = list(CONFIGS) + ["block order"]
    lines = [f"| mutant | planted bug | failing tests: {' / '.join(cols)} | caught |",
             "|---|---|---|---|"]
    for m, failed, per_config, caught in rows:
        counts = " / ".join(str(per_config[c]) for c in cols)
        lines.append(f"| `{m.name}` (csrc/{m.file}) | {m.bug} | {counts} | {'yes' if caught else '**no**'} |")
    table = "\n".join(lines)
    print()
    print(table)
    print(f"\n{len(rows)} mutants, {sum(r[3] for r in rows)} caught; {time.time() - started:.0f} s "
          f"(python tests/cuda_emu/mutate.py)")
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
