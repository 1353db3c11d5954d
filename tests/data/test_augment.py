"""Batch augmentation: images and masks move together; masks stay binary."""

from __future__ import annotations

import torch

from pipeline.data.augment import augmentation


def _batch(count: int = 16, side: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of off-centre blocks, and images that are the mask in grey: geometry shows."""
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(count, 1, side, side)
    for index in range(count):
        top, left = torch.randint(0, side // 2, (2,), generator=generator).tolist()
        masks[index, :, top : top + side // 3, left : left + side // 4] = 1
    images = 0.2 + 0.6 * masks.expand(-1, 3, -1, -1)
    return images, masks


def test_masks_stay_binary_and_images_in_range() -> None:
    torch.manual_seed(1)
    images, masks = _batch()
    augmented_images, augmented_masks = augmentation((32, 32))(images, masks)
    assert augmented_images.shape == images.shape
    assert augmented_masks.shape == masks.shape
    assert set(augmented_masks.unique().tolist()) <= {0.0, 1.0}
    assert augmented_images.min() >= 0 and augmented_images.max() <= 1


def test_image_and_mask_get_the_same_geometry() -> None:
    torch.manual_seed(2)
    images, masks = _batch()
    augmented_images, augmented_masks = augmentation((32, 32))(images, masks)
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


def test_crops_change_the_share_of_person_pixels() -> None:
    torch.manual_seed(3)
    images, masks = _batch()
    _, augmented_masks = augmentation((32, 32))(images, masks)
    before = masks.mean(dim=(1, 2, 3))
    after = augmented_masks.mean(dim=(1, 2, 3))
    assert float((after - before).abs().max()) > 0.05  # zoomed in or out, not only flipped
