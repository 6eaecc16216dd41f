"""Does an error raised in C++ reach Python as an exception on this machine, or crash the process?

On the first GPU machine (H200, torch 2.11.0+cu130, gcc 13.3; BENCHMARKS.md, "The first GPU run")
every test expecting an error from ganfast's C++ ops killed its pytest worker with a segmentation
fault. The same source built against torch 2.11 on the 2-core CPU machine raises cleanly (CPU-only
build, gcc 12). This probe bisects it in one pass, each case in its own process so a crash is a
result, not the end of the probe:
  - torch alone raising on cuda (is the machine's torch itself fine?);
  - a minimal extension of our own (one op, one TORCH_CHECK_VALUE), built there the way setup.py
    builds ganfast (-O3 -fopenmp): does any extension's exception crash?
  - ganfast's ops raising on cpu and on cuda tensors, through the Autograd kernel and below it,
    and the fourth derivative that must raise inside the autograd engine;
  - the crashing cases again with TORCH_DISABLE_ADDR2LINE=1 and with TORCH_SHOW_CPP_STACKTRACES=0
    (c10::Error captures a backtrace when thrown), and under cuda-gdb for the C++ frames.
Run from the checkout's root with ganfast built in place: `python3 .ci/gpu-error-probe.py`.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

FOURTH_DERIVATIVE = """\
x = torch.randn(2, 3, device='DEVICE', dtype=torch.float64, requires_grad=True)
out = ops.bias_act(x, None, 1, 'elu', 0.0, 1.0, None)
for _ in range(4):  # the fourth must raise: bias_act promises three
    (out,) = torch.autograd.grad(out.sum(), x, create_graph=True)"""
PRELUDE = "import torch, ganfast\nfrom ganfast import ops\n"
CASES = {
    "torch-cuda": "torch.nn.functional.binary_cross_entropy_with_logits(torch.zeros(3, device='cuda'), "
                  "torch.zeros(4, device='cuda'))",
    "mini-extension-cpu": "torch.ops.probe_mini.boom(torch.zeros(3))",
    "ganfast-cpu": "ops.bce_with_logits(torch.zeros(3), torch.zeros(4))",
    "ganfast-cuda": "ops.bce_with_logits(torch.zeros(3, device='cuda'), torch.zeros(4, device='cuda'))",
    "ganfast-cuda-below-autograd": "with torch._C._AutoDispatchBelowAutograd():\n"
                                   "    ops.bce_with_logits(torch.zeros(3, device='cuda'), torch.zeros(4, device='cuda'))",
    "ganfast-fourth-derivative-cpu": FOURTH_DERIVATIVE.replace("DEVICE", "cpu"),
    "ganfast-fourth-derivative-cuda": FOURTH_DERIVATIVE.replace("DEVICE", "cuda"),
}

MINI_SOURCE = r"""
#include <torch/library.h>
#include <ATen/ATen.h>
at::Tensor boom(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() == 5, "boom: x must be 5-d, got ", x.dim());
  return x.clone();
}
TORCH_LIBRARY(probe_mini, m) { m.def("boom(Tensor x) -> Tensor"); }
TORCH_LIBRARY_IMPL(probe_mini, CPU, m) { m.impl("boom", &boom); }
"""


def build_mini(workdir: str) -> str:
    """The minimal extension's .so (built with torch's cpp_extension, as ganfast's CPU sources are)."""
    from torch.utils.cpp_extension import load_inline
    load_inline("probe_mini", cpp_sources=[MINI_SOURCE], extra_cflags=["-O3", "-fopenmp"],
                extra_ldflags=["-fopenmp"], is_python_module=False, build_directory=workdir)
    return os.path.join(workdir, "probe_mini.so")


def program(name: str, mini_so: str) -> str:
    body = CASES[name]
    load = f"torch.ops.load_library({mini_so!r})\n" if name.startswith("mini") else ""
    return (PRELUDE + load + "try:\n" + textwrap.indent(body, "    ") +
            "\n    print('no error raised')\nexcept Exception as e:\n"
            "    print('raised', type(e).__name__, str(e).splitlines()[0][:100])\n")


def run(name: str, mini_so: str, env_extra=None, timeout=120):
    env = {**os.environ, **(env_extra or {})}
    p = subprocess.run([sys.executable, "-X", "faulthandler", "-c", program(name, mini_so)],
                       capture_output=True, text=True, env=env, timeout=timeout)
    verdict = "CRASH (signal %d)" % -p.returncode if p.returncode < 0 else (p.stdout.strip() or p.stderr.strip()[-200:])
    return p.returncode, verdict


def main() -> int:
    work = tempfile.mkdtemp(prefix="probe_mini_")
    try:
        mini_so = build_mini(work)
    except Exception as e:  # the probe goes on without the minimal extension
        print(f"minimal extension: build failed: {e}")
        mini_so = ""
    crashed = []
    for name in CASES:
        if name.startswith("mini") and not mini_so:
            continue
        rc, verdict = run(name, mini_so)
        print(f"{name:34s} {verdict}")
        if rc < 0:
            crashed.append(name)
    for name in crashed:
        for env in ({"TORCH_DISABLE_ADDR2LINE": "1"}, {"TORCH_SHOW_CPP_STACKTRACES": "0"}):
            rc, verdict = run(name, mini_so, env)
            print(f"{name:34s} {' '.join(f'{k}={v}' for k, v in env.items())}: {verdict}")
    gdb = shutil.which("cuda-gdb")
    if crashed and gdb:
        name = crashed[-1]
        print(f"\n== cuda-gdb backtrace of {name}")
        p = subprocess.run([gdb, "-batch", "-ex", "set pagination off", "-ex", "run", "-ex", "bt 40",
                            "--args", sys.executable, "-c", program(name, mini_so)],
                           capture_output=True, text=True, timeout=300)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("#") or "signal" in ln.lower()]
        print("\n".join(lines[:60]))
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
