"""CycleGAN's training loop (Zhu et al. 2017), as the reference code runs it
(junyanz/pytorch-CycleGAN-and-pix2pix, `cycle_gan_model.py`), on ganfast's kernels:

    G_AB: A -> B and G_BA: B -> A (ResNet generators), D_A and D_B (PatchGAN discriminators).
    Each iteration, one real batch of each domain, then
      generators: L_GAN(D_B(G_AB(a))) + L_GAN(D_A(G_BA(b)))
                  + cycle_weight * (|G_BA(G_AB(a)) - a|_1 + |G_AB(G_BA(b)) - b|_1)
                  + identity_weight * cycle_weight * (|G_AB(b) - b|_1 + |G_BA(a) - a|_1)
      discriminators (D's weights free again): D_A on real a against a fake of the history pool of
                  G_BA's images, D_B likewise; each D's loss halved (the reference's "slows down D").

Both cycle terms go through one `ganfast.losses.cycle_loss` launch each way (a list of pairs), both
identity terms through another; each discriminator's real and fake batches through D in one pass
(`ganfast.steps.discriminator_step_loss`: InstanceNorm is per sample, so D is not batch-coupled);
the InstanceNorm + activation of every layer is one `ganfast.ops.instance_norm_act`.

LSGAN (the default objective, least_squares) as the reference: D minimises ((D(x) - 1)^2 + D(G(a))^2) / 2,
G minimises (D(G(a)) - 1)^2 (ganfast's least_squares generator loss is half that, so it is doubled
here). Adam 2e-4, betas (0.5, 0.999), constant learning rates for the first half and a linear decay
to 0 over the second (the reference's n_epochs = n_epochs_decay). No moving average of G: the
reference has none.

Output directory (besides the Trainer's config.toml, checkpoint.pt, metrics.jsonl, training.png,
summary.json): translations.png (rows: a, G_AB(a), G_BA(G_AB(a)); b, G_BA(b), G_AB(G_BA(b)) on held-out
images) and samples/step_NNNNNN.png, the same grid during training.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .. import losses, steps
from . import plots
from .checkpoint import CHECKPOINT_NAME, CheckpointError, first_line, load_state, save_atomic
from .data import CycleData, DataSampler, load_cycle_data
from .metrics import DigitClassifier, frechet_distance
from .objectives import get_objective
from .distributed import wrap
from .pool import ImagePool
from .trainer import (QUALITY_SAMPLES, NonFiniteLossError, Trainer, _merge_resume, _resolve_device,
                      global_rng_state, restore_global_rng_state, seeded_choice)

# Loss terms of a step, in the order _train_step stacks them.
TERMS = ("loss_d_a", "loss_d_b", "loss_g_gan", "cycle", "identity", "d_real", "d_fake")
# Held-out images shown per domain in translations.png.
GRID_COLUMNS = 8


def cyclegan_spec(cfg, data: CycleData) -> dict:
    """What `ganfast translate` needs to rebuild both generators without the data."""
    return {"kind": "cyclegan", "a_channels": data.a.shape[0], "b_channels": data.b.shape[0], "ngf": cfg.ngf,
            "n_blocks": cfg.n_blocks, "image_size": data.a.shape[1], "domains": [data.a.name, data.b.name]}


def generators_from_spec(spec: dict):
    """(G_AB, G_BA) of a cyclegan model description."""
    from ..nn import ResnetGenerator

    a, b = spec["a_channels"], spec["b_channels"]
    return (ResnetGenerator(a, b, spec["ngf"], spec["n_blocks"]),
            ResnetGenerator(b, a, spec["ngf"], spec["n_blocks"]))


class CycleGANTrainer(Trainer):
    """The Trainer for model = "cyclegan" (Trainer(config) returns one for such a config)."""

    # ---- setup ------------------------------------------------------------------------------

    def _setup(self, ckpt: Optional[dict]) -> None:
        from ..nn import PatchDiscriminator

        given = self.config
        if ckpt is not None:
            given = _merge_resume(given, ckpt["config"], self.out, self.explicit)
        data = load_cycle_data(given.data, given.image_size, given.channels)
        self.dataset = data
        cfg = given.resolve(points=False)
        self.cfg = cfg
        self.objective = get_objective(cfg.objective)
        world = self.world
        self.device = world.device(_resolve_device(cfg.device))  # one GPU per process
        world.check_batch(cfg.batch_size)
        if cfg.amp != "none":
            raise ValueError("ganfast.train: cyclegan trains in float32 (amp 'none'); mixed precision is not "
                             "supported for it yet")
        a_ch, b_ch = data.a.shape[0], data.b.shape[0]
        if cfg.identity_weight > 0 and a_ch != b_ch:
            raise ValueError(f"ganfast.train: the identity loss feeds domain B's images to G_AB (and A's to G_BA), "
                             f"so both domains need the same channels; got A {a_ch}, B {b_ch}: pass "
                             f"--identity-weight 0 or --channels 1 / 3")
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        torch.manual_seed(cfg.seed)
        self.G_AB, self.G_BA = (g.to(self.device) for g in generators_from_spec(cyclegan_spec(cfg, data)))
        self.D_A = PatchDiscriminator(a_ch, cfg.ndf, cfg.d_layers).to(self.device)
        self.D_B = PatchDiscriminator(b_ch, cfg.ndf, cfg.d_layers).to(self.device)
        size = data.a.shape[1]
        if size < self.D_A.min_size():
            raise ValueError(f"ganfast.train: d_layers={cfg.d_layers} needs images of at least "
                             f"{self.D_A.min_size()}x{self.D_A.min_size()}; got {size}x{size}")
        # one optimizer for both generators and one for both discriminators, as the reference
        g_params = list(self.G_AB.parameters()) + list(self.G_BA.parameters())
        d_params = list(self.D_A.parameters()) + list(self.D_B.parameters())
        self.opt_g = torch.optim.Adam(g_params, lr=cfg.lr_g, betas=cfg.betas)
        self.opt_d = torch.optim.Adam(d_params, lr=cfg.lr_d, betas=cfg.betas)
        shard = world.shard(cfg.batch_size)
        self.sampler_a = DataSampler(data.a, cfg.batch_size, cfg.seed + 2, self.device, shard=shard)
        self.sampler_b = DataSampler(data.b, cfg.batch_size, cfg.seed + 5, self.device, shard=shard)
        self.pool_a = ImagePool(cfg.pool_size, seed=cfg.seed + 3)  # G_BA's images, for D_A
        self.pool_b = ImagePool(cfg.pool_size, seed=cfg.seed + 4)  # G_AB's images, for D_B
        # content preservation: a classifier fitted to each labelled domain's training images
        self.classifier_a = self.classifier_b = None
        if data.a.labels is not None and data.b.labels is not None:
            self.classifier_a = DigitClassifier(data.a.points, data.a.labels)
            self.classifier_b = DigitClassifier(data.b.points, data.b.labels)
        # what the Trainer's shared code reads
        self.G, self.D, self.G_ema, self.info = self.G_AB, self.D_B, None, False
        self.step = 0
        self.rows: list[dict] = []
        if ckpt is not None:
            self._restore(ckpt)
        # the training steps' modules: DistributedDataParallel wrappers across processes (InstanceNorm is
        # per sample: nothing to synchronise)
        self.G_AB_train, self.G_BA_train, self.D_A_train, self.D_B_train = (
            wrap(m, world, self.device) for m in (self.G_AB, self.G_BA, self.D_A, self.D_B))

    # ---- one iteration ----------------------------------------------------------------------

    def _train_step(self) -> None:
        cfg, obj = self.cfg, self.objective
        t = self.step
        factor = min(1.0, 2.0 * (cfg.steps - t) / cfg.steps) if cfg.lr_decay else 1.0
        for opt, lr in ((self.opt_d, cfg.lr_d), (self.opt_g, cfg.lr_g)):
            for group in opt.param_groups:
                group["lr"] = lr * factor
        real_a, real_b = self.sampler_a.next(), self.sampler_b.next()
        # ganfast's least_squares G loss is (D - 1)^2 / 2; the reference's MSE to 1 is twice that
        gan_scale = 2.0 if obj.loss == "least_squares" else 1.0

        # the generators (the discriminators' weights need no gradient here)
        self.D_A.requires_grad_(False)
        self.D_B.requires_grad_(False)
        fake_b = self.G_AB_train(real_a)
        fake_a = self.G_BA_train(real_b)
        rec_a, rec_b = self.G_BA_train(fake_b), self.G_AB_train(fake_a)
        loss_gan = gan_scale * (losses.generator_loss(self.D_B(fake_b), obj.loss)
                                + losses.generator_loss(self.D_A(fake_a), obj.loss))
        loss_cycle = losses.cycle_loss([rec_a, rec_b], [real_a, real_b], weight=cfg.cycle_weight)
        loss_g = loss_gan + loss_cycle
        loss_idt = None
        if cfg.identity_weight > 0:
            loss_idt = losses.cycle_loss([self.G_AB_train(real_b), self.G_BA_train(real_a)], [real_b, real_a],
                                         weight=cfg.cycle_weight * cfg.identity_weight)
            loss_g = loss_g + loss_idt
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()

        # the discriminators, each on real images and on a fake from its history pool
        self.D_A.requires_grad_(True)
        self.D_B.requires_grad_(True)
        out_a = steps.discriminator_step_loss(self.D_A_train, real_a, self._from_pool(self.pool_a, fake_a), obj.loss)
        out_b = steps.discriminator_step_loss(self.D_B_train, real_b, self._from_pool(self.pool_b, fake_b), obj.loss)
        # the reference halves each D's loss; ganfast's least_squares D loss already carries that 1/2
        d_scale = 1.0 if obj.loss == "least_squares" else 0.5
        loss_d = d_scale * (out_a.total + out_b.total)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()

        zero = loss_g.new_zeros(())
        self._pending.append(torch.stack([
            d_scale * out_a.total.detach(), d_scale * out_b.total.detach(), loss_gan.detach(), loss_cycle.detach(),
            loss_idt.detach() if loss_idt is not None else zero,
            (out_a.real_logits.detach().mean() + out_b.real_logits.detach().mean()) / 2,
            (out_a.fake_logits.detach().mean() + out_b.fake_logits.detach().mean()) / 2]).float())

    def _from_pool(self, pool: ImagePool, fakes: torch.Tensor) -> torch.Tensor:
        """This rank's fakes for D from the history pool: across processes the pool takes the global
        batch, in order, on every rank (the same draws and the same stored images everywhere, as one
        process's pool), and each rank keeps its slice."""
        world = self.world
        return world.local(pool.query(world.gather(fakes.detach())))

    # ---- logging ----------------------------------------------------------------------------

    def _flush(self) -> dict:
        # the mean over ranks (equal slices: the global batch's); one host sync per row
        values = self.world.mean(torch.stack(self._pending)).cpu().double()
        n = values.shape[0]
        first = self.step - n + 1
        bad = ~torch.isfinite(values[:, :5]).all(1)
        if bad.any():
            step = first + int(bad.nonzero()[0, 0])
            row = values[step - first]
            name = next(TERMS[i] for i in range(5) if not math.isfinite(row[i]))
            raise NonFiniteLossError(
                f"ganfast train: {name} is {row[TERMS.index(name)].item()} at step {step}; the run stopped. The "
                f"last good checkpoint is kept in {self.out / CHECKPOINT_NAME} (try a lower --lr)", step)
        self._pending = []
        m = dict(zip(TERMS, values.mean(0).tolist()))
        return {"step": self.step, "loss_d": m["loss_d_a"] + m["loss_d_b"],
                "loss_g": m["loss_g_gan"] + m["cycle"] + m["identity"], **m}

    def _postfix(self, row: dict) -> str:
        parts = [f"D {row['loss_d']:.3f}", f"G {row['loss_g_gan']:.3f}", f"cyc {row['cycle']:.3f}"]
        e = row.get("eval")
        if e and "content_ab" in e:
            parts.append(f"content {100 * e['content_ab']:.0f}%/{100 * e['content_ba']:.0f}%")
        return " ".join(parts)

    # ---- evaluation and pictures ------------------------------------------------------------

    @torch.no_grad()
    def _translate(self, G: torch.nn.Module, x: torch.Tensor, batch: int = 100) -> torch.Tensor:
        was_training = G.training
        G.eval()
        out = torch.cat([G(x[i:i + batch].to(self.device)).float().cpu() for i in range(0, x.shape[0], batch)])
        G.train(was_training)
        return out

    def _add_eval(self, row: dict) -> None:
        row["eval"] = self._evaluate_cycle()

    def _evaluate_cycle(self) -> dict:
        """On the held-out images of both domains: the cycle error mean |G_BA(G_AB(a)) - a| (and
        B's), the Fréchet distances of the translations from the target domain (_translated_fd), and
        on labelled domains the content preservation: the fraction of G_AB(a) that a classifier fitted
        to domain B assigns a's own label (and the reverse)."""
        data = self.dataset
        fake_b = self._translate(self.G_AB, data.a_test)
        fake_a = self._translate(self.G_BA, data.b_test)
        m = {"cycle_l1_a": float((self._translate(self.G_BA, fake_b) - data.a_test).abs().mean()),
             "cycle_l1_b": float((self._translate(self.G_AB, fake_a) - data.b_test).abs().mean()),
             "held_out": [int(data.a_test.shape[0]), int(data.b_test.shape[0])]}
        m.update(self._translated_fd(fake_b, fake_a))
        if self.classifier_b is not None:
            m["content_ab"] = float((self.classifier_b.predict_proba(fake_b).argmax(1)
                                     == data.a_test_labels.numpy()).mean())
            m["content_ba"] = float((self.classifier_a.predict_proba(fake_a).argmax(1)
                                     == data.b_test_labels.numpy()).mean())
        return m

    def _translated_fd(self, fake_b: torch.Tensor, fake_a: torch.Tensor) -> dict:
        """{"fd_ab": Fréchet distance of G_AB(held-out a) from domain B's training images, "fd_ba": the
        reverse, "fd_features": the feature network}: the real side is a seeded choice of
        min(1000, domain size) training images per domain, featurised once per run. Held-out sets are
        small (at most 200), so the values are biased upwards: compare them between runs."""
        if fake_b.shape[0] < 2 or fake_a.shape[0] < 2:
            return {}
        net = self._feature_network()
        if getattr(self, "_cycle_real_feats", None) is None:
            self._cycle_real_feats = [net(seeded_choice(d.points, QUALITY_SAMPLES, self.cfg.seed + 4111 + i))
                                      for i, d in enumerate((self.dataset.a, self.dataset.b))]
        real_a, real_b = self._cycle_real_feats
        out = {}
        for key, real, fake in (("fd_ab", real_b, fake_b), ("fd_ba", real_a, fake_a)):
            fd = frechet_distance(real, net(fake)) if real.shape[0] >= 2 else float("nan")
            out[key] = fd if math.isfinite(fd) else None
        out["fd_features"] = net.name
        return out

    def _save_samples(self, path: Path) -> None:
        """Rows: held-out a, G_AB(a), G_BA(G_AB(a)); held-out b, G_BA(b), G_AB(G_BA(b))."""
        data = self.dataset
        a, b = data.a_test[:GRID_COLUMNS], data.b_test[:GRID_COLUMNS]
        fake_b, fake_a = self._translate(self.G_AB, a), self._translate(self.G_BA, b)
        rows = [a, fake_b, self._translate(self.G_BA, fake_b), b, fake_a, self._translate(self.G_AB, fake_a)]
        if len({r.shape[1] for r in rows}) > 1:  # a grayscale and an RGB domain: show both in RGB
            rows = [r.expand(-1, 3, -1, -1) for r in rows]
        n = min(r.shape[0] for r in rows)
        plots.save_image_grid(torch.cat([r[:n] for r in rows]), path, nrow=n)

    def _save_final(self) -> None:
        self._save_samples(self.out / "translations.png")

    # ---- checkpoints ------------------------------------------------------------------------

    def _save_checkpoint(self) -> None:
        rng = {**global_rng_state(), "data_a": self.sampler_a.state_dict(), "data_b": self.sampler_b.state_dict()}
        state = {
            "format": "ganfast.train/1",
            "step": self.step,
            "config": self.cfg.to_dict(),
            "model": cyclegan_spec(self.cfg, self.dataset),
            "G_AB": self.G_AB.state_dict(), "G_BA": self.G_BA.state_dict(),
            "D_A": self.D_A.state_dict(), "D_B": self.D_B.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "pool_a": self.pool_a.state_dict(), "pool_b": self.pool_b.state_dict(),
            "rng": rng,
            "rows": len(self.rows),
            "world_size": self.world.size,
            "train_seconds": self._train_seconds(),
        }
        save_atomic(state, self.out / CHECKPOINT_NAME)

    def _restore(self, ckpt: dict) -> None:
        path = self.out / CHECKPOINT_NAME
        for what, module in (("G_AB", self.G_AB), ("G_BA", self.G_BA), ("D_A", self.D_A), ("D_B", self.D_B),
                             ("opt_g", self.opt_g), ("opt_d", self.opt_d)):
            load_state(module, ckpt[what], path, what)
        rng = ckpt["rng"]
        try:
            self.pool_a.load_state_dict(ckpt["pool_a"], self.device)
            self.pool_b.load_state_dict(ckpt["pool_b"], self.device)
            restore_global_rng_state(rng)
            self.sampler_a.load_state_dict(rng["data_a"])
            self.sampler_b.load_state_dict(rng["data_b"])
            self.step = int(ckpt["step"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(path, f"its pools, random-number states or step cannot be restored "
                                        f"({first_line(e)})") from None
        self._restore_rows(ckpt)

    # ---- the end ----------------------------------------------------------------------------

    def _summary(self, start_step: int, elapsed: float) -> dict:
        summary = super()._summary(start_step, elapsed)
        ev = next((r for r in reversed(self.rows) if "eval" in r), None)
        summary.pop("metrics_ema", None)
        summary.pop("metrics_raw", None)
        if ev is not None:
            summary["metrics"] = ev["eval"]
        return summary
