"""The benchmark suite's cases: every op family and eight whole training steps (DCGAN
non-saturating, WGAN-GP and lazy R1, the MLP WGAN-GP step, InfoGAN, CycleGAN, and SAGAN's D step and
G step), each as eager
PyTorch writes it, as torch.compile runs it, and with ganfast. `ganfast bench` runs them
(ganfast/bench/suite.py); `pytest benchmarks --benchmark-only` times the op-family cases with
pytest-benchmark (benchmarks/test_micro.py).

A case's `make_step(impl)` builds, from a fixed seed, the state one implementation needs (its
own copies of the inputs, models and optimizers, so no implementation sees another's updates)
and returns a step: a zero-argument function doing one whole iteration (forward, backward,
optimizer step where there is one, gradients cleared) and returning [(what, tensor)] for the
correctness gate. Implementations:

    eager     torch.nn / torch.nn.functional, as a training script writes it
    compile   the same code with torch.compile applied where a user would apply it (the loss
              function or the modules); compilation happens in the first call, outside the clock
    ganfast   ganfast.losses / ganfast.penalty / ganfast.nn (run under each ganfast backend)

The first step of every implementation starts from identical state, so their outputs must
agree with eager's within the case's float32 tolerance before anything is timed.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import ganfast.losses as L
import ganfast.nn as gnn
import ganfast.ops as gops
import ganfast.penalty as P
import ganfast.steps as S

Outputs = List[Tuple[str, Tensor]]
IMPLS = ("eager", "compile", "ganfast")
SLOPE = 0.2        # LeakyReLU slope of every discriminator (DCGAN)
GP_WEIGHT = 10.0   # WGAN-GP's lambda
R1_GAMMA, R1_EVERY = 1.0, 16   # lazy R1 (StyleGAN2): gamma / 2 * E||grad D(x)||^2 every 16 D steps, scaled by 16
R1_WEIGHT = R1_GAMMA / 2 * R1_EVERY


@dataclass
class Case:
    family: str                                  # losses | cycle_loss | orthogonal_regularization |
                                                 # penalty | bias_act | block | instance_norm_act |
                                                 # spectral_norm | step
    name: str                                    # what is measured, for the tables
    size: str                                    # the shapes, for the tables
    detail: str                                  # what one step does (Markdown, for BENCHMARKS.md)
    make_step: Callable[..., Callable[[], Outputs]]   # (impl, dtype=torch.float32, check=False) -> step
    rtol: float = 1e-5
    atol_scale: float = 1e-6                     # atol = atol_scale * max|eager output|
    # Gate against a float64 eager run instead (harness.check_against_float64): for cases whose
    # float32 results lose digits through cancellation (BatchNorm's backward through a deep
    # generator), where any fixed tolerance either fails eager's own twin or hides a wrong formula.
    check64: bool = False
    # Verify with a separate step built with check=True (training steps: optimizers with lr=0, so
    # every output of the first step is computed from the same parameters in every implementation;
    # with a real lr Adam's first update, lr * sign(grad), turns float32 rounding in a gradient
    # near zero into a parameter change of 2 lr, which the G step's loss then shows).
    separate_check: bool = False
    # check64's bar: a contender may deviate from float64 by this x eager float32's largest deviation
    # in the step (+ harness.DEV_FLOOR). Raise it only for a step measured to amplify float32
    # rounding beyond 10x what eager happens to show (the InfoGAN step: see infogan_step_case).
    check64_factor: float = 10.0

    @property
    def key(self) -> str:
        return f"{self.family}/{self.name} [{self.size}]"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _clear(tensors) -> None:
    for t in tensors:
        t.grad = None


def _grads(prefix: str, params) -> Outputs:
    return [(f"{prefix} grad {i}", p.grad) for i, p in enumerate(params)]


# ---- losses: D loss + G loss, forward and backward -------------------------------------------------

def eager_nonsaturating(real, fake, fake_g):
    """DCGAN as the PyTorch examples write it: BCE-with-logits against ones / zeros."""
    loss_d = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
              + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    return loss_d, F.binary_cross_entropy_with_logits(fake_g, torch.ones_like(fake_g))


def ganfast_nonsaturating(real, fake, fake_g):
    return L.discriminator_loss(real, fake, "nonsaturating"), L.generator_loss(fake_g, "nonsaturating")


def losses_case(batch: int, device) -> Case:
    def make_step(impl, **_):
        g = _gen(batch)
        leaves = [(torch.randn(batch, 1, generator=g) * 2 + s).to(device).requires_grad_() for s in (1, -1, -1)]
        fn = {"eager": eager_nonsaturating, "ganfast": ganfast_nonsaturating}.get(impl)
        fn = fn or torch.compile(eager_nonsaturating)

        def step():
            loss_d, loss_g = fn(*leaves)
            torch.autograd.backward([loss_d, loss_g])
            out = [("loss_d", loss_d.detach()), ("loss_g", loss_g.detach())] + _grads("logits", leaves)
            _clear(leaves)
            return out
        return step

    return Case("losses", "non-saturating D + G loss", f"B={batch}",
                "`loss_d, loss_g` from (B, 1) logits; `backward([loss_d, loss_g])`", make_step)


# ---- InfoGAN's mutual-information loss (Q's categorical and continuous heads), forward and backward ---

def eager_info_loss(cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd):
    """L_I as an InfoGAN script writes it: cross-entropy plus the Gaussian NLL (no constant)."""
    return (F.cross_entropy(cat_logits, cat_codes)
            + (cont_logstd + 0.5 * ((cont_codes - cont_mean) * torch.exp(-cont_logstd)) ** 2).sum(1).mean())


def ganfast_info_loss(cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd):
    return L.info_loss(cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd)


def info_loss_case(batch: int, classes: int, codes: int, device) -> Case:
    def make_step(impl, **_):
        g = _gen(batch * 1000 + classes)
        logits = (torch.randn(batch, classes, generator=g) * 2).to(device).requires_grad_()
        labels = torch.randint(0, classes, (batch,), generator=g).to(device)
        mean = torch.randn(batch, codes, generator=g).to(device).requires_grad_()
        logstd = (torch.randn(batch, codes, generator=g) * 0.5).to(device).requires_grad_()
        sampled = torch.randn(batch, codes, generator=g).to(device)  # the codes G was given
        fn = {"eager": eager_info_loss, "ganfast": ganfast_info_loss}.get(impl)
        fn = fn or torch.compile(eager_info_loss)
        leaves = [logits, mean, logstd]

        def step():
            loss = fn(logits, labels, mean, sampled, logstd)
            loss.backward()
            out = [("loss", loss.detach())] + _grads("Q heads", leaves)
            _clear(leaves)
            return out
        return step

    return Case("losses", "InfoGAN info_loss", f"B={batch}, K={classes}, J={codes}",
                "`L_I` from Q's (B, K) logits with int64 codes and (B, J) mean / logstd; `backward()`", make_step)


# ---- cycle_loss: CycleGAN's cycle-consistency L1, both directions, forward and backward -------------

CYCLE_WEIGHT = 10.0  # CycleGAN's lambda_cyc


def eager_cycle(rec, orig):
    """CycleGAN as its reference code writes it: lambda * (L1(F(G(x)), x) + L1(G(F(y)), y))."""
    return CYCLE_WEIGHT * (F.l1_loss(rec[0], orig[0]) + F.l1_loss(rec[1], orig[1]))


def ganfast_cycle(rec, orig):
    return L.cycle_loss(rec, orig, CYCLE_WEIGHT)


def cycle_case(shape, device) -> Case:
    def make_step(impl, **_):
        gen = _gen(sum(shape) + 7)
        # the reconstructions require grad (they come from the generators); the originals are real
        # images
        rec = [torch.randn(shape, generator=gen).to(device).requires_grad_() for _ in range(2)]
        orig = [torch.randn(shape, generator=gen).to(device) for _ in range(2)]
        fn = {"eager": eager_cycle, "ganfast": ganfast_cycle}.get(impl) or torch.compile(eager_cycle)

        def step():
            loss = fn(rec, orig)
            loss.backward()
            out = [("loss", loss.detach())] + _grads("reconstructed", rec)
            _clear(rec)
            return out
        return step

    return Case("cycle_loss", "CycleGAN cycle-consistency L1 (2 pairs)", "2 x " + "x".join(map(str, shape)),
                "`10 * (F.l1_loss(F(G(x)), x) + F.l1_loss(G(F(y)), y))` and its backward", make_step)


# ---- penalty: the gradient penalty from D's input gradient, forward and backward --------------------

def eager_penalty(g):
    return ((g.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def penalty_case(shape, device) -> Case:
    def make_step(impl, **_):
        gen = _gen(sum(shape))
        # D's input gradients at interpolates: per-sample norms spread around 1
        g = torch.randn(shape, generator=gen)
        scale = torch.rand(shape[0], generator=gen) * 1.5 + 0.25
        g = (g * (scale / g[0].numel() ** 0.5).view(-1, *([1] * (len(shape) - 1)))).to(device).requires_grad_()
        fn = {"eager": eager_penalty, "ganfast": P.penalty_from_grad}.get(impl) or torch.compile(eager_penalty)

        def step():
            loss = fn(g)
            loss.backward()
            out = [("penalty", loss.detach()), ("grad", g.grad)]
            g.grad = None
            return out
        return step

    return Case("penalty", "WGAN-GP penalty from the gradient", "x".join(map(str, shape)),
                "`((g.flatten(1).norm(dim=1) - 1)**2).mean()` and its backward", make_step)


# ---- bias + activation ------------------------------------------------------------------------------

def bias_act_case(shape, device) -> Case:
    c = shape[1]

    def eager(x, b):
        return F.leaky_relu(x + b.view(1, -1, 1, 1), SLOPE)

    def ganfast_fn(x, b):
        return gops.bias_act(x, b, 1, "lrelu", SLOPE, 1.0, None)

    def make_step(impl, **_):
        gen = _gen(1)
        x = torch.randn(shape, generator=gen).to(device).requires_grad_()
        b = torch.randn(c, generator=gen).to(device).requires_grad_()
        u = torch.randn(shape, generator=gen).to(device)
        fn = {"eager": eager, "ganfast": ganfast_fn}.get(impl) or torch.compile(eager)

        def step():
            y = fn(x, b)
            y.backward(u)
            out = [("y", y.detach()), ("grad x", x.grad), ("grad bias", b.grad)]
            _clear((x, b))
            return out
        return step

    return Case("bias_act", "bias + LeakyReLU(0.2)", "x".join(map(str, shape)),
                "`leaky_relu(x + b)` forward, backward with a random upstream gradient", make_step)


def lrelu_double_backward_case(shape, device) -> Case:
    """One critic layer's share of the gradient penalty: the activation's gradient with
    create_graph, the penalty on it, and the backward through both (x is the layer's input, u the
    gradient arriving from the layers above)."""
    def make_step(impl, **_):
        gen = _gen(2)
        x = torch.randn(shape, generator=gen).to(device).requires_grad_()
        u = torch.randn(shape, generator=gen).to(device).requires_grad_()
        if impl == "ganfast":
            act = gnn.LeakyReLU(SLOPE)

            def fn(x, u):
                with gops.lean_double_backward():   # as ganfast.penalty(lean=True) and the engine
                    (g,) = torch.autograd.grad(act(x), x, grad_outputs=u, create_graph=True)
                return g, P.penalty_from_grad(g)
        else:
            act = nn.LeakyReLU(SLOPE)
            if impl == "compile":  # the module, as a user would (autograd.grad itself does not compile)
                act = torch.compile(act)

            def fn(x, u):
                (g,) = torch.autograd.grad(act(x), x, grad_outputs=u, create_graph=True)
                return g, eager_penalty(g)

        def step():
            g, penalty = fn(x, u)
            penalty.backward()
            out = [("grad x", g.detach()), ("penalty", penalty.detach()), ("grad u", u.grad)]
            _clear((x, u))
            return out
        return step

    return Case("bias_act", "LeakyReLU(0.2) double backward", "x".join(map(str, shape)),
                "`g = grad(act(x), x, u, create_graph=True)`; the WGAN-GP penalty of g, backward (one critic "
                "layer's part of the penalty's path; ganfast: lean, `penalty_from_grad`)", make_step,
                rtol=1e-4, atol_scale=1e-5)


# ---- generator block and BatchNorm + activation --------------------------------------------------------

def batch_norm_act_case(shape, device) -> Case:
    c = shape[1]

    def make_step(impl, **_):
        torch.manual_seed(3)
        bn = nn.BatchNorm2d(c)
        with torch.no_grad():
            bn.weight.normal_(1.0, 0.2), bn.bias.normal_(0.0, 0.2)
        bn = bn.to(device)
        gen = _gen(3)
        x = torch.randn(shape, generator=gen).to(device).requires_grad_()
        u = torch.randn(shape, generator=gen).to(device)
        if impl == "ganfast":
            def fn(x):
                return gops.batch_norm_act(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, True,
                                           bn.momentum, bn.eps, "relu")
        else:
            def fn(x):
                return F.relu(bn(x))
            if impl == "compile":
                fn = torch.compile(fn)

        def step():
            y = fn(x)
            y.backward(u)
            out = [("y", y.detach()), ("grad x", x.grad), ("grad weight", bn.weight.grad),
                   ("grad bias", bn.bias.grad)]
            _clear((x, bn.weight, bn.bias))
            return out
        return step

    return Case("block", "BatchNorm2d + ReLU (training)", "x".join(map(str, shape)),
                "batch statistics, normalise, affine, ReLU; backward with a random upstream gradient; "
                "running statistics updated", make_step, rtol=1e-4, atol_scale=1e-5)


def conditional_batch_norm_act_case(shape, device) -> Case:
    """BigGAN's / SAGAN's conditional BatchNorm + ReLU: a gain and a bias per sample and channel (N, C)."""
    n, c = shape[:2]

    def make_step(impl, **_):
        gen = _gen(4)
        x = torch.randn(shape, generator=gen).to(device).requires_grad_()
        u = torch.randn(shape, generator=gen).to(device)
        # what ConditionalBatchNorm2d's Linears give: 1 + gain(cond), bias(cond)
        gain = (1.0 + 0.2 * torch.randn((n, c), generator=gen)).to(device).requires_grad_()
        bias = (0.2 * torch.randn((n, c), generator=gen)).to(device).requires_grad_()
        rm, rv = torch.zeros(c, device=device), torch.ones(c, device=device)
        if impl == "ganfast":
            def fn(x, gain, bias):
                return gops.batch_norm_act(x, gain, bias, rm, rv, True, 0.1, 1e-5, "relu")
        else:
            def fn(x, gain, bias):
                z = F.batch_norm(x, rm, rv, None, None, True, 0.1, 1e-5)
                return F.relu(z * gain[:, :, None, None] + bias[:, :, None, None])
            if impl == "compile":
                fn = torch.compile(fn)

        def step():
            y = fn(x, gain, bias)
            y.backward(u)
            out = [("y", y.detach()), ("grad x", x.grad), ("grad gain", gain.grad), ("grad bias", bias.grad)]
            _clear((x, gain, bias))
            return out
        return step

    return Case("block", "conditional BatchNorm2d + ReLU (training)", "x".join(map(str, shape)),
                "batch statistics, normalise, per-sample affine `* gain[n, c] + bias[n, c]` ((N, C) operands, "
                "BigGAN's conditional BatchNorm), ReLU; backward with a random upstream gradient (gradients of x "
                "and of the (N, C) gain and bias); running statistics updated. Eager: `F.batch_norm` without "
                "affine, the broadcast affine, `F.relu`; ganfast: `batch_norm_act` with (N, C) weight / bias",
                make_step, rtol=1e-4, atol_scale=1e-5)


# ---- instance_norm_act: CycleGAN's InstanceNorm + ReLU, forward and backward ---------------------------

def instance_norm_act_case(shape, device) -> Case:
    c = shape[1]

    def make_step(impl, **_):
        # CycleGAN's norm layer: nn.InstanceNorm2d(C) (affine=False, no running statistics) + ReLU
        gen = _gen(5)
        x = torch.randn(shape, generator=gen).to(device).requires_grad_()
        u = torch.randn(shape, generator=gen).to(device)
        if impl == "ganfast":
            fn = gnn.InstanceNormAct2d(c, act="relu").to(device)
        else:
            fn = nn.Sequential(nn.InstanceNorm2d(c), nn.ReLU()).to(device)
            if impl == "compile":
                fn = torch.compile(fn)

        def step():
            y = fn(x)
            y.backward(u)
            out = [("y", y.detach()), ("grad x", x.grad)]
            _clear((x,))
            return out
        return step

    return Case("instance_norm_act", "InstanceNorm2d + ReLU", "x".join(map(str, shape)),
                "per-(sample, channel) statistics, normalise, ReLU (CycleGAN's generator layer); backward with a "
                "random upstream gradient", make_step, rtol=1e-4, atol_scale=1e-5)


class TorchDCGANGenerator(nn.Module):
    """The DCGAN generator as PyTorch's examples write it (dcgan/main.py), for 32 or 64 pixels."""

    def __init__(self, nz=128, ngf=64, nc=3, image_size=64):
        super().__init__()
        stages = {32: 3, 64: 4}[image_size]
        mult = 2 ** (stages - 1)
        layers = [nn.ConvTranspose2d(nz, ngf * mult, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * mult), nn.ReLU(True)]
        for _ in range(stages - 1):
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ngf * mult // 2), nn.ReLU(True)]
            mult //= 2
        layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z):
        return self.main(z)


