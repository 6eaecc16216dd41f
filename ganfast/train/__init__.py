"""The training engine behind `ganfast train`.

    from ganfast.train import TrainConfig, Trainer, load_generator
    summary = Trainer(TrainConfig(data="ring8", objective="nonsaturating", out="runs/ring8")).fit()
    G = load_generator("runs/ring8")          # G_ema, eval mode
    x = ganfast.train.sample(G, 1000, seed=0)

Objectives: nonsaturating (default), minimax, wgan, wgan-gp, hinge, least_squares, r1.
Data: ring8, grid25, digits, digits-bold, folder:PATH, npy:PATH; cycle:A,B for CycleGAN
(model="cyclegan": Trainer runs CycleGANTrainer's loop; translate_files applies its generators).
See TrainConfig for every option.
"""
from .checkpoint import CheckpointError, load_checkpoint
from .config import DATASETS, TrainConfig
from .cyclegan import CycleGANTrainer
from .data import CycleData, Dataset, load_cycle_data, load_dataset
from .metrics import (DigitFeatures, class_agreement, class_metrics, feature_network, frechet_distance, mode_metrics,
                      precision_recall)
from .models import MLPDiscriminator, MLPGenerator
from .objectives import OBJECTIVES, get_objective
from .sampling import load_generator, sample, sample_to_file, sample_with_labels
from .pool import ImagePool
from .trainer import NonFiniteLossError, OutputDirError, Trainer
from .translate import load_translator, translate_files

__all__ = [
    "CheckpointError",
    "CycleData",
    "CycleGANTrainer",
    "DigitFeatures",
    "DATASETS",
    "OBJECTIVES",
    "Dataset",
    "ImagePool",
    "MLPDiscriminator",
    "MLPGenerator",
    "NonFiniteLossError",
    "OutputDirError",
    "TrainConfig",
    "Trainer",
    "class_metrics",
    "feature_network",
    "frechet_distance",
    "get_objective",
    "load_checkpoint",
    "load_cycle_data",
    "load_dataset",
    "load_generator",
    "load_translator",
    "mode_metrics",
    "precision_recall",
    "sample",
    "sample_with_labels",
    "class_agreement",
    "sample_to_file",
    "translate_files",
]
