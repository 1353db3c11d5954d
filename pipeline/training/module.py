"""The LightningModule: loss, metrics and optimisation around the plain U-Net."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer
from torchmetrics import MeanMetric

from pipeline.evaluation.metrics import hard_predictions, segmentation_metrics
from pipeline.model.unet import UNet
from pipeline.training.losses import segmentation_loss
from pipeline.training.schedule import one_cycle


class SegmentationModule(L.LightningModule):
    """Training of a U-Net as a recipe describes it, monitored by Dice, one metric per stage.

    Batches arrive as float images in [0, 1] and float masks (PersonDataModule converts and
    augments them on the device).
    """

    def __init__(
        self,
        base_channels: int = 64,
        depth: int = 4,
        batch_norm: bool = False,
        skip_connections: bool = True,
        upsampling: str = "transposed",
        loss: str = "bce",
        optimizer: str = "adam",
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        schedule: str = "plateau",
        plateau_factor: float = 0.5,
        plateau_patience: int = 5,
    ) -> None:
        super().__init__()
        # Not sent to the logger: MLflow already holds these params in the run's own spelling.
        self.save_hyperparameters(logger=False)
        self.net = UNet(
            in_channels=3,
            base_channels=base_channels,
            depth=depth,
            batch_norm=batch_norm,
            skip_connections=skip_connections,
            upsampling=upsampling,
        )
        self.loss = segmentation_loss(loss)
        # Metrics keep sums (pixel counts, weighted losses) that a distributed fit adds up over
        # its ranks at the end of each epoch: every epoch figure is exact over the whole split,
        # not an average of the ranks' own.
        self.train_metrics = segmentation_metrics("train_")
        self.val_metrics = segmentation_metrics("val_")
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor]):
        images, masks = batch
        logits = self.net(images)
        return self.loss(logits, masks), logits, masks

    def training_step(self, batch, batch_index: int) -> torch.Tensor:
        loss, logits, masks = self._shared_step(batch)
        self.train_metrics.update(hard_predictions(logits), masks.to(torch.uint8))
        batch_size = len(masks)
        self.train_loss(loss.detach(), weight=batch_size)  # the step's value, and the epoch's sum
        self.log("train_loss", self.train_loss, on_step=True, on_epoch=True, batch_size=batch_size)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=batch_size)
        return loss

    def validation_step(self, batch, batch_index: int) -> None:
        loss, logits, masks = self._shared_step(batch)
        self.val_metrics.update(hard_predictions(logits), masks.to(torch.uint8))
        batch_size = len(masks)
        self.val_loss.update(loss, weight=batch_size)
        self.log("val_loss", self.val_loss, on_epoch=True, prog_bar=True, batch_size=batch_size)
        self.log_dict(self.val_metrics, on_epoch=True, prog_bar=True, batch_size=batch_size)

    def configure_optimizers(self):
        optimizer_class = (
            torch.optim.AdamW if self.hparams.optimizer == "adamw" else torch.optim.Adam
        )
        optimizer = optimizer_class(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        if self.hparams.schedule == "onecycle":
            # Warm-up then decay to ~0 over the run's budget of steps, or of time if shorter.
            timers = [
                callback for callback in self.trainer.callbacks if isinstance(callback, Timer)
            ]
            scheduler = one_cycle(
                optimizer, self.trainer.estimated_stepping_batches, next(iter(timers), None)
            )
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"},
            }
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
