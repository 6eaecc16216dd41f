"""ganfast: fused Triton and CUDA C++ kernels for GAN training in PyTorch.

    import ganfast
    loss_d = ganfast.losses.discriminator_loss(d_real, d_fake)       # one kernel
    loss_g = ganfast.losses.generator_loss(d_fake_for_g)             # one kernel
    ganfast.available_backends()                                     # what runs here, and why
    ganfast.show_config()                                            # the install, for bug reports
"""
import torch  # noqa: F401  (the C++ library links against it)

from . import _C  # noqa: F401  registers torch.ops.ganfast.*
from . import backend, losses, nn, ops, penalty, steps
from .buildinfo import show_config
from .backend import (BackendUnavailableError, available_backends, get_backend, set_backend,
                      use_backend)

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "available_backends",
    "backend",
    "get_backend",
    "losses",
    "nn",
    "ops",
    "penalty",
    "set_backend",
    "show_config",
    "steps",
    "use_backend",
]
