"""`L2SModule`: regression of the steering target z from the context h with a 2-layer MLP.

Defaults follow the paper: MSE loss, Adam with lr 1e-4, 100 epochs (set on the Trainer), hidden 100.
The activation is Tanh as in the authors' released code (the paper does not name one); their output layer
has no bias (``bias_out: false``) and their loss adds L1 and a cosine term (``l1_weight``,
``cosine_weight``), both off by default. The released code also initialises the decoder from the
targets; here ``init_output: mean`` (default) sets the output bias to the training mean of z, so g starts
at the Mean-S baseline plus the random output layer's term (the output weights keep PyTorch's init, which at
small ‖z‖ can outweigh the mean) and learns the input-dependent part; ``svd`` also sets the output weights to the
leading principal directions of z (scaled by their standard deviations); ``none`` keeps PyTorch's init.

Learning rate of epoch e: ``eta_min + (lr - eta_min) · cos_e · plateau_e`` with ``cos_e`` the cosine
annealing factor over ``cosine_epochs`` (default ``max_epochs``) and ``plateau_e`` the ReduceLROnPlateau
multiplier (factor, patience, relative threshold 1e-4 as in PyTorch) replayed over the validation MSE of
epochs < e. The schedule is a pure function of the epoch and the ``val/mse`` history, which is stored in
the checkpoint: a run resumed from any ``last.ckpt`` continues with exactly the learning rates of an
uninterrupted one (Lightning's own scheduler stepping skips the plateau step of the epoch a checkpoint
was written in).
"""

from __future__ import annotations

import math
from typing import cast

import lightning as L
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor, nn
from torchmetrics import MeanMetric, MeanSquaredError

from l2s_lightning.errors import L2SInputError
from l2s_lightning.mlp import SteeringMLP
from l2s_lightning.training.data import TrainingStatistics

PLATEAU_THRESHOLD = 1e-4  # torch.optim.lr_scheduler.ReduceLROnPlateau default (mode "rel")


DIVERGED = 1e4  # a training loss this many times the first step's stops the fit (a learning rate far too large)


