"""The training engine behind `ganfast train`.

    from ganfast.train import TrainConfig, Trainer, load_generator
    summary = Trainer(TrainConfig(data="ring8", objective="nonsaturating", out="runs/ring8")).fit()
    G = load_generator("runs/ring8")          # G_ema, eval mode
    x = ganfast.train.sample(G, 1000, seed=0)

Objectives: nonsaturating (default), minimax, wgan, wgan-gp, hinge, least_squares, r1.
Data: ring8, grid25, digits, folder:PATH, npy:PATH. See TrainConfig for every option.
"""
from .checkpoint import CheckpointError, load_checkpoint
from .config import DATASETS, TrainConfig
from .data import Dataset, load_dataset
from .metrics import class_metrics, mode_metrics
from .models import MLPDiscriminator, MLPGenerator
from .objectives import OBJECTIVES, get_objective
from .sampling import load_generator, sample, sample_to_file
from .trainer import NonFiniteLossError, OutputDirError, Trainer

__all__ = [
    "CheckpointError",
    "DATASETS",
    "OBJECTIVES",
    "Dataset",
    "MLPDiscriminator",
    "MLPGenerator",
    "NonFiniteLossError",
    "OutputDirError",
    "TrainConfig",
    "Trainer",
    "class_metrics",
    "get_objective",
    "load_checkpoint",
    "load_dataset",
    "load_generator",
    "mode_metrics",
    "sample",
    "sample_to_file",
]
