"""On-the-fly augmentation of whole batches on the training device (the GPU when there is one).

Three levels, the recipe's `augment` setting:

- `none`: the batches as they come.
- `light`: horizontal flip; a resized crop that keeps 70-100 % of the photo and always the
  whole person (the box around the mask's pixels), grown to cover that box where the drawn crop
  is smaller; mild colour jitter. Real photos frame their person whole, so a crop that cuts
  people off teaches the network a kind of photo it will rarely see.
- `strong`: the earlier pipeline, unchanged so that earlier studies stay comparable: flip,
  any resized crop of 40-100 % of the photo (people cut off included), strong colour jitter and
  some greyscale.

Images and masks go through the same flips and crops, and (images only) colour changes; masks
are resampled with nearest neighbours, so they stay binary. Every random draw comes from
torch's global generator (on the batch's device), so a seeded run draws the same again.

kornia is imported where an augmentation is built: the recipes read the levels' names here, and
the steps that only parse parameters need not spend a second importing it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

NONE, LIGHT, STRONG = "none", "light", "strong"
AUGMENTATIONS = (NONE, LIGHT, STRONG)

Augmentation = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

CROP_RATIO = (3 / 4, 4 / 3)  # width : height of a crop, before it is resized back

# strong
CROP_SCALE = (0.4, 1.0)  # share of the photo a crop keeps: people near and far
COLOUR_JITTER = {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.03}
COLOUR_PROBABILITY = 0.8
GREYSCALE_PROBABILITY = 0.05

# light
LIGHT_CROP_SCALE = (0.7, 1.0)
LIGHT_COLOUR_JITTER = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02}
LIGHT_COLOUR_PROBABILITY = 0.5
FLIP_PROBABILITY = 0.5


def augmentation(level: str, image_size: tuple[int, int]) -> Augmentation | None:
    """The augmentation of float [0, 1] N x 3 x H x W images and N x 1 x H x W float {0, 1}
    masks at `level` (one of AUGMENTATIONS), called as `augment(images, masks)` and returning
    both, resized back to `image_size`; None for `none`."""
    if level == NONE:
        return None
    if level == LIGHT:
        return LightAugmentation(image_size)
    if level == STRONG:
        import kornia.augmentation as K

        sequence = K.AugmentationSequential(
            K.RandomHorizontalFlip(),
            K.RandomResizedCrop(image_size, scale=CROP_SCALE, ratio=CROP_RATIO),
            K.ColorJiggle(**COLOUR_JITTER, p=COLOUR_PROBABILITY),
            K.RandomGrayscale(p=GREYSCALE_PROBABILITY),
            data_keys=["input", "mask"],
        )
        return lambda images, masks: tuple(sequence(images, masks))
    raise ValueError(f"augmentation level {level!r} is not one of {', '.join(AUGMENTATIONS)}")


class LightAugmentation:
    """Flip, person-keeping resized crop and mild colour jitter, vectorised over the batch."""

    def __init__(self, image_size: tuple[int, int]) -> None:
        import kornia.augmentation as K
        from kornia.geometry.transform import crop_and_resize

        self.image_size = image_size
        self.colour = K.ColorJiggle(**LIGHT_COLOUR_JITTER, p=LIGHT_COLOUR_PROBABILITY)
        self.crop_and_resize = crop_and_resize

    def __call__(
        self, images: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        flip = torch.rand(len(images), device=images.device) < FLIP_PROBABILITY
        flip = flip.view(-1, 1, 1, 1)
        images = torch.where(flip, images.flip(-1), images)
        masks = torch.where(flip, masks.flip(-1), masks)
        boxes = corner_points(person_keeping_crops(masks), self.image_size)
        images = self.crop_and_resize(images, boxes, self.image_size, mode="bilinear")
        masks = self.crop_and_resize(masks, boxes, self.image_size, mode="nearest")
        return self.colour(images).clamp(0, 1), masks


def person_boxes(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each mask's person box in pixel-edge coordinates (pixel i spans [i, i + 1)), as
    N x 2 tensors (x, y) of its low and high corners; a mask with no person gets the empty
    box from (W, H) to (0, 0), which every crop contains."""
    height, width = masks.shape[-2:]
    person = masks.flatten(1, -3).amax(dim=1) > 0  # N x H x W
    rows, columns = person.any(dim=2), person.any(dim=1)
    has_person = rows.any(dim=1)

    def extent(lines: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = lines.byte().argmax(dim=1)  # argmax gives the first of equal maxima
        last = size - lines.flip(1).byte().argmax(dim=1)
        low = torch.where(has_person, first, size)
        high = torch.where(has_person, last, 0)
        return low.to(masks.dtype), high.to(masks.dtype)

    left, right = extent(columns, width)
    top, bottom = extent(rows, height)
    return torch.stack([left, top], dim=1), torch.stack([right, bottom], dim=1)


def person_keeping_crops(
    masks: torch.Tensor,
    scale: tuple[float, float] = LIGHT_CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random crop of each mask's frame as N x 2 tensors (x, y) of its low corner and its
    size, in pixel-edge coordinates: `scale` of the frame's area at aspect `ratio` (clipped to
    the frame), grown to the person's box where that is bigger, and placed uniformly among
    the places where it holds the whole box."""
    count = len(masks)
    height, width = masks.shape[-2:]
    frame = torch.tensor([width, height], dtype=masks.dtype, device=masks.device)
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(count, device=masks.device)
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * torch.rand(count, device=masks.device))
    pixels = area * height * width
    drawn = torch.stack([(pixels * aspect).sqrt(), (pixels / aspect).sqrt()], dim=1)
    low, high = person_boxes(masks)
    size = torch.maximum(drawn.minimum(frame), high - low).minimum(frame)
    # The crop's low corner: low enough to reach the box's high side, high enough to start
    # at or before its low side, and inside the frame.
    first = (high - size).clamp(min=0)
    last = torch.minimum(low, frame - size)
    corner = first + (last - first) * torch.rand(count, 2, device=masks.device)
    return corner, size


def corner_points(
    crops: tuple[torch.Tensor, torch.Tensor], output_size: tuple[int, int]
) -> torch.Tensor:
    """Crops (low corner, size; pixel edges) as crop_and_resize's N x 4 x 2 boxes: the
    (x, y) pixel positions its first and last output pixels sample, clockwise from top left,
    so that each output pixel samples the centre of the part of the crop it covers."""
    corner, size = crops
    out = torch.tensor(output_size[::-1], dtype=size.dtype, device=size.device)  # (w, h)
    step = size / out
    start = corner + step / 2 - 0.5
    end = corner + size - step / 2 - 0.5
    (x1, y1), (x2, y2) = start.unbind(1), end.unbind(1)
    return torch.stack(
        [
            torch.stack([x1, y1], dim=1),
            torch.stack([x2, y1], dim=1),
            torch.stack([x2, y2], dim=1),
            torch.stack([x1, y2], dim=1),
        ],
        dim=1,
    )
