"""How a recipe optimises: its settings, and the optimizer and learning-rate schedule they make."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from pipeline.settings import between, check_settings, setting
from pipeline.training.schedule import one_cycle

if TYPE_CHECKING:  # only its type: importing Lightning costs seconds
    from lightning.pytorch.callbacks import Timer

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
SCHEDULES = ("plateau", "onecycle")
PLATEAU_FACTOR = 0.5  # the reference's ReduceLROnPlateau halves the rate


@dataclass(frozen=True)
class OptimizationConfig:
    """The optimizer and its schedule, the reference report's by default."""

    optimizer: str = setting("adam", "adam or adamw", choices=tuple(OPTIMIZERS))
    lr: float = setting(
        1e-5,
        "peak learning rate",
        above=0,
        search=between(
            1e-4,
            1e-2,
            log=True,
            why="a decade either side of the default recipe's one-cycle peak 1e-3, where the "
            "range test of Smith (2018, arXiv:1803.09820) puts Adam's usable peaks",
        ),
    )
    weight_decay: float = setting(
        0.0,
        "optimizer weight decay",
        minimum=0,
        search=between(
            1e-6,
            1e-2,
            log=True,
            why="AdamW's decoupled decay (Loshchilov & Hutter, ICLR 2019) is searched on a log "
            "scale; two decades either side of the default recipe's 1e-4",
        ),
    )
    schedule: str = setting("plateau", "plateau (on val loss) or onecycle", choices=SCHEDULES)
    plateau_patience: int = setting(
        5,
        "epochs without a lower val_loss before the plateau schedule halves the learning rate",
        minimum=0,
    )
    gradient_clip: float = setting(
        1.0,
        "largest gradient norm: a step's larger gradient is scaled down to it; 0 = no clipping",
        minimum=0,
    )

    def __post_init__(self) -> None:
        check_settings(self)

    def trainer_arguments(self) -> dict[str, Any]:
        """What these settings make of the Lightning Trainer (its own gradient clipping)."""
        return {"gradient_clip_val": self.gradient_clip or None}

    def configure(
        self, parameters, budget: Callable[[], tuple[float, Timer | None]]
    ) -> dict[str, Any]:
        """What LightningModule.configure_optimizers returns for these settings.

        The one-cycle schedule warms up, then decays to ~0 over the run's `budget`: its total
        steps, or its Timer's time if that ends first (asked only by this schedule).
        """
        optimizer = OPTIMIZERS[self.optimizer](
            parameters, lr=self.lr, weight_decay=self.weight_decay
        )
        if self.schedule == "onecycle":
            scheduler = one_cycle(optimizer, *budget())
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"},
            }
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=PLATEAU_FACTOR, patience=self.plateau_patience
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss", "name": "lr"},
        }