class TorchDCGANDiscriminator(nn.Module):
    """The DCGAN discriminator of PyTorch's examples, returning logits (no Sigmoid: the loss is
    BCE-with-logits); norm=False drops its BatchNorm, as WGAN-GP requires."""

    def __init__(self, nc=3, ndf=64, image_size=64, norm=True):
        super().__init__()
        stages = {32: 3, 64: 4}[image_size]
        layers = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=not norm), nn.LeakyReLU(SLOPE, inplace=True)]
        mult = 1
        for _ in range(stages - 1):
            layers.append(nn.Conv2d(ndf * mult, ndf * mult * 2, 4, 2, 1, bias=not norm))
            if norm:
                layers.append(nn.BatchNorm2d(ndf * mult * 2))
            layers.append(nn.LeakyReLU(SLOPE, inplace=True))
            mult *= 2
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 0, bias=not norm))
        self.main = nn.Sequential(*layers)

    def forward(self, x):
        return self.main(x).flatten()


def _dcgan_init(m):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


@functools.lru_cache(maxsize=None)
def _dcgan_state(image_size, ngf, ndf, nz, d_norm):
    """The eager models' initial state (shared by every implementation of a case)."""
    torch.manual_seed(4)
    G = TorchDCGANGenerator(nz, ngf, 3, image_size).apply(_dcgan_init)
    D = TorchDCGANDiscriminator(3, ndf, image_size, norm=d_norm).apply(_dcgan_init)
    return G.state_dict(), D.state_dict()


