"""The training engine (ganfast.train): every objective, exact resume, atomic checkpoints, the
metrics on samples whose answer is known, data sets and bad input.

Runs are tiny (a few steps of 32-wide MLPs) so the whole file stays within seconds per test."""
import json
import math
import os
import warnings

import numpy as np
import pytest
import torch

import ganfast
from ganfast.train import (OBJECTIVES, NonFiniteLossError, OutputDirError, TrainConfig, Trainer, class_metrics,
                           load_checkpoint, load_dataset, load_generator, mode_metrics, sample)
from ganfast.train import checkpoint as ckpt_mod
from ganfast.train.data import grid25, ring8

# tiny models: one intra-op thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


TINY = dict(width=32, depth=2, batch_size=16, eval_samples=200, progress=False, log_every=1)


def tiny(tmp_path, name="run", **kw) -> TrainConfig:
    values = dict(TINY, steps=6, eval_every=1000, out=str(tmp_path / name))
    values.update(kw)
    return TrainConfig(**values)


def rows_of(out) -> list:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def loss_rows(out) -> list:
    keys = ("step", "loss_d", "loss_g", "d_real", "d_fake", "penalty")
    return [{k: r[k] for k in keys if k in r} for r in rows_of(out) if "loss_d" in r]


# ---- every objective ----------------------------------------------------------------------------


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_every_objective_trains_on_ring8(tmp_path, objective):
    cfg = tiny(tmp_path, objective=objective, steps=4, eval_every=4, r1_every=2)
    summary = Trainer(cfg).fit()
    out = cfg.out
    for name in ("config.toml", "checkpoint.pt", "metrics.jsonl", "samples.png", "training.png", "summary.json"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert os.path.isfile(os.path.join(out, "samples", "step_000004.png"))
    rows = rows_of(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert math.isfinite(r["loss_d"]) and math.isfinite(r["loss_g"])
    obj = OBJECTIVES[objective]
    if obj.loss in ("minimax", "nonsaturating"):
        assert all(abs(r["jsd"] - (math.log(4) - r["loss_d"]) / 2) < 1e-12 for r in rows)
    if obj.loss == "wasserstein":
        assert all(abs(r["wasserstein"] - (r["d_real"] - r["d_fake"])) < 1e-12 for r in rows)
    if obj.gp_weight or obj.r1_gamma:
        assert any(r["penalty"] > 0 for r in rows)
    if obj.clip:
        D = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)["D"]
        assert max(float(v.abs().max()) for k, v in D.items() if k.startswith("net.")) <= obj.clip
    m = summary["metrics_ema"]
    assert m["n_modes"] == 8 and 0 <= m["modes"] <= 8 and 0 <= m["high_quality"] <= 1
    assert rows[-1]["eval"] == m
    assert summary["steps"] == 4


def test_objective_defaults_resolved():
    c = TrainConfig(objective="wgan-gp", data="digits").resolve()
    assert (c.d_steps, c.optimizer, c.lr_d, c.lr_g, c.betas, c.gp_weight) == (5, "adam", 1e-4, 1e-4, (0.0, 0.9), 10.0)
    # on 2-D points, the WGAN-GP paper's toy settings; explicit values win
    for data in ("ring8", "grid25"):
        c = TrainConfig(objective="wgan-gp", data=data).resolve()
        assert (c.lr_d, c.betas, c.gp_weight) == (1e-4, (0.5, 0.9), 0.1)
    c = TrainConfig(objective="wgan-gp", data="ring8", gp_weight=10.0, betas=(0.0, 0.9)).resolve()
    assert (c.betas, c.gp_weight) == ((0.0, 0.9), 10.0)
    assert TrainConfig(objective="wgan-gp", data="grid25", gp_weight=0.0).resolve().gp_weight == 0.0
    assert TrainConfig(objective="wgan-gp", data="npy:x.npy").resolve(points=True).gp_weight == 0.1
    c = TrainConfig(objective="nonsaturating", data="digits").resolve()
    assert (c.d_steps, c.optimizer, c.lr_d, c.betas, c.gp_weight, c.clip) == (1, "adam", 2e-4, (0.5, 0.999), 0.0, 0.0)
    # the 2-D MLPs: 1e-3 for the Adam-2e-4 objectives (measured, see objectives.py)
    assert TrainConfig(objective="hinge", data="grid25").resolve().lr_g == 1e-3
    assert TrainConfig(objective="wgan-gp", data="ring8").resolve().lr_g == 1e-4
    c = TrainConfig(objective="wgan").resolve()
    assert (c.d_steps, c.optimizer, c.clip) == (5, "rmsprop", 0.01)
    c = TrainConfig(objective="wgan-gp", lr=3e-4, d_steps=2, lr_g=1e-3).resolve()
    assert (c.d_steps, c.lr_d, c.lr_g) == (2, 3e-4, 1e-3)
    c = TrainConfig(data="digits").resolve()
    assert (c.z_dim, c.batch_size) == (128, 64)
    assert TrainConfig(data="ring8").resolve().z_dim == 8 and TrainConfig(data="grid25").resolve().z_dim == 2


def test_default_steps_per_data_set_and_an_explicit_one_wins():
    from ganfast.train.config import DEFAULT_STEPS

    assert TrainConfig().steps is None  # decided by the data when the run starts
    for data, steps in (("ring8", 8000), ("grid25", 8000), ("digits", 4000), ("folder:x", 4000), ("npy:x", 4000)):
        c = TrainConfig(data=data).resolve()
        assert c.steps == steps == DEFAULT_STEPS[{"folder": "images", "npy": "images"}.get(data[:-2], data)]
        assert c.eval_every == steps // 5 and c.noise_anneal == steps // 2
    assert TrainConfig(data="npy:x").resolve(points=True).steps == 8000
    assert TrainConfig(data="digits", steps=123).resolve().steps == 123
    # the models with defaults of their own (config.py says why)
    assert TrainConfig(data="digits", model="infogan").resolve().steps == 2000
    assert TrainConfig(data="cycle:digits,digits-bold", model="cyclegan").resolve().steps == 1000


def test_losses_go_through_ganfast_losses(tmp_path, monkeypatch):
    """Every D and G loss of a run is computed by ganfast.losses (and penalties by ganfast.penalty)."""
    calls = {"d": 0, "g": 0, "p": 0}
    real_d, real_g, real_p = ganfast.losses.discriminator_loss, ganfast.losses.generator_loss, \
        ganfast.penalty.gradient_penalty

    def d(*a, **k):
        calls["d"] += 1
        return real_d(*a, **k)

    def g(*a, **k):
        calls["g"] += 1
        return real_g(*a, **k)

    def p(*a, **k):
        calls["p"] += 1
        return real_p(*a, **k)

    monkeypatch.setattr(ganfast.losses, "discriminator_loss", d)
    monkeypatch.setattr(ganfast.losses, "generator_loss", g)
    monkeypatch.setattr(ganfast.penalty, "gradient_penalty", p)
    Trainer(tiny(tmp_path, objective="wgan-gp", steps=3, d_steps=2)).fit()
    assert calls == {"d": 6, "g": 3, "p": 6}


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_runs_on_other_backends(tmp_path, backend):
    if backend == "triton" and not ganfast.available_backends()["triton"].available:
        pytest.fail(f"the triton backend should run here: {ganfast.available_backends()['triton'].detail}")
    summary = Trainer(tiny(tmp_path, objective="wgan-gp", steps=2, d_steps=1, backend=backend)).fit()
    assert summary["backend"] == backend
    assert all(math.isfinite(r["loss_d"]) for r in rows_of(tiny(tmp_path).out))


def test_options_label_smoothing_instance_noise_uniform_latent_no_ema(tmp_path):
    cfg = tiny(tmp_path, steps=3, label_smoothing=0.1, instance_noise=0.2, latent="uniform", ema=0.0,
               lr_decay=False, amp="bf16")
    Trainer(cfg).fit()
    ck = load_checkpoint(cfg.out)
    # ema = 0: G_ema is G
    for k, v in ck["G"].items():
        assert torch.equal(v, ck["G_ema"][k]), k
    assert ck["config"]["latent"] == "uniform"


def test_ema_is_moving_average(tmp_path):
    cfg = tiny(tmp_path, steps=3, ema=0.5)
    Trainer(cfg).fit()
    ck = load_checkpoint(cfg.out)
    assert any(not torch.equal(v, ck["G_ema"][k]) for k, v in ck["G"].items())


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_digits_dcgan(tmp_path, backend):
    # ganfast.nn's DCGAN models on the fused CPU kernels (auto) and on pure PyTorch (reference)
    cfg = tiny(tmp_path, data="digits", steps=2, eval_every=2, ngf=8, ndf=8, backend=backend)
    summary = Trainer(cfg).fit()
    m = summary["metrics_ema"]
    assert m["n_classes"] == 10 and 0 <= m["classes"] <= 10 and 0 <= m["kl_uniform"] <= math.log(10) + 1e-9
    G = load_generator(cfg.out)
    x = sample(G, 5, seed=0)
    assert x.shape == (5, 1, 32, 32) and x.abs().max() <= 1


# ---- exact resume -------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [
    dict(objective="wgan-gp", d_steps=2, instance_noise=0.3),              # global RNG (interpolation) + gen
    dict(objective="r1", r1_every=3, label_smoothing=0.1, ema=0.9),
])
def test_resume_equals_uninterrupted(tmp_path, kw):
    full = tiny(tmp_path, "full", steps=12, ckpt_every=4, eval_every=6, **kw)
    Trainer(full).fit()

    part = tiny(tmp_path, "part", steps=12, ckpt_every=4, eval_every=6, **kw)
    Trainer(part).fit(until=5)  # stops after step 5 as if interrupted: checkpoint at step 5
    assert load_checkpoint(part.out)["step"] == 5
    # a fresh process: every global random stream somewhere else
    torch.manual_seed(12345)
    np.random.seed(1)
    import random
    random.seed(2)
    Trainer(TrainConfig(out=part.out, resume=True, progress=False)).fit()

    a, b = loss_rows(full.out), loss_rows(part.out)
    assert [r["step"] for r in a] == list(range(1, 13))
    assert a == b  # bit-exact losses after resuming
    ra, rb = rows_of(full.out), rows_of(part.out)
    assert [r.get("eval") for r in ra] == [r.get("eval") for r in rb]
    ca, cb = load_checkpoint(full.out), load_checkpoint(part.out)
    for key in ("G", "D", "G_ema"):
        for name, v in ca[key].items():
            assert torch.equal(v, cb[key][name]), (key, name)


