"""Batch augmentation: images and masks move together; masks stay binary; `light` crops keep
the whole person."""

from __future__ import annotations

import pytest
import torch

from pipeline.data.augment import (
    AUGMENTATIONS,
    LIGHT_CROP_SCALE,
    augmentation,
    person_boxes,
    person_keeping_crops,
)

LEVELS = [level for level in AUGMENTATIONS if level != "none"]


def _batch(count: int = 16, side: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of off-centre blocks, and images that are the mask in grey: geometry shows."""
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(count, 1, side, side)
    for index in range(count):
        top, left = torch.randint(0, side // 2, (2,), generator=generator).tolist()
        masks[index, :, top : top + side // 3, left : left + side // 4] = 1
    images = 0.2 + 0.6 * masks.expand(-1, 3, -1, -1)
    return images, masks


def _people(count: int = 48, side: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of one block each, small to nearly the whole frame, anywhere (touching the
    borders too), and a few without anyone; the images are the masks in grey."""
    generator = torch.Generator().manual_seed(4)
    masks = torch.zeros(count, 1, side, side)
    for index in range(count - 4):
        height, width = torch.randint(3, side + 1, (2,), generator=generator).tolist()
        top = int(torch.randint(0, side - height + 1, (1,), generator=generator))
        left = int(torch.randint(0, side - width + 1, (1,), generator=generator))
        masks[index, :, top : top + height, left : left + width] = 1
    images = 0.2 + 0.6 * masks.expand(-1, 3, -1, -1)
    return images, masks


def _extents(masks: torch.Tensor) -> torch.Tensor:
    """Height and width of each mask's person box in pixels (N x 2; 0 without a person)."""
    low, high = person_boxes(masks)
    return (high - low).clamp(min=0).flip(1)


def _cut(masks: torch.Tensor, augmented: torch.Tensor) -> torch.Tensor:
    """Which people lost part of themselves: a block that a crop (which only zooms in) kept
    whole is at least as tall and as wide as before, and still a full block."""
    before, after = _extents(masks), _extents(augmented)
    shrunk = (after < before).any(dim=1)
    full_block = augmented.sum(dim=(1, 2, 3)) == after.prod(dim=1)
    return shrunk | ~full_block


def test_none_is_no_augmentation() -> None:
    assert augmentation("none", (32, 32)) is None
    with pytest.raises(ValueError, match="not one of none, light, strong"):
        augmentation("heavy", (32, 32))


@pytest.mark.parametrize("level", LEVELS)
def test_masks_stay_binary_and_images_in_range(level: str) -> None:
    torch.manual_seed(1)
    images, masks = _batch()
    augmented_images, augmented_masks = augmentation(level, (32, 32))(images, masks)
    assert augmented_images.shape == images.shape
    assert augmented_masks.shape == masks.shape
    assert set(augmented_masks.unique().tolist()) <= {0.0, 1.0}
    assert augmented_images.min() >= 0 and augmented_images.max() <= 1


@pytest.mark.parametrize("level", LEVELS)
def test_image_and_mask_get_the_same_geometry(level: str) -> None:
    torch.manual_seed(2)
    images, masks = _batch()
    augmented_images, augmented_masks = augmentation(level, (32, 32))(images, masks)
    assert not torch.equal(augmented_masks, masks)  # something moved
    # Colour changes keep the person brighter than the background within each image, so the
    # mask is where the image is above its mid grey, apart from interpolated edge pixels.
    grey = augmented_images.mean(dim=1, keepdim=True)
    low = grey.amin(dim=(2, 3), keepdim=True)
    high = grey.amax(dim=(2, 3), keepdim=True)
    bright = (grey > (low + high) / 2).float()
    has_both = (augmented_masks.amax(dim=(1, 2, 3)) > 0) & (
        augmented_masks.amin(dim=(1, 2, 3)) == 0
    )
    agreement = (bright == augmented_masks)[has_both].float().mean()
    assert has_both.sum() >= 8
    assert float(agreement) > 0.95


@pytest.mark.parametrize("level", LEVELS)
def test_seeded_runs_draw_the_same(level: str) -> None:
    images, masks = _people()
    outputs = []
    for _ in range(2):
        torch.manual_seed(5)
        outputs.append(augmentation(level, (32, 32))(images, masks))
    (first_images, first_masks), (second_images, second_masks) = outputs
    assert torch.equal(first_images, second_images)
    assert torch.equal(first_masks, second_masks)
    torch.manual_seed(6)
    other_images, _ = augmentation(level, (32, 32))(images, masks)
    assert not torch.equal(first_images, other_images)


def test_strong_crops_change_the_share_of_person_pixels() -> None:
    torch.manual_seed(3)
    images, masks = _batch()
    _, augmented_masks = augmentation("strong", (32, 32))(images, masks)
    before = masks.mean(dim=(1, 2, 3))
    after = augmented_masks.mean(dim=(1, 2, 3))
    assert float((after - before).abs().max()) > 0.05  # zoomed in or out, not only flipped


def test_light_crops_keep_every_person_whole_and_zoom_in() -> None:
    torch.manual_seed(7)
    images, masks = _people()
    augmented_images, augmented_masks = augmentation("light", (32, 32))(images, masks)
    assert not _cut(masks, augmented_masks).any()
    before = masks.mean(dim=(1, 2, 3))
    after = augmented_masks.mean(dim=(1, 2, 3))
    assert (after >= before).all()  # the person's share of the photo only grows
    assert float((after - before).max()) > 0.05  # and crops did zoom in
    assert (augmented_masks[-4:] == 0).all()  # no one appears where there was no one
    # The images moved with the masks: the bright block is the person.
    grey = augmented_images.mean(dim=1, keepdim=True)
    has_both = (augmented_masks.amax(dim=(1, 2, 3)) > 0) & (
        augmented_masks.amin(dim=(1, 2, 3)) == 0
    )
    low = grey.amin(dim=(2, 3), keepdim=True)
    high = grey.amax(dim=(2, 3), keepdim=True)
    bright = (grey > (low + high) / 2).float()
    assert float((bright == augmented_masks)[has_both].float().mean()) > 0.95


def test_strong_crops_do_cut_people_off() -> None:
    """The check above can fail: the strong level's crops, which ignore the person, do."""
    torch.manual_seed(7)
    images, masks = _people()
    _, augmented_masks = augmentation("strong", (32, 32))(images, masks)
    assert _cut(masks, augmented_masks).any()


def test_crops_hold_the_person_box_inside_the_frame() -> None:
    torch.manual_seed(8)
    _, masks = _people(count=64, side=40)
    masks = masks[..., :30, :]  # not square: 30 high, 40 wide
    corner, size = person_keeping_crops(masks)
    low, high = person_boxes(masks)
    frame = torch.tensor([40.0, 30.0])
    assert (corner >= 0).all() and (corner + size <= frame + 1e-4).all()
    present = masks.amax(dim=(1, 2, 3)) > 0
    assert (corner[present] <= low[present] + 1e-4).all()
    assert (corner[present] + size[present] >= high[present] - 1e-4).all()
    # A crop keeps at least the least share drawn (less only where the aspect drawn does not
    # fit the frame), and is bigger only where the person's box is.
    area = size.prod(dim=1) / frame.prod()
    assert (area > LIGHT_CROP_SCALE[0] * 0.85).all() and (area <= 1 + 1e-4).all()
    empty = ~present
    assert empty.any() and (area[empty] < 1).any()  # no one to keep: any crop


def test_person_boxes() -> None:
    masks = torch.zeros(3, 1, 6, 8)
    masks[0, 0, 1:3, 2:7] = 1
    masks[1, 0, 5, 0] = 1
    low, high = person_boxes(masks)
    assert low.tolist() == [[2, 1], [0, 5], [8, 6]]
    assert high.tolist() == [[7, 3], [1, 6], [0, 0]]