def _dcgan_models(impl, device, image_size, ngf, ndf, nz, d_norm, dtype=torch.float32):
    g_state, d_state = _dcgan_state(image_size, ngf, ndf, nz, d_norm)
    G = TorchDCGANGenerator(nz, ngf, 3, image_size)
    D = TorchDCGANDiscriminator(3, ndf, image_size, norm=d_norm)
    G.load_state_dict(g_state)
    D.load_state_dict(d_state)
    G, D = G.to(device, dtype), D.to(device, dtype)
    if impl == "ganfast":
        G, D = gnn.fuse(G), gnn.fuse(D)
    return G, D


def generator_case(batch, image_size, ngf, device) -> Case:
    nz = 128

    def make_step(impl, dtype=torch.float32, check=False):
        G, _ = _dcgan_models("ganfast" if impl == "ganfast" else "eager", device, image_size, ngf, ngf, nz, True,
                             dtype)
        if impl == "compile":
            G = torch.compile(G)
        params = list(G.parameters())
        gen = _gen(5)
        z = torch.randn(batch, nz, 1, 1, generator=gen).to(device, dtype)
        u = torch.randn(batch, 3, image_size, image_size, generator=gen).to(device, dtype)

        def step():
            x = G(z)
            x.backward(u)
            out = [("images", x.detach())] + _grads("G", params)
            _clear(params)
            return out
        return step

    return Case("block", "DCGAN generator forward + backward", f"B={batch}, {image_size}x{image_size}, ngf={ngf}",
                "ConvTranspose2d + BatchNorm2d + ReLU blocks, tanh output; backward with a random upstream "
                "gradient (ganfast: `ganfast.nn.fuse(G)`)", make_step, check64=True)


# ---- whole training steps ------------------------------------------------------------------------------

def _adam(params, lr, betas):
    """Adam as one fused op (CPU and CUDA alike): the same optimizer for every implementation,
    and a step whose op counts show the models and losses rather than a per-parameter loop."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)


def _gan_step(G, D, opt_g, opt_d, real, z, d_loss, g_loss, check=False, g_step_d_grads=True):
    """One D step then one G step (the fake batch reused for G, as PyTorch's DCGAN example).
    check=True: D's gradients are copied right after the D step, before the G step's backward
    adds to them (that sum cancels: the same fakes labelled fake, then real).
    g_step_d_grads=False: the G step's backward computes G's gradients only, as ganfast's engine
    does (and StyleGAN2-ADA's and BigGAN-PyTorch's toggle of D's requires_grad); True: also D's,
    which PyTorch's DCGAN example computes and the next D step's zero_grad discards."""
    g_params, d_params = list(G.parameters()), list(D.parameters())

    def step():
        opt_d.zero_grad(set_to_none=True)
        fake = G(z)
        loss_d = d_loss(D, real, fake.detach())
        loss_d.backward()
        d_grads = [(w, g.clone() if check and g is not None else g) for w, g in _grads("D", d_params)]
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        loss_g = g_loss(D(fake))
        torch.autograd.backward(loss_g, inputs=None if g_step_d_grads else g_params)
        opt_g.step()
        return [("loss_d", loss_d.detach()), ("loss_g", loss_g.detach())] + _grads("G", g_params) + d_grads
    return step


def eager_bce_d_loss(D, real, fake):
    r, f = D(real), D(fake)
    return (F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
            + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f)))


def eager_bce_g_loss(fake_logits):
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def ganfast_bce_d_loss(D, real, fake):
    return L.discriminator_loss(D(real), D(fake), "nonsaturating")


def ganfast_bce_g_loss(fake_logits):
    return L.generator_loss(fake_logits, "nonsaturating")


def eager_wgan_gp_d_loss(eps):
    def d_loss(D, real, fake):
        loss = D(fake).mean() - D(real).mean()
        x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
        out = D(x_hat)
        (grad,) = torch.autograd.grad(out, x_hat, grad_outputs=torch.ones_like(out), create_graph=True)
        return loss + GP_WEIGHT * ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
    return d_loss


def ganfast_wgan_gp_d_loss(eps):
    """The engine's D loss (ganfast.steps): real and fake in one pass (D has no BatchNorm), the
    interpolates' pass recorded lean."""
    def d_loss(D, real, fake):
        return S.discriminator_step_loss(D, real, fake, "wasserstein", gp_weight=GP_WEIGHT, eps=eps).total
    return d_loss


def eager_r1_d_loss(D, real, fake):
    """Non-saturating loss + R1 on the real samples, the real pass shared between the loss and the
    penalty (as Mescheder et al.'s GAN-stability code and StyleGAN2-ADA's Dboth phase write it)."""
    x = real.detach().requires_grad_(True)
    r, f = D(x), D(fake)
    loss = (F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
            + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f)))
    (grad,) = torch.autograd.grad(r, x, grad_outputs=torch.ones_like(r), create_graph=True)
    return loss + R1_WEIGHT * grad.flatten(1).pow(2).sum(1).mean()


def ganfast_r1_d_loss(D, real, fake):
    return S.discriminator_step_loss(D, real, fake, "nonsaturating", r1_weight=R1_WEIGHT).total


def eager_wgan_g_loss(fake_logits):
    return -fake_logits.mean()


def ganfast_wgan_g_loss(fake_logits):
    return L.generator_loss(fake_logits, "wasserstein")


def dcgan_step_case(objective, batch, image_size, width, device) -> Case:
    nz = 128
    wgan, r1 = objective == "wgan-gp", objective == "r1"

    def make_step(impl, dtype=torch.float32, check=False):
        G, D = _dcgan_models(impl, device, image_size, width, width, nz, not (wgan or r1), dtype)
        if impl == "compile":
            G, D = torch.compile(G), torch.compile(D)
        gen = _gen(6)
        real = (torch.rand(batch, 3, image_size, image_size, generator=gen) * 2 - 1).to(device, dtype)
        z = torch.randn(batch, nz, 1, 1, generator=gen).to(device, dtype)
        eps = torch.rand(batch, 1, 1, 1, generator=gen).to(device, dtype)
        if wgan:
            betas, lr = (0.0, 0.9), 1e-4
            d_loss = ganfast_wgan_gp_d_loss(eps) if impl == "ganfast" else eager_wgan_gp_d_loss(eps)
            g_loss = ganfast_wgan_g_loss if impl == "ganfast" else eager_wgan_g_loss
        else:
            betas, lr = (0.5, 0.999), 2e-4
            d_loss = ganfast_bce_d_loss if impl == "ganfast" else eager_bce_d_loss
            if r1:
                betas, lr = (0.0, 0.99), 2e-3  # StyleGAN2's Adam
                d_loss = ganfast_r1_d_loss if impl == "ganfast" else eager_r1_d_loss
            g_loss = ganfast_bce_g_loss if impl == "ganfast" else eager_bce_g_loss
        lr = 0.0 if check else lr
        return _gan_step(G, D, _adam(G.parameters(), lr, betas), _adam(D.parameters(), lr, betas), real, z,
                         d_loss, g_loss, check, g_step_d_grads=impl != "ganfast" or not (wgan or r1))

    if wgan:
        what, d = "WGAN-GP", "no BatchNorm in D, penalty weight 10, Adam(1e-4, (0, 0.9))"
        how = ("`ganfast.steps.discriminator_step_loss` (real and fake in one pass through D, the interpolates' "
               "pass recorded lean), the G step computing G's gradients only")
    elif r1:
        what, d = "lazy R1", (f"non-saturating loss + R1 on this step (gamma {R1_GAMMA} / 2, every {R1_EVERY} "
                              f"steps: weight {R1_WEIGHT:g}), no BatchNorm in D, Adam(2e-3, (0, 0.99)); eager "
                              "shares the real pass between loss and R1")
        how = ("`ganfast.steps.discriminator_step_loss` (the real pass shared, recorded lean), the G step "
               "computing G's gradients only")
    else:
        what, d = "non-saturating", "BatchNorm in G and D, Adam(2e-4, (0.5, 0.999))"
        how = "`ganfast.losses`"
    return Case("step", f"DCGAN {what} step", f"B={batch}, {image_size}x{image_size}, width {width}",
                f"one D step + one G step with Adam ({d}); ganfast: `fuse(G)`, `fuse(D)`, {how}",
                make_step, check64=True, separate_check=True)


