"""The benchmark suite's cases: every op family and four whole training steps, each as eager
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
    family: str                                  # losses | cycle_loss | penalty | bias_act | block |
                                                 # instance_norm_act | step
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


# ---- the suite ---------------------------------------------------------------------------------------

# Every case builder with its sizes: (builder, the quick run's arguments, the full run's arguments).
SIZES = [
    (losses_case, [(4096,)], [(64,), (65536,)]),
    (cycle_case, [((4, 3, 32, 32),)], [((64, 3, 64, 64),)]),
    (info_loss_case, [(16, 10, 2)], [(64, 10, 2)]),                       # batch, classes K, codes J
    (penalty_case, [((16, 3, 32, 32),)], [((64, 3, 64, 64),), ((256, 3, 128, 128),)]),
    (bias_act_case, [((8, 32, 16, 16),)], [((64, 128, 32, 32),)]),
    (lrelu_double_backward_case, [((8, 32, 16, 16),)], [((64, 128, 32, 32),)]),
    (batch_norm_act_case, [((8, 32, 16, 16),)], [((64, 128, 16, 16),)]),
    (instance_norm_act_case, [((4, 32, 16, 16),)], [((8, 256, 64, 64),)]),
    (generator_case, [(4, 32, 16)], [(64, 64, 64)]),                     # batch, image size, ngf
    (dcgan_step_case, [("nonsaturating", 4, 32, 16)], [("nonsaturating", 64, 64, 64)]),
    (dcgan_step_case, [("wgan-gp", 4, 32, 16)], [("wgan-gp", 32, 64, 64)]),
    (dcgan_step_case, [("r1", 4, 32, 16)], [("r1", 32, 64, 64)]),
    (mlp_step_case, [(256, 128)], [(256, 128)]),                          # batch, width
]


def cases(device: torch.device, quick: bool = False) -> List[Case]:
    """Every case, at the sizes of a full run, or small ones with quick=True (CI)."""
    return [build(*args, device) for build, quick_args, full_args in SIZES
            for args in (quick_args if quick else full_args)]
