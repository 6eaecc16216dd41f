"""Data-parallel training: what crosses between processes per training step, and steps per second
for 1 and N processes.

Bytes per step are counted, not estimated: the run trains in `--nproc` gloo processes (CPU) or NCCL
processes (one per GPU) with a DDP communication hook on every wrapped model (the gradient buckets
DDP all-reduces) and a wrapper around torch.distributed.all_reduce / all_gather (synchronised
BatchNorm's statistics, CycleGAN's history pool, the logged losses). They depend on the models and
the batch only, not on the machine. Steps per second are wall clock: on a 2-core CPU the point of
several processes is correctness, not speed.

    python benchmarks/bench_distributed.py                   # every engine model, 2 processes
    python benchmarks/bench_distributed.py --models dcgan --nproc 2 --steps 20 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# name -> ganfast train configuration (the engine's defaults for the model, small widths where the
# default would take minutes per step on a CPU; the widths are printed with the table)
CASES = {
    "mlp-wgan-gp (ring8)": dict(data="ring8", objective="wgan-gp"),
    "dcgan (digits)": dict(data="digits", model="dcgan"),
    "infogan (digits)": dict(data="digits", model="infogan"),
    "sagan (digits)": dict(data="digits", model="sagan"),
    "biggan (digits)": dict(data="digits", model="biggan"),
    "cyclegan (digits<->bold)": dict(data="cycle:digits,digits-bold", model="cyclegan"),
}


def _counting_hook(counter, all_reduce):
    """A DDP communication hook that all-reduces the bucket as DDP does (sum / world) and counts its bytes
    (all_reduce: torch's own, not the counting wrapper below)."""
    def hook(state, bucket):
        t = bucket.buffer()
        counter["ddp gradients"] += t.numel() * t.element_size()
        world = dist.get_world_size()
        return all_reduce(t.div_(world), async_op=True).get_future().then(lambda f: f.value()[0])
    return hook


def _worker(rank: int, world: int, rdzv: str, case: dict, steps: int, out: str, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from ganfast.train import CycleGANTrainer, TrainConfig, Trainer

    counter: dict = defaultdict(int)
    real_all_reduce, real_all_gather = dist.all_reduce, dist.all_gather

    def all_reduce(t, *a, **k):
        counter["all_reduce (BatchNorm statistics, logged losses)"] += t.numel() * t.element_size()
        return real_all_reduce(t, *a, **k)

    def all_gather(parts, t, *a, **k):
        counter["all_gather (history pool)"] += t.numel() * t.element_size() * world
        return real_all_gather(parts, t, *a, **k)

    dist.all_reduce, dist.all_gather = all_reduce, all_gather
    if world > 1:
        dist.init_process_group("gloo", init_method=rdzv, rank=rank, world_size=world)

    class Counted(CycleGANTrainer if case.get("model") == "cyclegan" else Trainer):
        def _setup(self, ckpt):
            super()._setup(ckpt)
            for name in ("G_train", "D_train", "G_AB_train", "G_BA_train", "D_A_train", "D_B_train"):
                m = getattr(self, name, None)
                if isinstance(m, torch.nn.parallel.DistributedDataParallel):
                    m.register_comm_hook(None, _counting_hook(counter, real_all_reduce))

    cfg = TrainConfig(**case, steps=steps, out=out, progress=False, threads=1, eval_every=10 ** 6,
                      sample_every=10 ** 6, ckpt_every=10 ** 6, log_every=10 ** 6, eval_samples=100)
    cfg = cfg.replace(**_small(case))
    trainer = Counted(cfg)
    t0 = time.perf_counter()
    summary = trainer.fit()
    seconds = time.perf_counter() - t0
    if rank == 0:
        queue.put({"bytes": dict(counter), "seconds": seconds, "summary_seconds": summary["seconds"],
                   "batch": trainer.cfg.batch_size})
    if world > 1:
        dist.destroy_process_group()


def _small(case: dict) -> dict:
    """Widths that keep a CPU step under a second (the byte counts scale with the parameters)."""
    model = case.get("model")
    if model in ("sagan", "biggan"):
        return dict(ngf=16, ndf=16)
    if model == "cyclegan":
        return dict(ngf=16, ndf=16, n_blocks=2)
    if model in ("dcgan", "infogan"):
        return dict(ngf=32, ndf=32)
    return {}


def measure(case: dict, nproc: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        rdzv = f"file://{d}/rendezvous"
        procs = [ctx.Process(target=_worker, args=(r, nproc, rdzv, case, steps, f"{d}/run", queue))
                 for r in range(nproc)]
        for p in procs:
            p.start()
        result = queue.get(timeout=1800)
        for p in procs:
            p.join()
            if p.exitcode != 0:
                raise RuntimeError(f"a worker exited with {p.exitcode}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="all", help="comma-separated case prefixes (default: all)")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    names = [n for n in CASES if args.models == "all" or any(n.startswith(m) for m in args.models.split(","))]
    rows = []
    for name in names:
        case = CASES[name]
        one = measure(case, 1, args.steps)
        many = measure(case, args.nproc, args.steps)
        per_step = {k: v / args.steps for k, v in many["bytes"].items()}
        rows.append({"case": name, "widths": _small(case), "batch": many["batch"], "nproc": args.nproc,
                     "bytes_per_step": per_step, "total_bytes_per_step": sum(per_step.values()),
                     "steps_per_s_1": args.steps / one["summary_seconds"],
                     f"steps_per_s_{args.nproc}": args.steps / many["summary_seconds"]})
        r = rows[-1]
        print(f"{name:28s} batch {r['batch']:4d}  {r['total_bytes_per_step'] / 2**20:8.3f} MiB/step per rank  "
              + "  ".join(f"{k}: {v / 2**20:.3f} MiB" for k, v in per_step.items())
              + f"  | steps/s 1 proc {r['steps_per_s_1']:.2f}, {args.nproc} procs {r[f'steps_per_s_{args.nproc}']:.2f}",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "steps": args.steps, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