class _TorchMLP(nn.Module):
    """The engine's MLP (ganfast/train/models.py) written with torch.nn layers only."""

    def __init__(self, d_in, d_out, width, depth, act):
        super().__init__()
        layers, d = [], d_in
        for _ in range(depth):
            layers += [nn.Linear(d, width), act()]
            d = width
        layers.append(nn.Linear(d, d_out))
        self.net = nn.Sequential(*layers)


def mlp_step_case(batch, width, device) -> Case:
    from ganfast.train.data import ring8
    from ganfast.train.models import MLPDiscriminator, MLPGenerator

    depth, z_dim = 3, 2

    def make_step(impl, check=False, **_):
        torch.manual_seed(7)
        G = MLPGenerator(z_dim, 2, width, depth)
        D = MLPDiscriminator(2, width, depth)
        if impl != "ganfast":  # the same weights, torch.nn.LeakyReLU in D
            twin = _TorchMLP(2, 1, width, depth, lambda: nn.LeakyReLU(SLOPE))
            twin.load_state_dict({k: v for k, v in D.state_dict().items() if k.startswith("net.")})
            D.net = twin.net
        G, D = G.to(device), D.to(device)
        if impl == "compile":
            G, D = torch.compile(G), torch.compile(D)
        gen = _gen(8)
        real = ring8().sample(batch, gen).to(device)
        z = torch.randn(batch, z_dim, generator=gen).to(device)
        eps = torch.rand(batch, 1, generator=gen).to(device)
        d_loss = ganfast_wgan_gp_d_loss(eps) if impl == "ganfast" else eager_wgan_gp_d_loss(eps)
        g_loss = ganfast_wgan_g_loss if impl == "ganfast" else eager_wgan_g_loss
        lr = 0.0 if check else 1e-4
        return _gan_step(G, D, _adam(G.parameters(), lr, (0.0, 0.9)), _adam(D.parameters(), lr, (0.0, 0.9)),
                         real, z, d_loss, g_loss, check, g_step_d_grads=impl != "ganfast")

    return Case("step", "MLP WGAN-GP step on ring8", f"B={batch}, width {width}, depth {depth}",
                "the engine's 2-D MLPs; one D step (Wasserstein loss + gradient penalty) + one G step, "
                "Adam(1e-4, (0, 0.9)); ganfast: `ganfast.nn.LeakyReLU`, `ganfast.steps.discriminator_step_loss` "
                "(one pass over real and fake, the interpolates' pass lean), the G step computing G's gradients "
                "only", make_step, rtol=1e-4, atol_scale=1e-4, separate_check=True)


# ---- InfoGAN: the engine's step (ganfast/train/trainer.py, self.info) ----------------------------------

INFO_NZ, INFO_CAT, INFO_CONT = 62, 10, 2          # the engine's InfoGAN latent (config.resolve)
INFO_CAT_WEIGHT, INFO_CONT_WEIGHT = 1.0, 0.1      # TrainConfig.info_weight, info_cont_weight


def torch_layers(block: nn.Module) -> List[nn.Module]:
    """A ganfast.nn LinearBlock / Conv2dBlock / ConvTransposeBlock as the torch.nn layers it fuses
    (Linear or the convolution, [BatchNorm], activation), holding copies of its parameters and
    buffers."""
    layer = block.linear if isinstance(block, gnn.LinearBlock) else block.conv
    layers = [copy.deepcopy(layer)]
    if block.bn is not None:
        layers.append(copy.deepcopy(block.bn))
    act = {"relu": nn.ReLU, "tanh": nn.Tanh, "lrelu": lambda: nn.LeakyReLU(block.alpha)}.get(block.act)
    return layers + ([act()] if act is not None else [])


class TorchInfoGANGenerator(nn.Module):
    """ganfast.nn.InfoGANGenerator's architecture in torch.nn layers, with that generator's weights."""

    def __init__(self, g: gnn.InfoGANGenerator):
        super().__init__()
        self.n_cat, self.ngf, self.start = g.n_cat, g.ngf, g.start
        self.fc = nn.Sequential(*(layer for block in g.fc for layer in torch_layers(block)))
        self.up = nn.Sequential(*(layer for block in g.up for layer in torch_layers(block)))

    def forward(self, z, cat, cont):
        h = self.fc(torch.cat([z, F.one_hot(cat, self.n_cat).to(z.dtype), cont], 1))
        return self.up(h.view(h.size(0), 2 * self.ngf, self.start, self.start))


class TorchInfoGANDiscriminator(nn.Module):
    """ganfast.nn.InfoGANDiscriminator (sigma = 1: no log-std head, as the engine) in torch.nn
    layers, with that discriminator's weights: (D's logits, Q's categorical logits, Q's means)."""

    def __init__(self, d: gnn.InfoGANDiscriminator):
        super().__init__()
        self.n_cat, self.n_cont = d.n_cat, d.n_cont
        self.trunk = nn.Sequential(*torch_layers(d.trunk[0]), *torch_layers(d.trunk[1]), nn.Flatten(),
                                   *torch_layers(d.trunk[3]))
        self.d_head = copy.deepcopy(d.d_head)
        self.q_head = nn.Sequential(*torch_layers(d.q_head[0]), copy.deepcopy(d.q_head[1]))

    def forward(self, x):
        h = self.trunk(x)
        q = self.q_head(h)
        k = self.n_cat
        return self.d_head(h).view(x.size(0)), q[:, :k], q[:, k:k + self.n_cont]


def _eager_info_terms(cat_logits, cat, cont_mean, cont):
    """The engine's weighted L_I (sigma = 1) as an InfoGAN script writes it."""
    return (INFO_CAT_WEIGHT * F.cross_entropy(cat_logits, cat)
            + INFO_CONT_WEIGHT * (0.5 * (cont - cont_mean) ** 2).sum(1).mean())


