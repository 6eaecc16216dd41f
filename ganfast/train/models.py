"""Models: MLPs for 2-D data; ganfast.nn's DCGAN, InfoGAN, SAGAN or BigGAN generator and discriminator
for images (SAGAN and BigGAN class-conditional: G(z, y), D(x, y))."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..nn import LeakyReLU


class MLPGenerator(nn.Module):
    """z (B, z_dim) -> points (B, out_dim): `depth` hidden ReLU layers of `width` units. The last
    layer's output is multiplied by `scale` (a buffer), so the network works in units where the
    data is O(1) whatever its coordinates."""

    def __init__(self, z_dim: int = 2, out_dim: int = 2, width: int = 256, depth: int = 3, scale: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        d = z_dim
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)
        self.z_dim = z_dim
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z) * self.scale


class MLPDiscriminator(nn.Module):
    """points (B, in_dim) -> logits (B,): `depth` hidden leaky-ReLU (0.2, ganfast's fused op)
    layers of `width` units, on the input divided by `scale`."""

    def __init__(self, in_dim: int = 2, width: int = 256, depth: int = 3, scale: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, width), LeakyReLU(0.2)]
            d = width
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x / self.scale).squeeze(1)


def build_models(cfg, dataset) -> tuple[nn.Module, nn.Module]:
    """(G, D) for a resolved TrainConfig and its Dataset."""
    model = getattr(cfg, "model", "dcgan")
    if model != "dcgan" and not dataset.is_image:
        raise ValueError(f"ganfast.train: model '{model}' trains on images; {dataset.name} is 2-D points "
                         f"(which train the MLPs: leave --model out)")
    if dataset.is_image:
        from ..nn import DCGANDiscriminator, DCGANGenerator, InfoGANDiscriminator, InfoGANGenerator

        c, h, w = dataset.shape
        if model in CONDITIONAL_KINDS:
            if dataset.labels is None:
                raise ValueError(
                    f"ganfast.train: model '{model}' is class-conditional and needs labelled images; "
                    f"{dataset.name} has no labels. Use --data digits, a folder with one subfolder per class "
                    f"(folder:PATH with PATH/<class>/*.png, classes sorted by name), or npy:X.npy with the "
                    f"labels ((N,) integers 0..K-1) in X.labels.npy beside it")
            if h not in (32, 64):
                raise ValueError(f"ganfast.train: {model} trains 32x32 or 64x64 images; got --image-size {h}")
            Gc, Dc = _conditional_classes(model)
            attn = tuple(cfg.attn_res)
            G = Gc(dataset.n_classes, z_dim=cfg.z_dim, ch=cfg.ngf, resolution=h, channels=c, attn_res=attn)
            D = Dc(dataset.n_classes, ch=cfg.ndf, resolution=h, channels=c, attn_res=attn)
            return G, D
        if model == "infogan":
            if h not in (32, 64):
                raise ValueError(f"ganfast.train: infogan trains 32x32 or 64x64 images; got --image-size {h}")
            G = InfoGANGenerator(nz=cfg.z_dim, n_cat=cfg.cat_codes, n_cont=cfg.cont_codes, nc=c, image_size=h,
                                 ngf=cfg.ngf)
            D = InfoGANDiscriminator(nc=c, n_cat=cfg.cat_codes, n_cont=cfg.cont_codes, image_size=h, ndf=cfg.ndf)
            return G, D
        G = DCGANGenerator(nz=cfg.z_dim, ngf=cfg.ngf, nc=c, image_size=h)
        D = DCGANDiscriminator(nc=c, ndf=cfg.ndf, image_size=h)
        return G, D
    (dim,) = dataset.shape
    G = MLPGenerator(cfg.z_dim, dim, cfg.width, cfg.depth, dataset.scale)
    D = MLPDiscriminator(dim, cfg.width, cfg.depth, dataset.scale)
    return G, D


# SAGAN / BigGAN: model kind -> (generator, discriminator) class names in ganfast.nn
CONDITIONAL_KINDS = {"sagan": ("SAGANGenerator", "SAGANDiscriminator"),
                     "biggan": ("BigGANGenerator", "BigGANDiscriminator")}


def _conditional_classes(kind: str):
    from .. import nn as gnn
    g, d = CONDITIONAL_KINDS[kind]
    return getattr(gnn, g), getattr(gnn, d)


def model_spec(cfg, dataset, G: Optional[nn.Module] = None) -> dict:
    """What load_generator needs to rebuild G without the data set (SAGAN / BigGAN: G.spec(), its
    constructor's arguments)."""
    if dataset.is_image:
        c, h, _ = dataset.shape
        model = getattr(cfg, "model", "dcgan")
        if model in CONDITIONAL_KINDS:
            spec = dict(G.spec())
            if "attn_res" in spec:  # a list: the checkpoint stays plain data
                spec["attn_res"] = list(spec["attn_res"])
            return {"kind": model, **spec}
        if getattr(cfg, "model", "dcgan") == "infogan":
            return {"kind": "infogan", "nz": cfg.z_dim, "n_cat": cfg.cat_codes, "n_cont": cfg.cont_codes,
                    "ngf": cfg.ngf, "nc": c, "image_size": h}
        return {"kind": "dcgan", "nz": cfg.z_dim, "ngf": cfg.ngf, "nc": c, "image_size": h}
    return {"kind": "mlp", "z_dim": cfg.z_dim, "out_dim": dataset.shape[0], "width": cfg.width,
            "depth": cfg.depth, "scale": dataset.scale}


def generator_from_spec(spec: dict) -> nn.Module:
    if spec["kind"] in CONDITIONAL_KINDS:
        kwargs = {k: v for k, v in spec.items() if k != "kind"}
        if "attn_res" in kwargs:
            kwargs["attn_res"] = tuple(kwargs["attn_res"])
        return _conditional_classes(spec["kind"])[0](**kwargs)
    if spec["kind"] == "dcgan":
        from ..nn import DCGANGenerator
        return DCGANGenerator(nz=spec["nz"], ngf=spec["ngf"], nc=spec["nc"], image_size=spec["image_size"])
    if spec["kind"] == "infogan":
        from ..nn import InfoGANGenerator
        return InfoGANGenerator(nz=spec["nz"], n_cat=spec["n_cat"], n_cont=spec["n_cont"], nc=spec["nc"],
                                image_size=spec["image_size"], ngf=spec["ngf"])
    if spec["kind"] == "mlp":
        return MLPGenerator(spec["z_dim"], spec["out_dim"], spec["width"], spec["depth"], spec["scale"])
    raise ValueError(f"ganfast.train: unknown generator kind {spec['kind']!r} in the checkpoint")


def is_conditional(G: nn.Module) -> bool:
    """A class-conditional generator (SAGAN, BigGAN): forward(z, y) with y (N,) int64 in [0, n_classes)."""
    return isinstance(getattr(G, "n_classes", None), int) and not is_infogan(G)


def sample_labels(n: int, n_classes: int, generator: torch.Generator, device) -> torch.Tensor:
    """Classes for n generated samples, uniform over the n_classes (as BigGAN-PyTorch draws them)."""
    return torch.randint(0, n_classes, (n,), generator=generator, device=device)


def balanced_labels(n: int, n_classes: int) -> torch.Tensor:
    """Class i % n_classes for sample i: every class equally often (evaluation, sample grids)."""
    return torch.arange(n) % n_classes


# ---- InfoGAN's codes ------------------------------------------------------------------------------

def is_infogan(G: nn.Module) -> bool:
    return getattr(G, "n_cat", None) is not None and callable(getattr(G, "input_vector", None))


def sample_codes(G: nn.Module, n: int, generator: torch.Generator, device, cat: Optional[int] = None):
    """InfoGAN's codes for n samples, as the paper draws them: the categorical code uniform over
    its n_cat values (or all `cat`), the continuous codes U(-1, 1). (cat (n,) int64 | None,
    cont (n, n_cont) | None)."""
    c = None
    if G.n_cat:
        if cat is None:
            c = torch.randint(0, G.n_cat, (n,), generator=generator, device=device)
        else:
            c = torch.full((n,), int(cat), dtype=torch.int64, device=device)
    elif cat is not None:
        raise ValueError("ganfast: this InfoGAN generator has no categorical code (cat_codes = 0)")
    u = torch.rand(n, G.n_cont, generator=generator, device=device) * 2 - 1 if G.n_cont else None
    return c, u