def test_resume_after_interrupt_drops_rows_past_checkpoint(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, steps=10, ckpt_every=4)
    Trainer(cfg).fit()
    reference = loss_rows(cfg.out)

    cfg2 = tiny(tmp_path, "b", steps=10, ckpt_every=4)
    tr = Trainer(cfg2)
    orig = tr._train_step

    def step():
        if tr.step == 6:  # Ctrl-C during step 7: rows 5 and 6 are logged, the checkpoint is at 4
            raise KeyboardInterrupt
        orig()

    tr._train_step = step
    with pytest.raises(KeyboardInterrupt):
        tr.fit()
    assert load_checkpoint(cfg2.out)["step"] == 4
    assert [r["step"] for r in rows_of(cfg2.out)] == [1, 2, 3, 4, 5, 6]
    Trainer(TrainConfig(out=cfg2.out, resume=True, progress=False)).fit()
    assert loss_rows(cfg2.out) == reference


def test_resume_can_extend_steps_but_not_change_the_model(tmp_path):
    cfg = tiny(tmp_path, steps=3)
    Trainer(cfg).fit()
    s = Trainer(TrainConfig(out=cfg.out, resume=True, steps=5, progress=False)).fit()
    assert s["steps"] == 5 and s["trained_steps_this_run"] == 2
    # the CLI names what it was given: --steps equal to the default still applies on resume
    s = Trainer(TrainConfig(out=cfg.out, resume=True, steps=8000, progress=False, log_every=1000, eval_every=10000),
                explicit={"out", "resume", "steps", "progress"}).fit(until=6)
    assert s["steps"] == 6
    assert load_checkpoint(cfg.out)["config"]["steps"] == 8000
    with pytest.raises(ValueError, match="objective='hinge'"):
        Trainer(TrainConfig(out=cfg.out, resume=True, objective="hinge", progress=False)).fit()