def infogan_step_case(batch, width, device) -> Case:
    image_size, nc = 32, 1

    def make_step(impl, dtype=torch.float32, check=False):
        torch.manual_seed(11)
        G = gnn.InfoGANGenerator(INFO_NZ, INFO_CAT, INFO_CONT, nc, image_size, width)
        D = gnn.InfoGANDiscriminator(nc, INFO_CAT, INFO_CONT, image_size, width)
        if impl != "ganfast":
            G, D = TorchInfoGANGenerator(G), TorchInfoGANDiscriminator(D)
        G, D = G.to(device, dtype), D.to(device, dtype)
        gen = _gen(12)
        real = (torch.rand(batch, nc, image_size, image_size, generator=gen) * 2 - 1).to(device, dtype)
        # the D step's and the G step's latents (fresh z and codes for each, as the engine draws them)
        lat = [(torch.randn(batch, INFO_NZ, generator=gen).to(device, dtype),
                torch.randint(0, INFO_CAT, (batch,), generator=gen).to(device),
                (torch.rand(batch, INFO_CONT, generator=gen) * 2 - 1).to(device, dtype)) for _ in range(2)]
        if impl == "ganfast":
            def d_loss(real, fake, cat, cont):
                q = D(fake)
                return (L.discriminator_loss(D(real).logits, q.logits, "nonsaturating")
                        + L.info_loss(q.cat_logits, cat, q.cont_mean, cont, q.cont_logstd,
                                      cat_weight=INFO_CAT_WEIGHT, cont_weight=INFO_CONT_WEIGHT))

            def g_loss(fake, cat, cont):
                q = D(fake)
                return (L.generator_loss(q.logits, "nonsaturating")
                        + L.info_loss(q.cat_logits, cat, q.cont_mean, cont, q.cont_logstd,
                                      cat_weight=INFO_CAT_WEIGHT, cont_weight=INFO_CONT_WEIGHT))
        else:
            if impl == "compile":
                G, D = torch.compile(G), torch.compile(D)

            def d_loss(real, fake, cat, cont):
                r, (f, cat_logits, mean) = D(real)[0], D(fake)
                return (F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
                        + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f))
                        + _eager_info_terms(cat_logits, cat, mean, cont))

            def g_loss(fake, cat, cont):
                f, cat_logits, mean = D(fake)
                return (F.binary_cross_entropy_with_logits(f, torch.ones_like(f))
                        + _eager_info_terms(cat_logits, cat, mean, cont))
        g_params, d_params = list(G.parameters()), list(D.parameters())
        # the engine's InfoGAN rates: D 2e-4, G 1e-3, Adam betas (0.5, 0.999)
        opt_d = _adam(d_params, 0.0 if check else 2e-4, (0.5, 0.999))
        opt_g = _adam(g_params, 0.0 if check else 1e-3, (0.5, 0.999))

        def step():
            (z_d, cat_d, cont_d), (z_g, cat_g, cont_g) = lat
            D.requires_grad_(True)
            with torch.no_grad():
                fake = G(z_d, cat_d, cont_d)
            loss_d = d_loss(real, fake, cat_d, cont_d)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            d_grads = [(w, g.clone() if check and g is not None else g) for w, g in _grads("D", d_params)]
            opt_d.step()
            D.requires_grad_(False)   # the G step computes G's gradients only, as the engine
            loss_g = g_loss(G(z_g, cat_g, cont_g), cat_g, cont_g)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            D.requires_grad_(True)
            return [("loss_d", loss_d.detach()), ("loss_g", loss_g.detach())] + _grads("G", g_params) + d_grads
        return step

    return Case("step", "InfoGAN step", f"B={batch}, 1x32x32, width {width}, 10 cat + 2 cont codes",
                "the engine's InfoGAN step (ganfast/train/trainer.py): one D/Q step (G's fakes without grad; D on "
                "real, D on fake for the logits and Q's predictions; non-saturating loss + the weighted mutual-"
                "information term, sigma = 1) + one G step with fresh z and codes (non-saturating + information "
                "term, D's requires_grad off), Adam D 2e-4 / G 1e-3, betas (0.5, 0.999); BatchNorm in G, D and Q. "
                "Eager: the same layers in torch.nn, BCE-with-logits, `F.cross_entropy` + the Gaussian NLL in "
                "torch; ganfast: `ganfast.nn.InfoGANGenerator` / `InfoGANDiscriminator`, "
                "`ganfast.losses.discriminator_loss` / `generator_loss` / `info_loss`",
                # At B=64 D's first-step gradients amplify float32 rounding ~1000x: eager's own fakes
                # perturbed by 1e-6 relative (a few ulp) move D's gradients by up to 2.9e-3 norm-wise
                # against float64, while unperturbed eager happens to land within 1e-5. torch.compile
                # and ganfast[cpu] measured 7.7e-4 (D grad 0) to 1.2e-3; a wrong formula is O(0.1-1).
                make_step, check64=True, separate_check=True, check64_factor=1000.0)


# ---- CycleGAN: the engine's step (ganfast/train/cyclegan.py) -------------------------------------------

CYCLE_IDENTITY = 0.5   # identity L1 weight, a fraction of CYCLE_WEIGHT (TrainConfig.identity_weight)


