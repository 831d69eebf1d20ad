"""`L2SModule`: regression of the steering target z from the context h with a 2-layer MLP.

Defaults follow the paper: MSE loss, Adam with lr 1e-4, 100 epochs (set on the Trainer), hidden 100.
The activation is Tanh as in the authors' released code (the paper does not name one); their output layer
has no bias (``bias_out: false``) and their loss adds L1 and a cosine term (``l1_weight``,
``cosine_weight``), both off by default. The learning rate follows a cosine annealing over ``max_epochs``
and is further cut by ReduceLROnPlateau on ``val/mse``; both are chainable and stepped once per epoch.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric, MeanSquaredError

from l2s_lightning.training.mlp import SteeringMLP


class L2SModule(L.LightningModule):
    """g: Linear(dim, hidden) → activation → Linear(hidden, dim), trained on (h, z) batches.

    Args:
        dim: hidden size D of the LLM (``l2s fit`` links it from the data).
        hidden: width of the MLP's hidden layer.
        activation: ``tanh`` | ``relu`` | ``gelu`` | ``silu`` | ``identity``.
        bias_out: bias on the output layer.
        normalize_input: standardise h with the training rows' mean/std (kept as buffers and in the steerer).
        lr / weight_decay: Adam.
        cosine: cosine annealing of lr to ``eta_min`` over ``cosine_epochs`` (default: ``max_epochs``).
        plateau_factor / plateau_patience: ReduceLROnPlateau on ``val/mse`` (``plateau_factor: 1`` = off).
        l1_weight / cosine_weight: extra loss terms of the released code (0 = paper's plain MSE).
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 100,
        activation: str = "tanh",
        bias_out: bool = True,
        normalize_input: bool = False,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        cosine: bool = True,
        cosine_epochs: int | None = None,
        eta_min: float = 0.0,
        plateau_factor: float = 0.5,
        plateau_patience: int = 10,
        l1_weight: float = 0.0,
        cosine_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.mlp = SteeringMLP(dim, hidden, activation, bias_out, normalize_input)
        self.train_mse, self.val_mse, self.test_mse = MeanSquaredError(), MeanSquaredError(), MeanSquaredError()
        self.train_cos, self.val_cos, self.test_cos = MeanMetric(), MeanMetric(), MeanMetric()

    def forward(self, context: Tensor) -> Tensor:
        return self.mlp(context)

    def setup(self, stage: str) -> None:
        """Set the input statistics from the data module's training rows (a checkpoint restores them too)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.hparams.normalize_input and stage == "fit" and datamodule is not None and hasattr(datamodule, "input_stats"):
            self.mlp.set_input_stats(*datamodule.input_stats())

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        hp = self.hparams
        loss = F.mse_loss(pred, target)
        if hp.l1_weight:
            loss = loss + hp.l1_weight * F.l1_loss(pred, target)
        if hp.cosine_weight:
            loss = loss - hp.cosine_weight * F.cosine_similarity(pred, target, dim=-1).mean()
        return loss

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        context, target = batch
        pred = self(context)
        loss = self.loss(pred, target)
        mse, cos = getattr(self, f"{stage}_mse"), getattr(self, f"{stage}_cos")
        mse.update(pred.detach(), target)
        cos.update(F.cosine_similarity(pred.detach(), target, dim=-1))
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=stage != "test", batch_size=len(target))
        self.log(f"{stage}/mse", mse, on_step=False, on_epoch=True, batch_size=len(target))
        self.log(f"{stage}/cos", cos, on_step=False, on_epoch=True, prog_bar=stage == "val", batch_size=len(target))
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def on_train_epoch_start(self) -> None:
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        schedulers = []
        if hp.cosine:
            epochs = hp.cosine_epochs or (self.trainer.max_epochs if self._trainer is not None else None) or 100
            cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs), eta_min=hp.eta_min)
            schedulers.append({"scheduler": cosine, "interval": "epoch", "name": "cosine"})
        if hp.plateau_factor < 1.0:
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=hp.plateau_factor, patience=hp.plateau_patience)
            schedulers.append({"scheduler": plateau, "interval": "epoch", "monitor": "val/mse", "name": "plateau"})
        return [optimizer], schedulers
