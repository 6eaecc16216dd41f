"""The BigGAN-128 orthogonal regularization case, eager vs ganfast, with few steps.

`ganfast bench --only orthogonal` times the small generator (BigGAN 32x32, ch=32) with the suite's
rounds; at BigGAN-128 widths (ch=96) one eager step is hundreds of GFLOP of GEMMs (seconds on a
2-core CPU), which the suite's 13 timed steps per contender and backend cannot afford here. This
script times the same cases (ganfast.bench.cases.ortho_128_case: the same weights, the same step,
checked against eager first) with `--steps` steps per contender after one warm-up, interleaved
eager / ganfast, and prints the median of each. torch.compile is left out (it compiles the same
GEMMs; measured on the small case by the suite).

    python benchmarks/bench_orthogonal_regularization.py --steps 3
"""
from __future__ import annotations

import argparse
import statistics
import time


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps per contender (default 3)")
    args = p.parse_args()
    import torch

    import ganfast
    from ganfast.bench import cases as C

    device = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ganfast backend cpu")
    for in_place in (False, True):
        case = C.ortho_128_case(in_place, device)
        steps = {"eager": case.make_step("eager")}
        with ganfast.use_backend("cpu"):
            steps["ganfast"] = case.make_step("ganfast")
            got = steps["ganfast"]()
        want = steps["eager"]()
        worst = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for (_, a), (_, b) in zip(got, want))
        times = {k: [] for k in steps}
        for _ in range(args.steps):
            for name, step in steps.items():
                with ganfast.use_backend("cpu"):
                    t = time.perf_counter()
                    step()
                    times[name].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{case.name} [{case.size}]: eager {med['eager'] * 1e3:.0f} ms, ganfast {med['ganfast'] * 1e3:.0f} ms, "
              f"{med['eager'] / med['ganfast']:.2f}x; largest |ganfast - eager| / max|eager| over the outputs "
              f"{worst:.1e}; samples {[round(t * 1e3) for t in times['eager']]} / "
              f"{[round(t * 1e3) for t in times['ganfast']]} ms")


if __name__ == "__main__":
    main()