def torch_resnet_generator(in_ch, out_ch, ngf, n_blocks) -> nn.Sequential:
    """The CycleGAN reference's ResnetGenerator (norm instance, no dropout, reflect padding) in
    torch.nn; its convolutions before an InstanceNorm keep no bias (the norm removes it exactly),
    as ganfast.nn.ResnetGenerator's."""
    def norm_relu(c, relu=True):
        return [nn.InstanceNorm2d(c), nn.ReLU()] if relu else [nn.InstanceNorm2d(c)]

    layers = [nn.ReflectionPad2d(3), nn.Conv2d(in_ch, ngf, 7, bias=False), *norm_relu(ngf)]
    for i in range(2):
        c = ngf * 2 ** i
        layers += [nn.Conv2d(c, 2 * c, 3, 2, 1, bias=False), *norm_relu(2 * c)]
    layers += [_TorchResnetBlock(nn.Sequential(
        nn.ReflectionPad2d(1), nn.Conv2d(4 * ngf, 4 * ngf, 3, bias=False), *norm_relu(4 * ngf),
        nn.ReflectionPad2d(1), nn.Conv2d(4 * ngf, 4 * ngf, 3, bias=False), *norm_relu(4 * ngf, False)))
        for _ in range(n_blocks)]
    for i in range(2):
        c = ngf * 2 ** (2 - i)
        layers += [nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1, bias=False), *norm_relu(c // 2)]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_ch, 7), nn.Tanh()]
    return nn.Sequential(*layers)


class _TorchResnetBlock(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


def torch_patch_discriminator(in_ch, ndf, n_layers) -> nn.Sequential:
    """The reference's NLayerDiscriminator (norm instance) in torch.nn: LeakyReLU(0.2), the first
    convolution with a bias (ganfast's keeps it in a BiasAct)."""
    layers = [nn.Conv2d(in_ch, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
    mult = 1
    for i in range(1, n_layers + 1):
        prev, mult = mult, min(2 ** i, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2 if i < n_layers else 1, 1, bias=False),
                   nn.InstanceNorm2d(ndf * mult), nn.LeakyReLU(0.2)]
    layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
    return nn.Sequential(*layers)


def copy_conv_weights(ours: nn.Module, twin: nn.Module) -> None:
    """A ganfast CycleGAN model's convolution weights (and its first D layer's BiasAct bias) into
    its torch.nn twin, in order."""
    src = [m for m in ours.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    dst = [m for m in twin.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    if len(src) != len(dst):
        raise ValueError(f"copy_conv_weights: {len(src)} convolutions, but the twin has {len(dst)}")
    biases = [m.bias for m in ours.modules() if isinstance(m, gnn.BiasAct)]
    with torch.no_grad():
        for s, d in zip(src, dst):
            d.weight.copy_(s.weight)
            if d.bias is not None:
                d.bias.copy_(s.bias if s.bias is not None else biases.pop(0))


def cyclegan_step_case(batch, width, n_blocks, device) -> Case:
    image_size, ch, n_layers = 32, 1, 3

    def make_step(impl, dtype=torch.float32, check=False):
        torch.manual_seed(13)
        Gs = [gnn.ResnetGenerator(ch, ch, width, n_blocks) for _ in range(2)]
        Ds = [gnn.PatchDiscriminator(ch, width, n_layers) for _ in range(2)]
        if impl != "ganfast":
            twins = [torch_resnet_generator(ch, ch, width, n_blocks) for _ in range(2)] + \
                    [torch_patch_discriminator(ch, width, n_layers) for _ in range(2)]
            for ours, twin in zip(Gs + Ds, twins):
                copy_conv_weights(ours, twin)
            Gs, Ds = twins[:2], twins[2:]
        G_AB, G_BA, D_A, D_B = (m.to(device, dtype) for m in Gs + Ds)
        gen = _gen(14)
        real_a, real_b = ((torch.rand(batch, ch, image_size, image_size, generator=gen) * 2 - 1).to(device, dtype)
                          for _ in range(2))
        if impl == "ganfast":
            def g_losses(fake_a, fake_b, rec_a, rec_b, idt_a, idt_b):
                # ganfast's least_squares G loss is (D - 1)^2 / 2: x2 is the reference's MSE to 1
                gan = 2.0 * (L.generator_loss(D_B(fake_b), "least_squares")
                             + L.generator_loss(D_A(fake_a), "least_squares"))
                return (gan + L.cycle_loss([rec_a, rec_b], [real_a, real_b], weight=CYCLE_WEIGHT)
                        + L.cycle_loss([idt_b, idt_a], [real_b, real_a], weight=CYCLE_WEIGHT * CYCLE_IDENTITY))

            def d_losses(fake_a, fake_b):
                # real and fake through each D in one pass (InstanceNorm does not couple samples)
                return (S.discriminator_step_loss(D_A, real_a, fake_a, "least_squares").total
                        + S.discriminator_step_loss(D_B, real_b, fake_b, "least_squares").total)
        else:
            if impl == "compile":
                G_AB, G_BA, D_A, D_B = (torch.compile(m) for m in (G_AB, G_BA, D_A, D_B))

            def mse(x, target):
                return F.mse_loss(x, torch.full_like(x, target))

            def g_losses(fake_a, fake_b, rec_a, rec_b, idt_a, idt_b):
                return (mse(D_B(fake_b), 1.0) + mse(D_A(fake_a), 1.0)
                        + CYCLE_WEIGHT * (F.l1_loss(rec_a, real_a) + F.l1_loss(rec_b, real_b))
                        + CYCLE_WEIGHT * CYCLE_IDENTITY * (F.l1_loss(idt_b, real_b) + F.l1_loss(idt_a, real_a)))

            def d_losses(fake_a, fake_b):
                return (0.5 * (mse(D_A(real_a), 1.0) + mse(D_A(fake_a), 0.0))
                        + 0.5 * (mse(D_B(real_b), 1.0) + mse(D_B(fake_b), 0.0)))
        g_params = list(G_AB.parameters()) + list(G_BA.parameters())
        d_params = list(D_A.parameters()) + list(D_B.parameters())
        lr = 0.0 if check else 2e-4
        opt_g, opt_d = _adam(g_params, lr, (0.5, 0.999)), _adam(d_params, lr, (0.5, 0.999))

        def step():
            D_A.requires_grad_(False)   # the G step computes the generators' gradients only
            D_B.requires_grad_(False)
            fake_b, fake_a = G_AB(real_a), G_BA(real_b)
            loss_g = g_losses(fake_a, fake_b, G_BA(fake_b), G_AB(fake_a), G_BA(real_a), G_AB(real_b))
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            D_A.requires_grad_(True)
            D_B.requires_grad_(True)
            loss_d = d_losses(fake_a.detach(), fake_b.detach())   # no image pool: this step's fakes
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            return ([("loss_g", loss_g.detach()), ("loss_d", loss_d.detach())] + _grads("G", g_params)
                    + _grads("D", d_params))
        return step

    return Case("step", "CycleGAN step", f"B={batch} per domain, 1x32x32, width {width}, {n_blocks} blocks",
                "the engine's CycleGAN step (ganfast/train/cyclegan.py): both generators' LSGAN losses (the "
                "reference's MSE to 1) + cycle L1 (weight 10, both directions) + identity L1 (weight 0.5 x 10), "
                "one Adam step for both G's (D's requires_grad off); then both PatchGAN discriminators on real "
                "and this step's fakes (LSGAN, halved), one Adam step for both D's; Adam(2e-4, (0.5, 0.999)). "
                "The engine's image pool is left out (a host-side history of fakes, the same for every "
                "implementation): D sees the step's fakes. Eager: the reference's layers in torch.nn "
                "(`nn.InstanceNorm2d`, `nn.LeakyReLU(0.2)`), `F.mse_loss`, `F.l1_loss`, two passes per D; "
                "ganfast: `ganfast.nn.ResnetGenerator` / `PatchDiscriminator` (instance_norm_act, bias_act), "
                "`ganfast.losses.generator_loss`, cycle and identity L1 through one `cycle_loss` call each, "
                "`ganfast.steps.discriminator_step_loss` (one pass over real and fake per D)",
                make_step, check64=True, separate_check=True)


# ---- spectral_norm: the parametrization over every weight of a SAGAN / BigGAN discriminator -------

def sagan_d_weight_shapes(ch: int = 64, n_classes: int = 10):
    """The spectrally normalised weights of BigGAN-PyTorch's D at 32x32 (D_arch[32], attention at 16):
    four DBlocks 3 -> 4ch -> 4ch -> 4ch -> 4ch (the first two downsample), each conv1 / conv2 3x3 and,
    where the channels change or it downsamples, the 1x1 shortcut conv; self-attention on 4ch channels
    after the first block (theta, phi: 4ch -> ch/2, g: 4ch -> 2ch, o: 2ch -> 4ch, 1x1); the final
    linear 4ch -> 1 and the projection's class embedding (n_classes, 4ch)."""
    c = 4 * ch
    return [
        (c, 3, 3, 3), (c, c, 3, 3), (c, 3, 1, 1),          # block 1 (3 -> 4ch, down): conv1, conv2, shortcut
        (c // 8, c, 1, 1), (c // 8, c, 1, 1), (c // 2, c, 1, 1), (c, c // 2, 1, 1),  # attention theta phi g o
        (c, c, 3, 3), (c, c, 3, 3), (c, c, 1, 1),          # block 2 (down): conv1, conv2, shortcut
        (c, c, 3, 3), (c, c, 3, 3),                        # block 3
        (c, c, 3, 3), (c, c, 3, 3),                        # block 4
        (1, c),                                            # linear
        (n_classes, c),                                    # class embedding (projection)
    ]


class _Holder(nn.Module):
    """A module holding one weight, to be spectrally normalised."""

    def __init__(self, weight: Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)


def spectral_norm_case(ch: int, device) -> Case:
    shapes = sagan_d_weight_shapes(ch)

    def make_step(impl, **_):
        if impl == "compile":
            # Measured on torch 2.14.1: the compiled parametrizations' gradient of the (4ch, 3, 1, 1)
            # shortcut weight differs from eager's (max |diff| ~6e-3 at ch=16 and 64, 60% relative) while
            # ganfast's agrees; such a contender is reported as refused, with the difference, not timed.
            eager_out, comp_out = build("eager")(), build("compile")()
            for (name, a), (_, b) in zip(eager_out, comp_out):
                if not torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max())):
                    raise RuntimeError(f"torch.compile of torch's spectral_norm parametrization disagrees with "
                                       f"eager on {name}: max |diff| {float((a - b).abs().max()):.3g}")
        return build(impl)

    def build(impl):
        g = _gen(1200 + ch)
        weights = [(torch.randn(sh, generator=g) * 0.05).to(device) for sh in shapes]
        ups = [torch.randn(sh, generator=g).to(device) for sh in shapes]  # the upstream gradients
        sn = gnn.spectral_norm if impl == "ganfast" else torch.nn.utils.parametrizations.spectral_norm
        torch.manual_seed(7)  # the same u, v for every implementation (ganfast draws them as torch does)
        mods = nn.ModuleList([sn(_Holder(w.clone())) for w in weights])
        leaves = [m.parametrizations.weight.original for m in mods]

        def loss_fn():
            return sum((m.weight * u).sum() for m, u in zip(mods, ups))

        fn = torch.compile(loss_fn) if impl == "compile" else loss_fn

        def step():
            loss = fn()
            loss.backward()
            out = [("loss", loss.detach())] + _grads("SN weight", leaves)
            out += [(f"u {i}", m.parametrizations.weight[0]._u.clone()) for i, m in enumerate(mods)]
            _clear(leaves)
            return out
        return step

    n = sum(torch.Size(sh).numel() for sh in shapes)
    return Case("spectral_norm", "spectral_norm", f"SAGAN D 32x32 ch={ch}: {len(shapes)} weights, {n / 1e6:.2f} M",
                "the spectral-norm parametrization of every weight of BigGAN-PyTorch's 32x32 D (ch=64: 3x3 and 1x1 "
                "shortcut convs, attention theta/phi/g/o, linear, class embedding) in training mode (one power "
                "step, u and v updated), `sum(<W_sn, G>)` and `backward()`. Eager: "
                "`torch.nn.utils.parametrizations.spectral_norm`; ganfast: `ganfast.nn.spectral_norm` (one fused "
                "op forward, one backward, per weight)", make_step, rtol=1e-4, atol_scale=1e-5)


# ---- orthogonal_regularization: BigGAN's orthogonal regularization of G's weights ------------------------

ORTHO_BETA = 1e-4  # the paper's beta (= BigGAN-PyTorch strength 2e-4: beta = s / 2)


def biggan_g_weight_shapes(ch: int, resolution: int, z_dim: int = 120, shared_dim: int = 128,
                           attn_res: Tuple[int, ...] = (), with_linear: bool = True) -> List[Tuple[int, ...]]:
    """The >= 2-D weights of BigGAN-PyTorch's generator (G_shared, hierarchical z) that its utils.ortho
    regularizes, in module order; the shared class embedding is left out (BigGAN-PyTorch blacklists
    it), 1-D parameters (biases, the output BN's gain / bias, attention's gamma) are skipped.

    Per architecture (BigGAN-PyTorch's G_arch): blocks of in -> out channels, each upsampling;
    z is cut into len(blocks) + 1 chunks, the first to the linear, one per block to its ccbn, whose
    gain and bias linears take the shared embedding concatenated with the chunk (bias=False).
      linear            (4 * 4 * in[0], z_chunk)
      per block         bn1.gain, bn1.bias (in, shared + z_chunk); conv1 (out, in, 3, 3);
                        bn2.gain, bn2.bias (out, shared + z_chunk); conv2 (out, out, 3, 3);
                        conv_sc (out, in, 1, 1)
      attention at R    after the block whose output is R x R, on its C = out channels:
                        theta (C/8, C, 1, 1), phi (C/8, C, 1, 1), g (C/2, C, 1, 1), o (C, C/2, 1, 1)
      output conv       (3, out[-1], 3, 3)
    """
    arch = {32: ([4, 4, 4], [4, 4, 4]), 64: ([16, 16, 8, 4], [16, 8, 4, 2]),
            128: ([16, 16, 8, 4, 2], [16, 8, 4, 2, 1])}[resolution]
    ins, outs = [c * ch for c in arch[0]], [c * ch for c in arch[1]]
    chunk = z_dim // (len(ins) + 1)
    cond = shared_dim + chunk
    shapes = [(4 * 4 * ins[0], chunk)] if with_linear else []
    res = 4
    for cin, cout in zip(ins, outs):
        res *= 2
        shapes += [(cin, cond), (cin, cond), (cout, cin, 3, 3), (cout, cond), (cout, cond), (cout, cout, 3, 3),
                   (cout, cin, 1, 1)]
        if res in attn_res:
            shapes += [(cout // 8, cout, 1, 1), (cout // 8, cout, 1, 1), (cout // 2, cout, 1, 1),
                       (cout, cout // 2, 1, 1)]
    return shapes + [(3, outs[-1], 3, 3)]


def eager_ortho(ws):
    """BigGAN's beta * sum_W ||W W^T * (1 - I)||_F^2 as a per-layer loop (mm, mask, square, sum)."""
    total = 0
    for w in ws:
        W = w.view(w.shape[0], -1)
        total = total + ((W @ W.t()) * (1 - torch.eye(W.shape[0], dtype=W.dtype, device=W.device))).pow(2).sum()
    return ORTHO_BETA * total


def eager_ortho_(ws):
    """BigGAN-PyTorch's utils.ortho, written from its formula: .grad += s * 2 (W W^T * (1 - I)) W with
    strength s = 2 beta (the same gradient as ours at beta)."""
    with torch.no_grad():
        for w in ws:
            W = w.view(w.shape[0], -1)
            g = 2 * torch.mm(torch.mm(W, W.t()) * (1.0 - torch.eye(W.shape[0], dtype=W.dtype, device=W.device)), W)
            w.grad += (2 * ORTHO_BETA) * g.view(w.shape)


def ortho_case(ch: int, resolution: int, in_place: bool, device, attn_res=(16,), with_linear=True,
               shapes=None, size=None) -> Case:
    """`shapes`: the weights' shapes (default: BigGAN-PyTorch's G at ch / resolution); `size`: the
    tables' label for them."""
    if shapes is None:
        shapes = biggan_g_weight_shapes(ch, resolution, attn_res=attn_res, with_linear=with_linear)

    def make_step(impl, dtype=torch.float32, **_):
        gen = _gen(ch * 1000 + resolution)
        ws = []
        for s in shapes:
            k = 1
            for d in s[1:]:
                k *= d
            ws.append((torch.randn(s, generator=gen) / k ** 0.5).to(device=device, dtype=dtype).requires_grad_())
        if in_place:
            fn = {"eager": eager_ortho_, "ganfast": lambda w: P.orthogonal_regularization_(w, ORTHO_BETA)}.get(impl)
            fn = fn or torch.compile(eager_ortho_)
            for w in ws:
                w.grad = torch.zeros_like(w)

            def step():
                torch._foreach_zero_([w.grad for w in ws])
                fn(ws)
                return _grads("weight", ws)
            return step
        fn = {"eager": eager_ortho, "ganfast": lambda w: P.orthogonal_regularization(w, ORTHO_BETA)}.get(impl)
        fn = fn or torch.compile(eager_ortho)

        def step():
            loss = fn(ws)
            loss.backward()
            out = [("loss", loss.detach())] + _grads("weight", ws)
            _clear(ws)
            return out
        return step

    what = ("`.grad += ` its gradient in place, BigGAN-PyTorch's utils.ortho (eager: its per-layer loop of two mm "
            "and a mask)" if in_place else "`beta * sum ||W W^T * (1 - I)||^2` over the weights and its backward "
            "(eager: the per-layer loop mm, mask with 1 - eye, square, sum)")
    size = size or (f"BigGAN G {resolution}x{resolution} ch={ch}: {len(shapes)} weights"
                    + ("" if with_linear else " (no z linear)"))
    return Case("orthogonal_regularization",
                "orthogonal_regularization_ in place" if in_place else "orthogonal_regularization fwd+bwd",
                size, f"{what}; weight shapes {shapes}", make_step, check64=True)


def ortho_small_case(in_place: bool, device) -> Case:
    """BigGAN at 32x32, ch=32, attention at 16x16: 27 weights."""
    return ortho_case(32, 32, in_place, device, attn_res=(16,))


def ortho_engine_case(in_place: bool, device) -> Case:
    """The weights `ganfast train --model biggan --data digits` regularizes: its default G (ch 8,
    32x32, one channel, 10 classes, attention at 16x16), chosen by the trainer's own rule."""
    from ganfast.train.config import CONDITIONAL_WIDTH, DEFAULT_ATTN_RES
    from ganfast.train.trainer import ortho_parameters
    G = gnn.BigGANGenerator(10, 120, CONDITIONAL_WIDTH, 32, 1, attn_res=DEFAULT_ATTN_RES)
    shapes = [tuple(p.shape) for p in ortho_parameters(G)]
    return ortho_case(CONDITIONAL_WIDTH, 32, in_place, device, shapes=shapes,
                      size=f"the engine's BigGAN G on digits (ch={CONDITIONAL_WIDTH}): {len(shapes)} weights")


def ortho_128_case(in_place: bool, device) -> Case:
    """BigGAN-128's widths (ch=96, attention at 64x64), without the z linear (24576 x 20): eager's
    24576 x 24576 Gram alone is 2.4 GB, beyond this machine's share (ganfast takes its 20 x 20 W^T W).
    Not in the suite's SIZES (one eager step is hundreds of GFLOP of GEMMs, seconds on a 2-core CPU):
    benchmarks/bench_orthogonal_regularization.py times it with few steps."""
    return ortho_case(96, 128, in_place, device, attn_res=(64,), with_linear=False)
# ---- SAGAN: the D step and the G step of the engine's SAGAN training ----------------------------------

SAGAN_CLASSES = 10
# the engine's SAGAN defaults (ganfast/train/config.py: the paper's D rate and betas, G 2e-4)
SAGAN_LR_D, SAGAN_LR_G, SAGAN_BETAS = 4e-4, 2e-4, (0.0, 0.9)


def _torch_sn_copy(m: nn.Module) -> nn.Module:
    """A Conv2d / Linear / Embedding with torch's own spectral_norm (eps 1e-6, as ganfast.nn's
    models) holding m's weights and power-iteration vectors (same state_dict keys)."""
    from torch.nn.utils.parametrizations import spectral_norm

    if isinstance(m, nn.Conv2d):
        new = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, padding=m.padding, bias=m.bias is not None)
    elif isinstance(m, nn.Linear):
        new = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    else:
        new = nn.Embedding(m.num_embeddings, m.embedding_dim)
    if nn.utils.parametrize.is_parametrized(m, "weight"):
        new = spectral_norm(new, eps=1e-6)
    new.load_state_dict(m.state_dict())
    return new


class _TorchCBN(nn.Module):
    """Conditional BatchNorm + ReLU as a SAGAN / BigGAN script writes it: nn.BatchNorm2d without
    affine parameters, a per-sample gain and bias from bias-free linear maps of `cond`, nn.ReLU."""

    def __init__(self, cbn: nn.Module):
        super().__init__()
        self.bn = nn.BatchNorm2d(cbn.num_features, cbn.eps, cbn.momentum, affine=False)
        self.bn.load_state_dict({k: v for k, v in cbn.state_dict().items() if k.startswith(("running", "num_"))})
        self.gain, self.bias = _torch_sn_copy(cbn.gain), _torch_sn_copy(cbn.bias)

    def forward(self, x, cond):
        return F.relu(self.bn(x) * (1 + self.gain(cond))[..., None, None] + self.bias(cond)[..., None, None])


class _TorchAttention(nn.Module):
    """SAGAN's attention as BigGAN-PyTorch writes it: three 1x1 convs, max-pools, bmm + softmax +
    bmm, the output conv, gamma * o + x."""

    def __init__(self, a: gnn.SelfAttention2d):
        super().__init__()
        self.gamma = nn.Parameter(a.gamma.detach().clone())
        self.theta, self.phi, self.g, self.o = (_torch_sn_copy(getattr(a, n)) for n in ("theta", "phi", "g", "o"))

    def forward(self, x):
        n, c, h, w = x.shape
        theta = self.theta(x).view(n, c // 8, h * w)
        phi = F.max_pool2d(self.phi(x), 2).view(n, c // 8, h * w // 4)
        g = F.max_pool2d(self.g(x), 2).view(n, c // 2, h * w // 4)
        beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)
        return self.gamma * self.o(torch.bmm(g, beta.transpose(1, 2)).view(n, c // 2, h, w)) + x


def torchify_sagan(model: nn.Module) -> nn.Module:
    """A copy of a ganfast SAGAN / BigGAN model whose layers are torch's own (spectral_norm,
    BatchNorm2d, the bmm + softmax attention), in the same places, so parameters() lists them in
    the same order."""
    from ganfast.nn import ConditionalBatchNorm2d

    twin = copy.deepcopy(model)
    for name, m in list(twin.named_modules()):
        if not name:
            continue
        parent, _, leaf = name.rpartition(".")
        holder = twin.get_submodule(parent) if parent else twin
        if isinstance(m, ConditionalBatchNorm2d):
            setattr(holder, leaf, _TorchCBN(m))
        elif isinstance(m, gnn.SelfAttention2d):
            holder._modules[leaf] = _TorchAttention(m)
        elif isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)) and ".parametrizations." not in name:
            if not any(name.startswith(p + ".") for p, q in twin.named_modules() if isinstance(q, (_TorchCBN, _TorchAttention))):
                setattr(holder, leaf, _torch_sn_copy(m))
    return twin


class TorchSAGANGenerator(nn.Module):
    """ganfast.nn.SAGANGenerator / BigGANGenerator in torch's own layers, with that generator's weights."""

    def __init__(self, g: nn.Module):
        super().__init__()
        self.m = torchify_sagan(g)

    def forward(self, z, y):
        g = self.m
        if isinstance(g, gnn.BigGANGenerator):
            e = g.shared(y)
            zs = torch.split(z, g.z_chunks, 1) if g.hier else (z,)
            z0, conds = zs[0], ([torch.cat([e, c], 1) for c in zs[1:]] if g.hier else [e] * len(g.blocks))
        else:
            z0, conds = z, [F.one_hot(y, g.n_classes).to(z.dtype)] * len(g.blocks)
        h = g.linear(z0).view(z.size(0), -1, 4, 4)
        for i, b in enumerate(g.blocks):
            t = b.conv1(F.interpolate(b.bn1(h, conds[i]), scale_factor=2.0))
            h = b.conv2(b.bn2(t, conds[i])) + b.conv_sc(F.interpolate(h, scale_factor=2.0))
            if i in g._attn_after:
                h = g.attention[g._attn_after[i]](h)
        return torch.tanh(g.output_conv(F.relu(g.output_bn(h))))


class TorchSAGANDiscriminator(nn.Module):
    """ganfast.nn.SAGANDiscriminator / BigGANDiscriminator in torch's own layers, with its weights."""

    def __init__(self, d: nn.Module):
        super().__init__()
        self.m = torchify_sagan(d)

    def forward(self, x, y):
        d, h = self.m, x
        for i, b in enumerate(d.blocks):
            t = b.conv2(F.relu(b.conv1(F.relu(h) if b.preactivation else h)))
            t = F.avg_pool2d(t, 2) if b.downsample else t
            s = h
            if b.conv_sc is not None:
                if b.preactivation:
                    s = b.conv_sc(s)
                    s = F.avg_pool2d(s, 2) if b.downsample else s
                else:
                    s = b.conv_sc(F.avg_pool2d(s, 2) if b.downsample else s)
            h = t + s
            if i in d._attn_after:
                h = d.attention[d._attn_after[i]](h)
        h = torch.sum(F.relu(h), (2, 3))
        return d.linear(h).squeeze(1) + (d.embed(y) * h).sum(1)


def sagan_step_case(which, batch, width, device) -> Case:
    """The engine's SAGAN D step ("d") or G step ("g") alone: hinge loss, Adam(0, 0.9), D 4e-4, G
    1e-4, 32x32 single-channel class-conditional images, attention at 16x16 in G and D."""
    image_size, nc = 32, 1

    def make_step(impl, dtype=torch.float32, check=False):
        torch.manual_seed(17)
        G = gnn.SAGANGenerator(SAGAN_CLASSES, 128, width, image_size, nc)
        D = gnn.SAGANDiscriminator(SAGAN_CLASSES, width, image_size, nc)
        if impl != "ganfast":
            G, D = TorchSAGANGenerator(G), TorchSAGANDiscriminator(D)
        G, D = G.to(device, dtype), D.to(device, dtype)
        gen = _gen(18)
        real = (torch.rand(batch, nc, image_size, image_size, generator=gen) * 2 - 1).to(device, dtype)
        y_real = torch.randint(0, SAGAN_CLASSES, (batch,), generator=gen).to(device)
        z = torch.randn(batch, 128, generator=gen).to(device, dtype)
        y_fake = torch.randint(0, SAGAN_CLASSES, (batch,), generator=gen).to(device)
        if impl == "compile":
            G, D = torch.compile(G), torch.compile(D)
        if impl == "ganfast":
            def d_loss(logits):
                return L.discriminator_loss(logits[:batch], logits[batch:], "hinge")

            def g_loss(logits):
                return L.generator_loss(logits, "hinge")
        else:
            def d_loss(logits):
                return F.relu(1 - logits[:batch]).mean() + F.relu(1 + logits[batch:]).mean()

            def g_loss(logits):
                return -logits.mean()
        model = D if which == "d" else G
        params = list(model.parameters())
        lr = 0.0 if check else (SAGAN_LR_D if which == "d" else SAGAN_LR_G)
        opt = _adam(params, lr, SAGAN_BETAS)
        # real and fake in one pass through D (no BatchNorm in D: the same logits), as BigGAN-PyTorch's G_D
        y_both = torch.cat([y_real, y_fake])

        def step():
            opt.zero_grad(set_to_none=True)
            if which == "d":
                with torch.no_grad():
                    fake = G(z, y_fake)
                loss = d_loss(D(torch.cat([real, fake]), y_both))
            else:
                D.requires_grad_(False)   # the G step computes G's gradients only
                loss = g_loss(D(G(z, y_fake), y_fake))
            loss.backward()
            out = [("loss", loss.detach())] + _grads(which.upper(), params)
            opt.step()
            D.requires_grad_(True)
            return out
        return step

    what = "D" if which == "d" else "G"
    detail = ("one discriminator step: G's fakes without grad, D on real and fake in one pass (as BigGAN-PyTorch's "
              "G_D), hinge loss, Adam(4e-4, (0, 0.9))" if which == "d" else
              "one generator step: G(z, y), D on the fakes (D's requires_grad off), hinge loss -E D(G(z)), "
              "Adam(2e-4, (0, 0.9))")
    return Case("step", f"SAGAN {what} step", f"B={batch}, 1x32x32, ch {width}, {SAGAN_CLASSES} classes, attention 16",
                f"{detail}; spectral norm on every layer, conditional BatchNorm in G, self-attention at 16x16 in G "
                "and D. Eager: torch's `spectral_norm`, `nn.BatchNorm2d` + linear gain/bias, bmm + softmax attention "
                "(BigGAN-PyTorch's form), `F.relu` hinge terms; ganfast: `ganfast.nn.SAGANGenerator` / "
                "`SAGANDiscriminator` (SDPA attention, fused ReLUs / BatchNorm+ReLU / bias+tanh, `ganfast.nn.spectral_norm`, "
                "`ganfast.nn.ConditionalBatchNorm2d`), "
                "`ganfast.losses` hinge",
                make_step, check64=True, separate_check=True)


# ---- the suite ---------------------------------------------------------------------------------------

# Every case builder with its sizes: (builder, the quick run's arguments, the full run's arguments).
SIZES = [
    (losses_case, [(4096,)], [(64,), (65536,)]),
    (cycle_case, [((4, 3, 32, 32),)], [((64, 3, 64, 64),)]),
    (ortho_engine_case, [(False,), (True,)], [(False,), (True,)]),   # the bar: the engine's G
    (ortho_small_case, [], [(False,), (True,)]),
    (info_loss_case, [(16, 10, 2)], [(64, 10, 2)]),                       # batch, classes K, codes J
    (spectral_norm_case, [(16,)], [(64,)]),                               # D width ch
    (penalty_case, [((16, 3, 32, 32),)], [((64, 3, 64, 64),), ((256, 3, 128, 128),)]),
    (bias_act_case, [((8, 32, 16, 16),)], [((64, 128, 32, 32),)]),
    (lrelu_double_backward_case, [((8, 32, 16, 16),)], [((64, 128, 32, 32),)]),
    (batch_norm_act_case, [((8, 32, 16, 16),)], [((64, 128, 16, 16),)]),
    (conditional_batch_norm_act_case, [((8, 32, 16, 16),)], [((64, 256, 16, 16),)]),
    (instance_norm_act_case, [((4, 32, 16, 16),)], [((8, 256, 64, 64),)]),
    (generator_case, [(4, 32, 16)], [(64, 64, 64)]),                     # batch, image size, ngf
    (dcgan_step_case, [("nonsaturating", 4, 32, 16)], [("nonsaturating", 64, 64, 64)]),
    (dcgan_step_case, [("wgan-gp", 4, 32, 16)], [("wgan-gp", 32, 64, 64)]),
    (dcgan_step_case, [("r1", 4, 32, 16)], [("r1", 32, 64, 64)]),
    (mlp_step_case, [(256, 128)], [(256, 128)]),                          # batch, width
    (infogan_step_case, [(8, 16)], [(64, 64)]),                           # batch, width (ngf = ndf)
    (cyclegan_step_case, [(2, 8, 2)], [(8, 32, 6)]),                      # batch per domain, width, blocks
    (sagan_step_case, [("d", 4, 4)], [("d", 64, 32)]),                    # which step, batch, ch
    (sagan_step_case, [("g", 4, 4)], [("g", 64, 32)]),
]


def cases(device: torch.device, quick: bool = False) -> List[Case]:
    """Every case, at the sizes of a full run, or small ones with quick=True (CI)."""
    return [build(*args, device) for build, quick_args, full_args in SIZES
            for args in (quick_args if quick else full_args)]
