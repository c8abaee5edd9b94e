"""Optional CIFAR-10 augmentation on normalised, CHW-flattened batches, with torch ops only.

`crop` is a random resized crop (torchvision's defaults: area scale (0.08, 1), aspect ratio (3/4, 4/3),
log-uniform ratio, bilinear resize back to 32×32); `crop_flip` adds a horizontal flip with p = 0.5.
Vectorised over the batch with `affine_grid`/`grid_sample`: instead of torchvision's rejection sampling,
a crop side that would exceed the image is clamped to it. Works on normalised data because bilinear
resampling commutes with the per-channel affine normalisation.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from revgn_cli.devices import to_device

from .base import DataError

AUGMENTATIONS = ("none", "crop", "crop_flip")
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
_SHAPES = {"cifar10": (3, 32, 32)}


def random_resized_crop(
    x: torch.Tensor,
    g: torch.Generator,
    shape: tuple[int, int, int],
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = False,
) -> torch.Tensor:
    """Augment a batch [B, C*H*W]; all randomness comes from `g` (on g's device), so it is reproducible."""
    b = x.shape[0]
    c, h, w = shape
    # Drawn on g's device (the host for the training loop's generators: the same crops on every device), then
    # queued to x's device without a host sync.
    u = to_device(torch.rand(b, 5, generator=g, device=g.device, dtype=torch.float64), x.device)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    r = torch.exp(log_r)
    fw = torch.sqrt(area * r).clamp(max=1.0)  # crop width / image width
    fh = torch.sqrt(area / r).clamp(max=1.0)
    # crop centre in normalised [-1, 1] coordinates, keeping the crop inside the image
    cx = (2 * u[:, 2] - 1) * (1 - fw)
    cy = (2 * u[:, 3] - 1) * (1 - fh)
    sx = torch.where(u[:, 4] < 0.5, -fw, fw) if flip else fw
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2] = sx, cx
    theta[:, 1, 1], theta[:, 1, 2] = fh, cy
    img = x.reshape(b, c, h, w)
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(b, c * h * w)


def make_augment(name: str, kind: str | None) -> Augment | None:
    """The augmentation `kind` for dataset `name`, or None for None/"none". Only cifar10 has any."""
    if kind is None or str(kind).lower() == "none":
        return None
    kind = str(kind).lower()
    if kind not in AUGMENTATIONS:
        raise DataError(f"unknown augmentation {kind!r}; valid: {', '.join(AUGMENTATIONS)}")
    if name not in _SHAPES:
        raise DataError(f"augmentation {kind!r} is only supported for {', '.join(_SHAPES)}, not {name!r}")
    shape, flip = _SHAPES[name], kind == "crop_flip"

    def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return random_resized_crop(x, g, shape, flip=flip)

    return augment