# ---- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_interrupted_mid_write_keeps_previous(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, steps=8, ckpt_every=4)
    tr = Trainer(cfg)
    real_save = torch.save
    state = {"n": 0}

    def crashing_save(obj, f, *a, **k):
        state["n"] += 1
        if state["n"] == 2:  # the second checkpoint: half written, then the process "dies"
            f.write(b"PK\x03\x04 partial checkpoint bytes")
            f.flush()
            raise KeyboardInterrupt
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt_mod.torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        tr.fit()
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    ck = load_checkpoint(cfg.out)
    assert ck["step"] == 4
    assert [p for p in os.listdir(cfg.out) if p.endswith(".tmp")] == []  # the partial file is gone
    # and a resume from it finishes the run
    Trainer(TrainConfig(out=cfg.out, resume=True, progress=False)).fit()
    assert load_checkpoint(cfg.out)["step"] == 8


def _whole_checkpoint(step):
    """A dict with every part load_checkpoint requires (the values are not a real run's)."""
    keys = ckpt_mod.REQUIRED_KEYS + ckpt_mod.GAN_KEYS
    return {"format": ckpt_mod.FORMAT, "step": step, **{k: {} for k in keys if k != "step"}}


def test_leftover_temp_file_and_truncated_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    ckpt_mod.save_atomic(_whole_checkpoint(1), path)
    # a crash after mkstemp (kill -9): a stray temp file beside a whole checkpoint
    (tmp_path / ".checkpoint.pt.abc.tmp").write_bytes(b"garbage")
    assert load_checkpoint(tmp_path)["step"] == 1
    ckpt_mod.save_atomic(_whole_checkpoint(2), path)
    assert load_checkpoint(path)["step"] == 2
    path.write_bytes(path.read_bytes()[:50])  # a file truncated by something else
    with pytest.raises(ValueError, match="is not a ganfast checkpoint or is damaged: torch.load cannot read its 50 "
                                         "bytes, so it is truncated"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nothing")


def test_nan_loss_stops_run_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, steps=20, ckpt_every=5, log_every=3)
    real = ganfast.losses.discriminator_loss
    n = {"calls": 0}

    def poisoned(*a, **k):
        n["calls"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if n["calls"] == 8 else loss  # the D loss of step 8

    monkeypatch.setattr(ganfast.losses, "discriminator_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match="at step 8") as info:
        Trainer(cfg).fit()
    assert info.value.step == 8
    ck = load_checkpoint(cfg.out)
    assert ck["step"] == 5
    assert all(math.isfinite(v) for p in ck["G"].values() for v in p.flatten().tolist())
    assert max(r["step"] for r in rows_of(cfg.out)) <= 6


# ---- the generator ------------------------------------------------------------------------------


def test_load_generator_is_g_ema(tmp_path):
    cfg = tiny(tmp_path, steps=3, ema=0.9)
    tr = Trainer(cfg)
    tr.fit()
    G = load_generator(cfg.out)
    assert not G.training and G.z_dim == 8 and G.trained_steps == 3
    z = torch.randn(7, 8)
    with torch.no_grad():
        assert torch.equal(G(z), tr.G_ema(z))
        assert not torch.equal(load_generator(cfg.out, ema=False)(z), G(z))
    a, b = sample(G, 10, seed=3), sample(G, 10, seed=3)
    assert a.shape == (10, 2) and torch.equal(a, b)
    with pytest.raises(ValueError, match="positive integer"):
        sample(G, 0)


# ---- metrics on samples whose answer is known ---------------------------------------------------


def test_mode_metrics_known_answer():
    ds = ring8()
    modes, std = ds.modes, ds.mode_std
    g = torch.Generator().manual_seed(0)
    # 100 samples at each of modes 0, 3, 5 within 2 std; 50 samples 5 std from mode 1; 50 at the origin
    near = [modes[i] + 2 * std * torch.nn.functional.normalize(torch.randn(100, 2, generator=g), dim=1)
            for i in (0, 3, 5)]
    far = modes[1] + 5 * std * torch.nn.functional.normalize(torch.randn(50, 2, generator=g), dim=1)
    origin = torch.zeros(50, 2)
    m = mode_metrics(torch.cat(near + [far, origin]), modes, std)
    assert m["modes"] == 3 and m["n_modes"] == 8
    assert m["high_quality"] == pytest.approx(300 / 400)
    assert m["per_mode"] == [100, 0, 0, 100, 0, 100, 0, 0]
    # every mode, one sample exactly on it; NaN samples are never high quality
    x = torch.cat([modes, torch.full((8, 2), float("nan"))])
    m = mode_metrics(x, modes, std)
    assert (m["modes"], m["high_quality"]) == (8, 0.5)
    # the boundary: 2.99 std is high quality, 3.01 is not
    d = torch.tensor([[2.99 * std, 0.0], [3.01 * std, 0.0]])
    m = mode_metrics(modes[2] + d, modes, std)
    assert (m["modes"], m["high_quality"]) == (1, 0.5)


def test_mode_metrics_grid25_real_data_is_perfect():
    ds = grid25()
    x = ds.sample(2500, torch.Generator().manual_seed(0))
    m = mode_metrics(x, ds.modes, ds.mode_std)
    assert m["modes"] == 25
    assert m["high_quality"] > 0.98  # 3 std of a 2-D Gaussian hold 98.9% of it
    # a generator stuck on one mode
    m = mode_metrics(ds.modes[7] + 0.01 * torch.randn(2500, 2), ds.modes, ds.mode_std)
    assert (m["modes"], m["high_quality"]) == (1, 1.0)


def test_class_metrics_known_answer():
    eye = np.eye(10)
    m = class_metrics(np.repeat(eye, 5, axis=0))  # every class equally often, all confident
    assert (m["classes"], m["confident"]) == (10, 1.0) and m["kl_uniform"] == pytest.approx(0.0, abs=1e-12)
    m = class_metrics(np.repeat(eye[[4]], 50, axis=0))  # one class only
    assert m["classes"] == 1 and m["kl_uniform"] == pytest.approx(math.log(10))
    # two classes half and half, one of them never confident
    p = np.zeros((4, 10))
    p[:2, 1] = 0.95
    p[:2, 0] = 0.05
    p[2:, 2] = 0.5
    p[2:, 3] = 0.5 - 1e-9
    m = class_metrics(p)
    assert m["classes"] == 1 and m["kl_uniform"] == pytest.approx(math.log(5)) and m["confident"] == 0.5


def test_digits_classifier_on_the_data():
    from ganfast.train.metrics import DigitClassifier

    ds = load_dataset("digits")
    assert ds.points.shape == (1797, 1, 32, 32) and ds.points.min() >= -1 and ds.points.max() <= 1
    clf = DigitClassifier(ds.points, ds.labels)
    assert clf.train_accuracy > 0.95
    m = class_metrics(clf.predict_proba(ds.points))
    assert m["classes"] == 10 and m["kl_uniform"] < 0.01


# ---- data ---------------------------------------------------------------------------------------


def test_mixtures():
    ds = ring8()
    assert torch.allclose(ds.modes.norm(dim=1), torch.ones(8)) and ds.mode_std == 0.01
    ds = grid25()
    assert sorted(set(ds.modes[:, 0].tolist())) == [-4, -2, 0, 2, 4] and ds.mode_std == 0.05
    x = ds.sample(10000, torch.Generator().manual_seed(0))
    assert (x - ds.modes[torch.cdist(x, ds.modes).argmin(1)]).std().item() == pytest.approx(0.05, rel=0.05)


def test_folder_skips_unreadable_images(tmp_path):
    from PIL import Image

    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 30), (255, 0, 0)).save(d / "a.png")
    Image.new("L", (16, 16), 128).save(d / "sub" / "b.jpg")
    (d / "broken.png").write_bytes(b"not an image")
    (d / "empty.jpeg").write_bytes(b"")
    (d / "notes.txt").write_text("ignored")
    with pytest.warns(UserWarning, match="skipped 2 unreadable image file"):
        ds = load_dataset(f"folder:{d}", image_size=32)
    assert ds.points.shape == (2, 3, 32, 32) and ds.skipped == 2
    red = ds.points[0]
    assert red[0].min() > 0.99 and red[1].max() < -0.99  # red, in [-1, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gray = load_dataset(f"folder:{d}", image_size=32, channels=1)
    assert gray.points.shape == (2, 1, 32, 32)
    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(ValueError, match="no readable PNG/JPEG images"):
        load_dataset(f"folder:{empty}")
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        load_dataset(f"folder:{tmp_path / 'missing'}")


