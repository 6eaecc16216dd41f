"""Pure-PyTorch twins of every ganfast op: the test oracle and the `reference` backend."""
from . import cycle_loss, losses, orthogonal_regularization  # noqa: F401
