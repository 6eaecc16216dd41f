#!/usr/bin/env python
"""Benchmark of the penalty path: the fused gradient penalty, LeakyReLU's double backward, and
the whole WGAN-GP discriminator step they speed up.

    python benchmarks/bench_penalty.py [--quick] [--json out.json] [--device auto|cpu|cuda]
                                       [--sections penalty,lrelu,dstep] [--include-interpreter]
                                       [--no-compile]

Three sections, each side by side in one run (contenders interleaved, verified against eager
before any timing; the script aborts with exit status 1 on a disagreement):

penalty   g: (64, 3, 64, 64) and (256, 3, 128, 128) float32 leaves, requires_grad
          step: loss = f(g); loss.backward(); g.grad = None
            eager              ((g.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
            torch.compile      that eager function, default mode, compilation excluded
            ganfast[<backend>] ganfast.penalty.penalty_from_grad(g) under use_backend(<backend>):
                               cpu, reference; cuda on a GPU; triton on a GPU, or on CPU through
                               the Triton interpreter only with --include-interpreter
          targets: ganfast >= 2x eager and >= 1.2x torch.compile

lrelu     x: (64, 128, 32, 32) leaf; act = LeakyReLU(0.2) (torch.nn vs ganfast.nn)
          step: y = act(x); (g,) = autograd.grad(y, x, grad_outputs=u, create_graph=True);
                g.norm().backward(); x.grad = u.grad = None
          two upstream gradients: u = ones (autograd.grad(y.sum(), x, create_graph=True)), and u a
          random leaf that requires grad (as in D, where u is the next convolution's input
          gradient and depends on its weights). torch.compile: recorded error (double backward).

dstep     the whole WGAN-GP discriminator step of a 64x64 DCGAN discriminator, batch 64:
          D = Conv2d(3,64,4,2,1) LReLU(0.2) Conv2d(64,128,4,2,1) LReLU Conv2d(128,256,4,2,1) LReLU
              Conv2d(256,512,4,2,1) LReLU Conv2d(512,1,4,1,0), flattened to (B,); no BatchNorm
          step: loss = E D(fake) - E D(real) + 10 * E(||grad_x D(x_hat)|| - 1)^2; loss.backward();
                every parameter's .grad = None (no optimizer)
            eager              torch.nn.LeakyReLU, manual interpolation, autograd.grad(create_graph=True),
                               the norm penalty above
            torch.compile      of the eager loss function: its error (double backward) is recorded
            ganfast[<backend>] the same convolutions (shared weights) with ganfast.nn.LeakyReLU,
                               ganfast.losses.discriminator_loss(kind="wasserstein") +
                               ganfast.penalty.gradient_penalty(D, real, fake, weight=10)
          eps (the interpolation weights) is drawn once and passed to both, so the steps compute
          the same numbers; target: ganfast >= 1.1x eager

Timing is ganfast.bench.harness's (shared with `ganfast bench` and the other bench_*.py): on CPU
time.perf_counter_ns per step, time-boxed interleaved rounds, warm-up excluded, GC off, median /
p20 / p80; on CUDA triton.testing.do_bench. The options, machine header and exit status are
benchmarks/_script.py's. speedup = eager median / contender median. A ganfast
backend whose kernels for the section's ops are not registered in this build is shown as
unavailable (for instance the cpu backend while csrc/cpu/penalty.cpp is not built yet).
"""
from __future__ import annotations

import os

import _script as S  # standard library only: the environment is set before torch is imported

SECTIONS = ("penalty", "lrelu", "dstep")
PENALTY_SHAPES = ((64, 3, 64, 64), (256, 3, 128, 128))
LRELU_SHAPE = (64, 128, 32, 32)
DSTEP_BATCH = 64
GP_WEIGHT = 10.0
SLOPE = 0.2

# The ops each section needs from a compiled (cpu / cuda) backend.
SECTION_OPS = {
    "penalty": ("penalty_from_grad", "penalty_from_grad_backward"),
    "lrelu": ("bias_act", "bias_act_backward"),
    "dstep": ("gan_d_loss", "gan_d_loss_backward", "interpolate", "penalty_from_grad",
              "penalty_from_grad_backward", "penalty_from_grad_double_backward", "bias_act",
              "bias_act_backward"),
}