def test_npy_points_and_images(tmp_path):
    pts = np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32) * 3
    np.save(tmp_path / "p.npy", pts)
    ds = load_dataset(f"npy:{tmp_path / 'p.npy'}")
    assert not ds.is_image and ds.shape == (2,) and ds.scale == pytest.approx(float(np.abs(pts).max()))
    imgs = np.random.default_rng(0).integers(0, 256, size=(5, 16, 16, 3), dtype=np.uint8)  # NHWC
    np.save(tmp_path / "i.npy", imgs)
    ds = load_dataset(f"npy:{tmp_path / 'i.npy'}", image_size=32)
    assert ds.points.shape == (5, 3, 32, 32) and ds.points.min() >= -1 and ds.points.max() <= 1
    np.save(tmp_path / "bad.npy", np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        load_dataset(f"npy:{tmp_path / 'bad.npy'}")
    with pytest.raises(FileNotFoundError):
        load_dataset(f"npy:{tmp_path / 'missing.npy'}")
    # a run on the points: the 2-D defaults (batch 256, z in R^8), as for ring8 (they were the image
    # defaults, batch 64 and z in R^128, before the Trainer looked at the data first)
    t = Trainer(TrainConfig(data=f"npy:{tmp_path / 'p.npy'}", steps=2, width=16, depth=2, eval_samples=50,
                            progress=False, out=str(tmp_path / "pts")))
    t.fit()
    assert (t.cfg.batch_size, t.cfg.z_dim) == (256, 8)


# ---- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, match", [
    (dict(objective="wgan-qp"), "unknown objective 'wgan-qp'; choose one of nonsaturating, minimax, wgan, wgan-gp"),
    (dict(data="mnist"), "unknown data set 'mnist'; choose one of ring8, grid25, digits, digits-bold, folder:PATH, npy:PATH, cycle:A,B"),
    (dict(data="folder:"), "needs a path"),
    (dict(backend="tpu"), "unknown backend 'tpu'; choose one of auto, cuda, triton, cpu, reference"),
    (dict(steps=0), "steps must be a positive integer"),
    (dict(lr=-1.0), "lr must be a finite number >= 0"),
    (dict(objective="hinge", label_smoothing=0.1), "has no labels"),
    (dict(resume=True, overwrite=True), "exclude each other"),
    (dict(image_size=48), "image_size must be one of 32, 64, 128"),
    (dict(betas=(0.5,)), "betas must be two numbers"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**kw).validate()


def test_bad_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('objective = "hinge"\nstepz = 3\n')
    with pytest.raises(ValueError, match="unknown key.*stepz"):
        TrainConfig.from_toml(p)
    p.write_text('[train]\nobjective = "hinge"\nsteps = 3\nbetas = [0.1, 0.2]\n')
    c = TrainConfig.from_toml(p)
    assert (c.objective, c.steps, c.betas) == ("hinge", 3, (0.1, 0.2))
    p.write_text("objective = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        TrainConfig.from_toml(p)
    # the resolved config a run writes reads back to itself
    c = TrainConfig(objective="wgan-gp", out=str(tmp_path / 'x')).resolve()
    (tmp_path / "r.toml").write_text(c.to_toml())
    assert TrainConfig.from_toml(tmp_path / "r.toml") == c


def test_existing_output_directory(tmp_path):
    cfg = tiny(tmp_path, steps=2)
    Trainer(cfg).fit()
    with pytest.raises(OutputDirError, match="already exists.*--resume.*--overwrite"):
        Trainer(cfg).fit()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    Trainer(cfg.replace(overwrite=True, seed=1)).fit()
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"  # --overwrite removes only run files
    assert load_checkpoint(cfg.out)["config"]["seed"] == 1
    with pytest.raises(OutputDirError, match="nothing to resume"):
        Trainer(tiny(tmp_path, "fresh", resume=True)).fit()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirError, match="not a directory"):
        Trainer(tiny(tmp_path, "file")).fit()


def test_threads_are_the_runs_own_and_restored(tmp_path, monkeypatch):
    """threads=0: one thread for 2-D data during the run; threads=N: N; torch's setting is
    restored afterwards either way."""
    seen = []
    step = Trainer._train_step

    def spy(self):
        seen.append(torch.get_num_threads())
        return step(self)

    monkeypatch.setattr(Trainer, "_train_step", spy)
    torch.set_num_threads(2)
    try:
        Trainer(tiny(tmp_path, "auto", steps=2)).fit()
        assert seen == [1, 1] and torch.get_num_threads() == 2
        seen.clear()
        torch.set_num_threads(1)
        Trainer(tiny(tmp_path, "two", steps=2, threads=2)).fit()
        assert seen == [2, 2] and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(1)
    with pytest.raises(ValueError, match="threads must be an integer >= 0"):
        TrainConfig(threads=-1).validate()


def test_fp16_needs_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the CPU-only error does not apply")
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        Trainer(tiny(tmp_path, amp="fp16", device="cpu")).fit()
