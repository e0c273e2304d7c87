"""Pixels as a model sees them: dynamic binarization of training batches, the fixed binarization of
evaluation sets, 8-bit values as floats in [0, 1], and the cs236 subsets (docs/reference.md section 1)."""

from __future__ import annotations

import torch

from ..errors import DataError
from .datasets import ImageSet


def binarize(pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One Bernoulli draw per pixel: x ~ Bernoulli(pixel), with torch.bernoulli's random stream.
    The fixed evaluation sets are drawn this way, so their numbers stay comparable across versions."""
    return torch.bernoulli(pixels, generator=generator)


def model_input(images, binary: bool = True, seed: int | None = 0, device=None) -> torch.Tensor:
    """Images as a dataset gives them, as the flat float pixels a model takes.

    `images`: a tensor or numpy array, uint8 in 0..255 or float in [0, 1], of shape (N, H, W),
    (N, C, H, W) or already flat (N, D); one image without the N axis is taken as a batch of one only if
    you add it. Returns (N, D) float32 values / 255 and, for a model of binary pixels (`model.binary_pixels`),
    one Bernoulli draw of them, seeded by `seed` (None: torch's global stream) as the evaluation sets are."""
    x = torch.as_tensor(images)
    if x.ndim < 2:
        raise DataError(f"images: expected a batch (N, H, W), (N, C, H, W) or (N, D), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    elif x.is_floating_point():
        if x.numel() and bool(x.isnan().any()):  # NaN passes both range comparisons below
            raise DataError(f"images: {int(x.isnan().sum())} NaN pixels; float pixels must lie in [0, 1]")
        if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
            raise DataError("images: float pixels must lie in [0, 1] (uint8 images are divided by 255)")
        x = x.float()
    else:
        raise DataError(f"images: expected uint8 or float pixels, got {x.dtype}")
    x = x.reshape(x.shape[0], -1)
    if binary:
        x = binarize(x.cpu(), torch.Generator().manual_seed(seed) if seed is not None else None)
    return x.to(device) if device is not None else x


def binarize_batch(images: torch.Tensor) -> torch.Tensor:
    """A training batch of uint8 images (N, ...) as flattened binary float pixels (N, D): the same
    Bernoulli(pixel / 255) draw as `binarize`, taken as 1[u < pixel / 255] = 1[255 u < pixel] with
    u ~ U[0, 1), straight from the uint8 values. On the CPU a uniform draw and one comparison take a
    fraction of torch.bernoulli's time per batch (docs/performance.md). Its random stream differs
    from torch.bernoulli's, so it is used for training batches only."""
    flat = images.reshape(images.shape[0], -1)
    return torch.empty(flat.shape, device=flat.device).uniform_(0, 255).lt_(flat)


# --- The cs236 subsets (docs/reference.md section 1): positions among the images of each digit. ---
CS236_TEST_POSITIONS = (
    (684, 559, 629, 192, 835, 763, 707, 359, 9, 723),
    (277, 599, 1094, 600, 314, 705, 551, 87, 174, 849),
    (537, 845, 72, 777, 115, 976, 755, 448, 850, 99),
    (984, 177, 755, 797, 659, 147, 910, 423, 288, 961),
    (265, 697, 639, 544, 543, 714, 244, 151, 675, 510),
    (459, 882, 183, 28, 802, 128, 128, 53, 550, 488),
    (756, 273, 335, 388, 617, 42, 442, 543, 888, 257),
    (57, 291, 779, 430, 91, 398, 611, 908, 633, 84),
    (203, 324, 774, 964, 47, 639, 131, 972, 868, 180),
    (1000, 846, 143, 660, 227, 954, 791, 719, 909, 373),
)
CS236_TRAIN_LABELLED_POSITIONS = (
    (2732, 2607, 1653, 3264, 4931, 4859, 5827, 1033, 4373, 5874),
    (5924, 3468, 6458, 705, 2599, 2135, 2222, 2897, 1701, 537),
    (2893, 2163, 5072, 4851, 2046, 1871, 2496, 99, 2008, 755),
    (797, 659, 3219, 423, 3337, 2745, 4735, 544, 714, 2292),
    (151, 2723, 3531, 2930, 1207, 802, 2176, 2176, 1956, 3622),
    (3560, 756, 4369, 4484, 1641, 3114, 4984, 4353, 4071, 4009),
    (2105, 3942, 3191, 430, 4187, 2446, 2659, 1589, 2956, 2681),
    (4180, 2251, 4420, 4870, 1071, 4735, 6132, 5251, 5068, 1204),
    (3918, 1167, 1684, 3299, 2767, 2957, 4469, 560, 5425, 1605),
    (5795, 1472, 3678, 256, 3762, 5412, 1954, 816, 2435, 1634),
)


def subset_indices(labels: torch.Tensor, positions=CS236_TEST_POSITIONS) -> torch.Tensor:
    """Global indices of the images at `positions[d][j]` among the images of digit d, digits in order."""
    labels = labels.cpu()
    picked = []
    for digit, row in enumerate(positions):
        of_digit = torch.nonzero(labels == digit).flatten()
        row_t = torch.tensor(row, dtype=torch.long)
        if len(of_digit) <= int(row_t.max()):
            raise DataError(f"subset needs position {int(row_t.max())} of digit {digit}, but only {len(of_digit)} images have that label")
        picked.append(of_digit[row_t])
    return torch.cat(picked)


def cs236_test_subset(test: ImageSet, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The 100-image evaluation subset, binarized once as the reference does:
    `torch.manual_seed(0); x = torch.bernoulli(x)` on the CPU. Returns (x, y) on the set's device."""
    index = subset_indices(test.labels)
    pixels = test.pixels(index.to(test.images.device)).cpu()
    x = binarize(pixels, torch.Generator().manual_seed(seed))
    return x.to(test.images.device), test.labels[index.to(test.labels.device)]


def binarized_test_set(test: ImageSet, seed: int = 0) -> torch.Tensor:
    """The whole test set binarized once with a fixed seed (CPU generator, so it is the same on any device)."""
    if test.packed_shape is not None and test.colours is None:  # already binary: a Bernoulli draw of pixels in {0, 1} is the pixels, without a second copy
        return test.pixels()
    return binarize(test.pixels().cpu(), torch.Generator().manual_seed(seed)).to(test.images.device)