# Float32 agreement with eager. The penalty and the activation: as bench_losses. The D step sums
# over millions of products in a different order in its backward (the penalty's double backward
# reaches every weight), so it gets float32 accumulation-order tolerance.
RTOL, ATOL_SCALE = 1e-5, 1e-6
DSTEP_RTOL, DSTEP_ATOL_SCALE = 1e-4, 1e-5


def parse_args(argv=None):
    p = S.parser(__doc__, quick_help="shorter time boxes (whole run well under 2 minutes on 2 CPU cores)",
                 interpreter_help="on CPU, also time ganfast[triton] in the penalty section through the "
                                  "Triton interpreter")
    S.add_sections(p, SECTIONS)
    args = p.parse_args(argv)
    S.parse_sections(p, args, SECTIONS)
    return args


_ARGS = S.command_line(parse_args, __name__)

import torch  # noqa: E402
from torch import nn  # noqa: E402

import ganfast.losses as L  # noqa: E402
import ganfast.nn as gnn  # noqa: E402
import ganfast.penalty as P  # noqa: E402
from ganfast.bench import harness as H  # noqa: E402
from ganfast.bench.harness import Contender  # noqa: E402


# ---- which backends can run which section ----------------------------------------------------

def missing_kernels(backend: str, section: str, device: torch.device) -> list:
    """The section's ops that a compiled backend has no kernel for in this build."""
    if backend not in ("cpu", "cuda"):
        return []
    key = "CPU" if backend == "cpu" else "CUDA"
    return [op for op in SECTION_OPS[section]
            if not torch._C._dispatch_has_kernel_for_dispatch_key(f"ganfast::{op}", key)]


def ganfast_contenders(section: str, device: torch.device, backends, make_fn, interpreter_too: bool = True) -> list:
    out = []
    for name in backends:
        if name == "triton" and section != "penalty" and device.type == "cpu":
            continue  # the interpreter on these sizes takes minutes per step; header says so
        if name == "triton" and device.type == "cpu" and not interpreter_too:
            out.append(Contender(f"ganfast[{name}]", backend=name, error=(
                "unavailable: not run at this size through the Triton interpreter (minutes per step)")))
            continue
        missing = missing_kernels(name, section, device)
        c = Contender(f"ganfast[{name}]", fn=make_fn(), backend=name)
        if missing:
            c.error = (f"unavailable: no {'CPU' if name == 'cpu' else 'CUDA'} kernel registered for "
                       f"{', '.join('ganfast::' + m for m in missing)} in this build")
        out.append(c)
    return out


# ---- (1) the penalty -------------------------------------------------------------------------

