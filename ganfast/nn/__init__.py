"""Modules built on ganfast's fused ops."""
from .bias_act import BiasAct, LeakyReLU

__all__ = ["BiasAct", "LeakyReLU"]
