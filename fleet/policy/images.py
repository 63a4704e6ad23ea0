"""Camera images as networks take them: uint8 HWC RGB from the robot -> float NCHW in [0, 1].

Shared by every method's policy and network tests, so that a frame means the same to each.
"""
from __future__ import annotations

import numpy as np
import torch


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 images (N, H, W, C) or (H, W, C) -> float tensor (N, C, H, W) in [0, 1]."""
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {a.dtype}")
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C) or (H, W, C), got shape {a.shape}")
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float().div_(255.0)