def eager_penalty(g):
    return ((g.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def ganfast_penalty(g):
    return P.penalty_from_grad(g)


def penalty_contenders(device, backends, use_compile, interpreter_too):
    cs = [Contender("eager", fn=eager_penalty)]
    if use_compile:
        torch._dynamo.reset()  # a fresh, shape-specialised graph per size
        cs.append(Contender("torch.compile", fn=torch.compile(eager_penalty)))
    return cs + ganfast_contenders("penalty", device, backends, lambda: ganfast_penalty, interpreter_too)


def penalty_leaf(shape, device, seed=0):
    gen = torch.Generator().manual_seed(seed + sum(shape))
    # Gradients of D at interpolates: per-sample norms spread around 1 (both signs of norm - 1).
    g = torch.randn(shape, generator=gen)
    scale = torch.rand(shape[0], generator=gen) * 1.5 + 0.25
    g = g * (scale / g[0].numel() ** 0.5).view(-1, *([1] * (len(shape) - 1)))
    return g.to(device).requires_grad_()


def penalty_run(fn, g):
    loss = fn(g)
    loss.backward()
    grad = g.grad
    g.grad = None
    return [("penalty", loss.detach()), ("grad g", grad)]


def penalty_step(fn, g):
    def step():
        fn(g).backward()
        g.grad = None
    return step


# ---- (2) LeakyReLU double backward -----------------------------------------------------------

def lrelu_inputs(device, upstream: str, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(LRELU_SHAPE, generator=gen).to(device).requires_grad_()
    if upstream == "ones":
        return x, None
    u = torch.randn(LRELU_SHAPE, generator=gen).to(device).requires_grad_()
    return x, u


def lrelu_fn(act):
    def fn(x, u):
        y = act(x)
        if u is None:
            (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        else:
            (g,) = torch.autograd.grad(y, x, grad_outputs=u, create_graph=True)
        return g
    return fn


def lrelu_run(fn, x, u):
    g = fn(x, u)
    g.norm().backward()
    out = [("g", g.detach()), ("grad x", x.grad if x.grad is not None else torch.zeros_like(x))]
    if u is not None:
        out.append(("grad u", u.grad))
        u.grad = None
    x.grad = None
    return out


def lrelu_step(fn, x, u):
    def step():
        fn(x, u).norm().backward()
        x.grad = None
        if u is not None:
            u.grad = None
    return step


def lrelu_contenders(device, backends, use_compile):
    cs = [Contender("eager", fn=lrelu_fn(nn.LeakyReLU(SLOPE)))]
    if use_compile:
        torch._dynamo.reset()
        cs.append(Contender("torch.compile", fn=lrelu_fn(torch.compile(nn.LeakyReLU(SLOPE)))))
    return cs + ganfast_contenders("lrelu", device, backends, lambda: lrelu_fn(gnn.LeakyReLU(SLOPE)))


# ---- (3) the WGAN-GP discriminator step ------------------------------------------------------

def dcgan_convs(nc=3, ndf=64):
    return [nn.Conv2d(nc, ndf, 4, 2, 1), nn.Conv2d(ndf, ndf * 2, 4, 2, 1), nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1),
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1), nn.Conv2d(ndf * 8, 1, 4, 1, 0)]


def discriminator(convs, act_cls):
    """The DCGAN discriminator without BatchNorm on the given (shared) convolutions."""
    layers = []
    for i, conv in enumerate(convs):
        layers.append(conv)
        if i < len(convs) - 1:
            layers.append(act_cls(SLOPE))
    layers.append(nn.Flatten(0))  # (B, 1, 1, 1) -> (B,)
    return nn.Sequential(*layers)


def eager_d_loss(D, real, fake, eps):
    loss = D(fake).mean() - D(real).mean()
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    out = D(x_hat)
    (grad,) = torch.autograd.grad(out, x_hat, grad_outputs=torch.ones_like(out), create_graph=True)
    gp = ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
    return loss + GP_WEIGHT * gp


def ganfast_d_loss(D, real, fake, eps):
    return (L.discriminator_loss(D(real), D(fake), kind="wasserstein")
            + P.gradient_penalty(D, real, fake, kind="wgan-gp", weight=GP_WEIGHT, eps=eps))


def dstep_setup(device, seed=0):
    torch.manual_seed(seed)
    convs = [c.to(device) for c in dcgan_convs()]
    gen = torch.Generator().manual_seed(seed + 1)
    shape = (DSTEP_BATCH, 3, 64, 64)
    real = (torch.rand(shape, generator=gen) * 2 - 1).to(device)          # images in [-1, 1]
    fake = torch.tanh(torch.randn(shape, generator=gen)).to(device)       # G's tanh output, detached
    eps = torch.rand(DSTEP_BATCH, 1, 1, 1, generator=gen).to(device)
    return convs, real, fake, eps


def dstep_contenders(device, backends, use_compile, convs):
    d_eager = discriminator(convs, nn.LeakyReLU)
    d_ganfast = discriminator(convs, gnn.LeakyReLU)
    cs = [Contender("eager", fn=lambda r, f, e: eager_d_loss(d_eager, r, f, e))]
    if use_compile:
        torch._dynamo.reset()
        compiled = torch.compile(eager_d_loss)
        cs.append(Contender("torch.compile", fn=lambda r, f, e: compiled(d_eager, r, f, e)))
    cs += ganfast_contenders("dstep", device, backends,
                             lambda: (lambda r, f, e: ganfast_d_loss(d_ganfast, r, f, e)))
    return cs


def dstep_run(fn, params, real, fake, eps):
    loss = fn(real, fake, eps)
    loss.backward()
    out = [("loss", loss.detach())]
    for name, p in params:
        out.append((f"grad {name}", p.grad))
        p.grad = None
    return out


def dstep_step(fn, params, real, fake, eps):
    ps = [p for _, p in params]

    def step():
        fn(real, fake, eps).backward()
        for p in ps:
            p.grad = None
    return step


# ---- verification and header -----------------------------------------------------------------

def verify(c: Contender, run, expected: list, where: str, rtol: float, atol_scale: float) -> None:
    """Run once and compare with eager (Disagreement aborts); a failure to run goes in the table."""
    got = S.first_call(c, run, compile_error="torch.compile error")
    if got is None:
        return
    worst = H.compare(f"{c.name} [{where}]", got, expected, rtol, atol_scale)
    notes = [f"max |diff| / max|eager| over all checked tensors {worst:.1e}"]
    if c.note:  # torch.compile: its compilation time
        notes.insert(0, c.note)
    c.note = "; ".join(notes)


def print_header(device, args, backends, skipped, budget) -> dict:
    if device.type == "cpu":
        timing = ("timing: time.perf_counter_ns per step, time-boxed interleaved rounds, warm-up excluded, "
                  "GC off while timing; median / p20 / p80 in microseconds; per contender: "
                  + "; ".join(f"{s} {b['target_s']} s in {b['rounds']} rounds (>= {b['min_iters']} steps, "
                              f"{b['warmup_n']} warm-up)" for s, b in budget.items() if s in args.sections))
    else:
        timing = ("timing: triton.testing.do_bench (CUDA events per step, L2 flushed between steps), "
                  "warm-up excluded; median / p20 / p80 in microseconds")
    details = [timing, "torch.compile: default mode, compiled per shape (dynamo reset), compilation excluded; "
                       "TORCHINDUCTOR_COMPILE_THREADS=" + str(os.environ.get("TORCHINDUCTOR_COMPILE_THREADS"))]
    if "triton" in backends and device.type == "cpu":
        details.append("ganfast[triton] (Triton interpreter) timed in the penalty section at g 64x3x64x64 only, "
                       "3 steps after the others; the interpreter takes minutes per step at the other sizes")
    if args.quick and "dstep" in args.sections and "reference" in backends:
        details.append("--quick: ganfast[reference] left out of the D step (a D step takes seconds here)")
    missing = {s: missing_kernels("cpu", s, device) for s in SECTIONS}
    for s in args.sections:
        if missing[s] and device.type == "cpu":
            details.append(f"{s}: this build has no CPU kernel for "
                           f"{', '.join('ganfast::' + m for m in missing[s])}: ganfast[cpu] unavailable")
    details.append(f"checked before timing: every value and gradient agrees with eager (penalty, lrelu: rtol "
                   f"{RTOL}, atol {ATOL_SCALE} x max|eager|; D step: rtol {DSTEP_RTOL}, atol {DSTEP_ATOL_SCALE} "
                   "x max|eager| per tensor, float32 accumulation order), else abort")
    return S.header("ganfast penalty benchmark: fused gradient penalty, LeakyReLU double backward, WGAN-GP D step",
                    device, details, backends, skipped, sections=args.sections, quick=args.quick,
                    timing_budget=budget, cpu_kernels_missing=missing)


# ---- main ------------------------------------------------------------------------------------

def run_section(title, where, contenders, run, step_of, device, budget, rtol, atol_scale,
                rows, failures, table, notes, section):
    """Verify, time and tabulate one shape of one section."""
    eager = contenders[0]
    expected = run(eager.fn)
    for c in contenders[1:]:
        if c.error is None:
            verify(c, run, expected, where, rtol, atol_scale)
    timed = [c for c in contenders if c.error is None]
    steps = {c.name: step_of(c.fn) for c in timed}
    if device.type == "cuda":
        rep_ms = int(budget["target_s"] * 1e3)
        H.time_cuda(timed, steps, rep_ms=rep_ms, warmup_ms=max(10, rep_ms // 4))
    else:
        fast = [c for c in timed if not S.interpreted(c)]
        # Warm-up counted in steps (a D step takes about a second here): warmup_s = 0.
        H.time_cpu(fast, steps, budget["target_s"], 0.0, budget["min_iters"], budget["rounds"],
                   warmup_n=budget["warmup_n"])
        for c in timed:
            if S.interpreted(c):  # after the others, 3 steps, its verification call as warm-up
                S.time_few(c, steps[c.name], 3)
    base = eager.stats_us[0]
    compiled = next((c for c in timed if c.name == "torch.compile"), None)
    for c in contenders:
        row = {"section": section, "case": where, "contender": c.name, "device": device.type,
               "median_us": None, "p20_us": None, "p80_us": None, "speedup_vs_eager": None,
               "speedup_vs_compile": None, "iterations": c.iterations or None, "error": c.error, "note": c.note}
        if c.error is not None:
            table.append(f"| {title} | {c.name} | {c.error} | | | | |")
            if S.is_failure(c.error):
                failures.append(f"{c.name} [{where}]: {c.error}")
            if c.note:
                notes.append(f"{title}: {c.name}: {c.note}")
        else:
            med, p20, p80 = c.stats_us
            row.update(median_us=med, p20_us=p20, p80_us=p80, speedup_vs_eager=base / med)
            vs_compile = ""
            if compiled is not None:
                row["speedup_vs_compile"] = compiled.stats_us[0] / med
                vs_compile = f"{row['speedup_vs_compile']:.2f}x"
            table.append(f"| {title} | {c.name} | {H.fmt_us(med)} | {H.fmt_us(p20)} | {H.fmt_us(p80)} "
                         f"| {base / med:.2f}x | {vs_compile} |")
            if c.note:
                notes.append(f"{title}: {c.name}: {c.note}")
        rows.append(row)
    notes.append(f"{title}: timed steps: " + ", ".join(f"{c.name} {c.iterations}" for c in timed if c.iterations))
    return contenders


TABLE_HEAD = ["| case | contender | median us | p20 | p80 | speedup vs eager | vs torch.compile |",
              "|---|---|---:|---:|---:|---:|---:|"]


def main(args) -> int:
    device, backends, skipped = S.device_and_backends(args)
    q = args.quick
    budget = {
        "penalty": dict(target_s=0.25 if q else 1.5, rounds=5, min_iters=10 if q else 25, warmup_n=3),
        "lrelu": dict(target_s=0.25 if q else 1.5, rounds=5, min_iters=10 if q else 25, warmup_n=2),
        # The verification call has already run every D-step contender once: one more step of
        # warm-up (the harness's least) is enough.
        "dstep": dict(target_s=3.0 if q else 20.0, rounds=3 if q else 5, min_iters=3 if q else 10, warmup_n=1),
    }
    meta = print_header(device, args, backends, skipped, budget)
    use_compile = not args.no_compile
    rows, failures, targets = [], [], []

    def find_row(name, key):
        for r in rows:
            if r["contender"] == name and r["case"] == key:
                return r
        return None

    if "penalty" in args.sections:
        print("## penalty: ((||g[b]||_2 - 1)^2).mean() forward + backward")
        print()
        print("eager: `((g.flatten(1).norm(2, dim=1) - 1) ** 2).mean()`; ganfast: "
              "`ganfast.penalty.penalty_from_grad(g)` (kind wgan-gp); step: loss.backward(); g.grad = None")
        print()
        table, notes = list(TABLE_HEAD), []
        for shape in PENALTY_SHAPES:
            title = "g " + "x".join(map(str, shape))
            g = penalty_leaf(shape, device)
            # The interpreter takes ~15 s a step at the first shape here, minutes at the second.
            cs = penalty_contenders(device, backends, use_compile, interpreter_too=(shape == PENALTY_SHAPES[0]))
            run_section(title, title, cs, lambda fn: penalty_run(fn, g), lambda fn: penalty_step(fn, g),
                        device, budget["penalty"], RTOL, ATOL_SCALE, rows, failures, table, notes, "penalty")
            del g
        S.print_table(table, notes)

    if "lrelu" in args.sections:
        print("## LeakyReLU(0.2) double backward: x " + "x".join(map(str, LRELU_SHAPE)))
        print()
        print("step: y = act(x); (g,) = autograd.grad(y, x, grad_outputs=u, create_graph=True); "
              "g.norm().backward(); grads = None. eager: `torch.nn.LeakyReLU(0.2)`; ganfast: "
              "`ganfast.nn.LeakyReLU(0.2)`. u = ones: `autograd.grad(y.sum(), x, create_graph=True)` "
              "(x.grad is zero); u = leaf: u random and requires grad, as in D")
        print()
        table, notes = list(TABLE_HEAD), []
        for upstream in ("ones", "leaf"):
            title = f"u = {upstream}"
            x, u = lrelu_inputs(device, upstream)
            cs = lrelu_contenders(device, backends, use_compile)
            run_section(title, f"lrelu u={upstream}", cs, lambda fn: lrelu_run(fn, x, u),
                        lambda fn: lrelu_step(fn, x, u), device, budget["lrelu"], RTOL, ATOL_SCALE,
                        rows, failures, table, notes, "lrelu")
            del x, u
        S.print_table(table, notes)

    if "dstep" in args.sections:
        print(f"## WGAN-GP discriminator step: 64x64 DCGAN D (nc=3, ndf=64, no BatchNorm), batch {DSTEP_BATCH}")
        print()
        print("loss = E D(fake) - E D(real) + 10 * E(||grad_x D(x_hat)||_2 - 1)^2, x_hat = eps*real + "
              "(1-eps)*fake; loss.backward(); every parameter's .grad = None (no optimizer). eager: "
              "`torch.nn.LeakyReLU`, manual interpolation, `autograd.grad(create_graph=True)`, norm penalty; "
              "ganfast: the same convolutions (shared weights) with `ganfast.nn.LeakyReLU`, "
              "`discriminator_loss(kind='wasserstein')` + `gradient_penalty(D, real, fake, weight=10)`")
        print()
        table, notes = list(TABLE_HEAD), []
        convs, real, fake, eps = dstep_setup(device)
        params = [(f"conv{i}.{n}", p) for i, c in enumerate(convs) for n, p in c.named_parameters()]
        dstep_backends = [b for b in backends if not (args.quick and b == "reference")]
        cs = dstep_contenders(device, dstep_backends, use_compile, convs)
        title = f"D step B={DSTEP_BATCH}"
        run_section(title, "dstep", cs, lambda fn: dstep_run(fn, params, real, fake, eps),
                    lambda fn: dstep_step(fn, params, real, fake, eps), device, budget["dstep"],
                    DSTEP_RTOL, DSTEP_ATOL_SCALE, rows, failures, table, notes, "dstep")
        S.print_table(table, notes)

    # Targets (reported, not tuned for): the compiled backend of this device.
    main_backend = "cuda" if device.type == "cuda" else "cpu"
    name = f"ganfast[{main_backend}]"
    checks = []
    for shape in PENALTY_SHAPES:
        key = "g " + "x".join(map(str, shape))
        checks += [(key, "penalty", 2.0, "speedup_vs_eager", "eager"),
                   (key, "penalty", 1.2, "speedup_vs_compile", "torch.compile")]
    checks.append(("dstep", "dstep", 1.1, "speedup_vs_eager", "eager"))
    lines = []
    for key, section, goal, field_, against in checks:
        if section not in args.sections:
            continue
        r = find_row(name, key)
        if r is None or r["error"] is not None:
            why = r["error"] if r else "not run"
            verdict = f"NOT MEASURED ({why})"
        elif r[field_] is None:
            verdict = f"NOT MEASURED ({against} not timed)"
        else:
            verdict = f"{r[field_]:.2f}x: {'met' if r[field_] >= goal else 'NOT met'}"
        lines.append(f"- {key}: {name} >= {goal}x {against}: {verdict}")
        targets.append({"case": key, "contender": name, "target": goal, "against": against, "verdict": verdict})
    S.print_targets(lines)
    return S.finish(meta, args.json, {"meta": meta, "rows": rows, "targets": targets}, failures)


if __name__ == "__main__":
    S.run(main, _ARGS)
