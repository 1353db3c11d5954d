"""On-the-fly augmentation of whole batches on the training device (the GPU when there is one).

Images and masks go through the same random flips, scale-and-crop, and (images only) colour
changes; kornia keeps masks binary by resampling them with nearest neighbours.
"""

from __future__ import annotations

import kornia.augmentation as K

CROP_SCALE = (0.4, 1.0)  # share of the photo a crop keeps: people near and far
CROP_RATIO = (3 / 4, 4 / 3)
COLOUR_JITTER = {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.03}
COLOUR_PROBABILITY = 0.8
GREYSCALE_PROBABILITY = 0.05


def augmentation(image_size: tuple[int, int]) -> K.AugmentationSequential:
    """Random flip, resized crop back to `image_size`, and colour jitter of float [0, 1] images;
    called as `augment(images, masks)` with N x 1 x H x W float masks."""
    return K.AugmentationSequential(
        K.RandomHorizontalFlip(),
        K.RandomResizedCrop(image_size, scale=CROP_SCALE, ratio=CROP_RATIO),
        K.ColorJiggle(**COLOUR_JITTER, p=COLOUR_PROBABILITY),
        K.RandomGrayscale(p=GREYSCALE_PROBABILITY),
        data_keys=["input", "mask"],
    )
