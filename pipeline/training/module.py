"""The LightningModule: loss, metrics and optimisation around a plain network."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer
from torchmetrics import MeanMetric

from pipeline.evaluation.metrics import hard_predictions, segmentation_metrics
from pipeline.model.unet import NetworkConfig, UNet
from pipeline.training.journal_logger import record_before_checkpoints
from pipeline.training.losses import segmentation_loss
from pipeline.training.optimization import OptimizationConfig


class SegmentationModule(L.LightningModule):
    """Training of a network as a recipe describes it, monitored by Dice, one metric per stage.

    It is given the network, the loss's name and the optimisation's config, and builds
    nothing of its own from a list of settings. Batches arrive as float images in [0, 1] and
    float masks (PersonDataModule converts and augments them on the device).
    """

    def __init__(
        self,
        net: UNet,
        loss: str = "bce",
        optimization: OptimizationConfig | None = None,
    ) -> None:
        super().__init__()
        self.optimization = optimization or OptimizationConfig()
        # Plain values, so a checkpoint rebuilds the module (from_checkpoint) without
        # unpickling code. Not sent to the logger: MLflow holds them as the run's params.
        self.save_hyperparameters(
            {
                "network": net.config.to_dict(),
                "loss": loss,
                "optimization": dataclasses.asdict(self.optimization),
            },
            logger=False,
        )
        self.net = net
        self.loss = segmentation_loss(loss)
        # Metrics keep sums (pixel counts, weighted losses) that a distributed fit adds up over
        # its ranks at the end of each epoch: every epoch figure is exact over the whole split,
        # not an average of the ranks' own.
        self.train_metrics = segmentation_metrics("train_")
        self.val_metrics = segmentation_metrics("val_")
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()

    @classmethod
    def from_checkpoint(cls, path: Path | str) -> SegmentationModule:
        """The module a Lightning checkpoint of this class holds, on the CPU."""
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        options = checkpoint["hyper_parameters"]
        module = cls(
            UNet(NetworkConfig.from_dict(options["network"])),
            options["loss"],
            OptimizationConfig(**options["optimization"]),
        )
        module.load_state_dict(checkpoint["state_dict"])
        return module

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

    def on_train_epoch_end(self) -> None:
        """The epoch's training metrics, recorded before its checkpoints are written. Every
        rank computes them (they add up over the ranks)."""
        computed = {"train_loss_epoch": self.train_loss.compute(), **self.train_metrics.compute()}
        metrics = {key: float(value) for key, value in computed.items()}
        record_before_checkpoints(self.trainer, {**metrics, "epoch": self.current_epoch})

    def validation_step(self, batch, batch_index: int) -> None:
        loss, logits, masks = self._shared_step(batch)
        self.val_metrics.update(hard_predictions(logits), masks.to(torch.uint8))
        batch_size = len(masks)
        self.val_loss.update(loss, weight=batch_size)
        self.log("val_loss", self.val_loss, on_epoch=True, prog_bar=True, batch_size=batch_size)
        self.log_dict(self.val_metrics, on_epoch=True, prog_bar=True, batch_size=batch_size)

    def configure_optimizers(self):
        return self.optimization.configure(self.parameters(), self._budget)

    def _budget(self) -> tuple[float, Timer | None]:
        """The fit's total optimiser steps, and its Timer when it has a time limit."""
        timers = [callback for callback in self.trainer.callbacks if isinstance(callback, Timer)]
        return self.trainer.estimated_stepping_batches, next(iter(timers), None)
