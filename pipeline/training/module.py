"""The LightningModule: loss, metrics and optimisation around the plain U-Net."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from pipeline.evaluation.metrics import hard_predictions, segmentation_metrics
from pipeline.model.inputs import to_model_input
from pipeline.model.unet import UNet


class SegmentationModule(L.LightningModule):
    """BCE-with-logits training of a U-Net, monitored by Dice, with one metric object per stage."""

    def __init__(
        self,
        base_channels: int = 64,
        depth: int = 4,
        lr: float = 1e-5,
        plateau_factor: float = 0.5,
        plateau_patience: int = 5,
    ) -> None:
        super().__init__()
        # Not sent to the logger: MLflow already holds these params in the run's own spelling.
        self.save_hyperparameters(logger=False)
        self.net = UNet(in_channels=3, base_channels=base_channels, depth=depth)
        self.loss = nn.BCEWithLogitsLoss()
        self.train_metrics = segmentation_metrics("train_")
        self.val_metrics = segmentation_metrics("val_")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor]):
        images, masks = batch
        logits = self.net(to_model_input(images))
        return self.loss(logits, masks.float()), logits, masks

    def training_step(self, batch, batch_index: int) -> torch.Tensor:
        loss, logits, masks = self._shared_step(batch)
        self.train_metrics.update(hard_predictions(logits), masks)
        batch_size = len(masks)
        self.log("train_loss", loss, on_step=True, on_epoch=True, batch_size=batch_size)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=batch_size)
        return loss

    def validation_step(self, batch, batch_index: int) -> None:
        loss, logits, masks = self._shared_step(batch)
        self.val_metrics.update(hard_predictions(logits), masks)
        batch_size = len(masks)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=batch_size)
        self.log_dict(self.val_metrics, on_epoch=True, prog_bar=True, batch_size=batch_size)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=self.hparams.plateau_factor,
            patience=self.hparams.plateau_patience,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss", "name": "lr"},
        }