def plateau_multiplier(
    history: list[float | None], factor: float, patience: int, threshold: float = PLATEAU_THRESHOLD
) -> float:
    """The lr multiplier ReduceLROnPlateau (mode min, rel threshold, no cooldown) reaches on ``history``."""
    best, bad, multiplier = math.inf, 0, 1.0
    for value in history:
        if value is None:
            continue
        if value < best * (1.0 - threshold):
            best, bad = value, 0
        else:
            bad += 1
        if bad > patience:
            multiplier, bad = multiplier * factor, 0
    return multiplier


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
        eta_min: the floor of the cosine annealing.
        l1_weight / cosine_weight: extra loss terms of the released code (0 = paper's plain MSE).
        init_output: ``mean`` | ``svd`` | ``none``: output-layer initialisation from the training targets.
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
        init_output: str = "mean",
    ) -> None:
        super().__init__()
        if init_output not in ("mean", "svd", "none"):
            raise L2SInputError(f"init_output must be 'mean', 'svd' or 'none', got {init_output!r}")
        if init_output != "none" and not bias_out:
            raise L2SInputError(
                f"init_output={init_output!r} sets the output bias: it needs bias_out=true (or use init_output='none')"
            )
        self.save_hyperparameters()
        self.mlp = SteeringMLP(dim, hidden, activation, bias_out, normalize_input)
        self.train_mse, self.val_mse, self.test_mse = MeanSquaredError(), MeanSquaredError(), MeanSquaredError()
        self.train_cos, self.val_cos, self.test_cos = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_history: list[float | None] = []  # val/mse per epoch, drives the plateau multiplier
        self._initialised = False  # input stats / output init done (or restored from a checkpoint)
        self._first_loss: float | None = None  # the first training step's loss in this process

    @property
    def hp(self) -> AttributeDict:
        """The saved hyperparameters (the constructor's arguments)."""
        return cast(AttributeDict, self.hparams)

    def forward(self, context: Tensor) -> Tensor:
        return self.mlp(context)

    def setup(self, stage: str) -> None:
        """Before the first fit: input statistics and output initialisation from the data module's training
        rows, when it gives them (:class:`TrainingStatistics`; when resuming, the checkpoint then overwrites
        both with the same values)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None  # set by fit
        if stage != "fit" or self._initialised or not isinstance(datamodule, TrainingStatistics):
            return
        self.init_from(datamodule)

    def init_from(self, data: TrainingStatistics) -> None:
        """Input statistics (with ``normalize_input``) and the output initialisation from ``data``."""
        if self.hp.normalize_input:
            self.mlp.set_input_stats(*data.input_stats())
        if self.hp.init_output != "none":
            self.init_output(*data.target_moments(covariance=self.hp.init_output == "svd"))
        self._initialised = True

    @torch.no_grad()
    def init_output(self, mean: Tensor, cov: Tensor | None = None) -> None:
        """Output bias = mean z; with ``cov``, output weights = leading principal directions × their std."""
        out = cast(nn.Linear, self.mlp.net[-1])
        out.bias.copy_(mean.to(out.bias))
        if cov is not None:
            values, vectors = torch.linalg.eigh(cov.double())
            k = min(self.hp.hidden, len(values))
            top = values.flip(0)[:k].clamp_min(0.0).sqrt()
            out.weight[:, :k] = (vectors.flip(1)[:, :k] * top).to(out.weight)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        hp = self.hp
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
        self.log(
            f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=stage != "test", batch_size=len(target)
        )
        self.log(f"{stage}/mse", mse, on_step=False, on_epoch=True, batch_size=len(target))
        self.log(f"{stage}/cos", cos, on_step=False, on_epoch=True, prog_bar=stage == "val", batch_size=len(target))
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._step(batch, "train")
        self._check_divergence(float(loss.detach()))
        return loss

    def _check_divergence(self, loss: float) -> None:
        """Stop with an L2SInputError naming the learning rate when the training loss is NaN/inf or has grown
        :data:`DIVERGED` times over the first step's of this process, or over 1 when that was smaller (a learning
        rate far too large)."""
        first = self._first_loss = loss if self._first_loss is None else self._first_loss
        if math.isfinite(loss) and loss <= DIVERGED * max(abs(first), 1.0):
            return
        raise L2SInputError(
            f"l2s fit: training diverged at epoch {self.current_epoch}, step {self.global_step}: loss {loss:.4g} "
            f"(first step {first:.4g}); lower model.lr (now {self.hp.lr:g})"
        )

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def lr_at(self, epoch: int) -> float:
        """Learning rate of ``epoch`` (see the module docstring)."""
        hp = self.hp
        scale = 1.0
        if hp.cosine:
            total = hp.cosine_epochs or (self.trainer.max_epochs if self._trainer is not None else None) or 100
            total = max(1, total if total > 0 else 100)
            scale = (1.0 + math.cos(math.pi * min(epoch, total) / total)) / 2.0
        if hp.plateau_factor < 1.0:
            scale *= plateau_multiplier(self.val_history[:epoch], hp.plateau_factor, hp.plateau_patience)
        return hp.eta_min + (hp.lr - hp.eta_min) * scale

    def on_train_epoch_start(self) -> None:
        lr = self.lr_at(self.current_epoch)
        for group in cast(LightningOptimizer, self.optimizers()).param_groups:
            group["lr"] = lr
        self.log("lr", lr, on_step=False, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self.val_mse.update_called:
            return
        epoch = self.current_epoch
        history = self.val_history[:epoch]
        self.val_history = history + [None] * (epoch - len(history)) + [float(self.val_mse.compute())]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["val_history"] = list(self.val_history)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.val_history = list(checkpoint.get("val_history", []))
        self._initialised = True

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam; the learning rate is set at the start of each epoch by :meth:`lr_at`."""
        return torch.optim.Adam(self.parameters(), lr=self.hp.lr, weight_decay=self.hp.weight_decay)
