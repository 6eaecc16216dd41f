"""Host cost of one Triton op call: what the Python side of ganfast's Triton backend costs around
each kernel launch, measured on the CPU (issue 14).

Three measurements of ganfast.ops.gan_d_loss / gan_g_loss on tiny CPU tensors, backend "triton":

  1. calls per second of the whole op under the interpreter (the interpreter dominates: an upper
     bound of nothing on a GPU, shown for completeness);
  2. calls per second with every Triton launch stubbed out (JITFunction.run and the interpreter's
     run return at once): the custom_op wrapper, argument checks, allocations and the launcher's
     prologue alone, i.e. the host cost a GPU call pays besides the launch itself; with and without
     autograd, and the raw launcher without the custom op;
  3. device operations per raw launcher call besides its kernel (ganfast.bench.dispatch counting
     the aten ops the launcher issues; the custom op hides them from a counter outside it):
     a torch.zeros counter shows up as aten::zeros / aten::zero_, allocations are listed apart.

    python benchmarks/bench_triton_host.py [--seconds S] [--json PATH]

Run it from a checkout (the ganfast it imports is printed). Medians of 7 timing rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: CPU tensors

import torch  # noqa: E402

import ganfast  # noqa: E402
from ganfast import ops  # noqa: E402
from ganfast.bench.dispatch import count_device_ops  # noqa: E402
from ganfast.triton import losses as triton_losses  # noqa: E402


def calls_per_second(fn, seconds):
    """Median over 7 rounds of calls per second, each round about seconds / 7 long."""
    fn()  # warm-up (compilation, caches)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.05:
        fn()
        n += 1
    per_round = max(1, int(n / (time.perf_counter() - t0) * seconds / 7))
    rates = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(per_round):
            fn()
        rates.append(per_round / (time.perf_counter() - t0))
    return statistics.median(rates)


class stubbed_launches:
    """Every Triton launch returns at once (the outputs stay as allocated)."""

    def __enter__(self):
        from triton.runtime import interpreter, jit

        self._saved = [(cls, cls.run) for cls in (jit.JITFunction, interpreter.InterpretedFunction)]
        for cls, _ in self._saved:
            cls.run = lambda *a, **k: None
        return self

    def __exit__(self, *exc):
        for cls, run in self._saved:
            cls.run = run
        return False


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="time per measurement (default 3)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = p.parse_args()

    gen = torch.Generator().manual_seed(0)
    small = torch.randn(8, generator=gen)      # one program: no ticket
    large = torch.randn(3000, generator=gen)   # three programs: partials and a ticket
    cases = {
        "gan_d_loss n=8": (lambda: ops.gan_d_loss(small, small),
                           lambda: triton_losses.gan_d_loss(small, small, "nonsaturating", 1.0, 0.0)),
        "gan_d_loss n=3000": (lambda: ops.gan_d_loss(large, large),
                              lambda: triton_losses.gan_d_loss(large, large, "nonsaturating", 1.0, 0.0)),
        "gan_g_loss n=3000": (lambda: ops.gan_g_loss(large), lambda: triton_losses.gan_g_loss(large, "nonsaturating")),
    }
    leaf = large.clone().requires_grad_(True)

    def with_grad():
        ops.gan_d_loss(leaf, leaf).backward()

    rows = []
    print(f"ganfast from {os.path.dirname(ganfast.__file__)}; torch {torch.__version__}; "
          f"TRITON_INTERPRET={os.environ['TRITON_INTERPRET']}")
    with ganfast.use_backend("triton"):
        for name, (op_call, raw_call) in cases.items():
            row = {"case": name, "interpreted_op_calls_per_s": calls_per_second(op_call, args.seconds)}
            with stubbed_launches():
                row["stubbed_op_calls_per_s"] = calls_per_second(op_call, args.seconds)
                row["stubbed_launcher_calls_per_s"] = calls_per_second(raw_call, args.seconds)
                count = count_device_ops(raw_call)
            row["launcher_device_ops"] = dict(count.by_op)
            row["launcher_excluded"] = {f"{reason} {op}": n for (reason, op), n in count.excluded.items()}
            rows.append(row)
        with stubbed_launches():
            rows.append({"case": "gan_d_loss n=3000 forward+backward",
                         "stubbed_op_calls_per_s": calls_per_second(with_grad, args.seconds)})
    for row in rows:
        parts = [f"{k}={v:,.0f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "case"]
        print(f"{row['case']}:\n  " + "\n  ".join(parts))
        for k, v in row.items():
            if k.endswith("calls_per_s"):
                print(f"  {k.replace('calls_per_s', 'us_per_call')}={1e6 / v:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
