"""CycleGAN's history of generated images (Shrivastava et al. 2017; pool size 50 in the CycleGAN
reference code): the discriminator sees a mix of the newest fakes and older ones, which damps the
oscillation of the two players.

For each image of a batch, while the pool holds fewer than `size` images the image is stored and
returned; once it is full, with probability 1/2 a stored image chosen uniformly is returned and the
new one takes its place, otherwise the new image is returned. The draws come from a
torch.Generator of the pool's own, and `state_dict()` holds the stored images and that generator's
state, so a resumed run draws exactly what an uninterrupted one would.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


class ImagePool:
    def __init__(self, size: int = 50, seed: int = 0) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"ganfast.train.ImagePool: size must be an integer >= 0; got {size!r}")
        self.size = size
        self.images: list[Tensor] = []
        self.generator = torch.Generator().manual_seed(seed)

    def query(self, images: Tensor) -> Tensor:
        """The batch D should see for the fakes `images` (B, C, H, W): detached, the pool updated."""
        images = images.detach()
        if self.size == 0:
            return images
        out = []
        # the draws for the whole batch at once, on the CPU generator: the same on any device
        coins = torch.rand(images.size(0), generator=self.generator).tolist()
        picks = torch.randint(0, self.size, (images.size(0),), generator=self.generator).tolist()
        for image, coin, pick in zip(images, coins, picks):
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif coin < 0.5:
                out.append(self.images[pick].clone())
                self.images[pick] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict:
        return {"size": self.size, "images": [t.cpu() for t in self.images],
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict, device: Optional[torch.device] = None) -> None:
        if state.get("size") != self.size:
            raise ValueError(f"ganfast.train.ImagePool: a pool of size {state.get('size')} cannot load into one "
                             f"of size {self.size}")
        self.images = [t.to(device) if device is not None else t for t in state["images"]]
        self.generator.set_state(state["generator"])
