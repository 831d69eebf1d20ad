"""`ExtractionModule`: the frozen model, run with `Trainer.predict`, returning (h, z) for each sample."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal, cast, overload

import lightning as L
import torch

from l2s_lightning.data.batch_plan import BatchPlan
from l2s_lightning.data.items import PromptItem
from l2s_lightning.errors import L2SInputError
from l2s_lightning.extraction.encoding import ContrastEncoder, EncodedBatch
from l2s_lightning.extraction.forward import (
    READOUTS,
    ContextTail,
    ContrastInputs,
    Readout,
    last_token_state,
    prefix_shared_features,
    reference_features,
    tail_shares_cache,
)
from l2s_lightning.extraction.host_copy import copy_to_host
from l2s_lightning.internals import set_module_device
from l2s_lightning.models.compile import compile_blocks
from l2s_lightning.models.layers import check_layer_range, text_config
from l2s_lightning.models.loading import LoadedModel, ModelSpec, load_config, load_model
from l2s_lightning.prompts import PER_TOKEN_KEYS, append_tokens


class ExtractionModule(L.LightningModule):
    """Computes P2S features: h = h_L'(X)[last prompt token], z = h_L*(X+)[last] - h_L*(X-)[last].

    Args:
        model: the model to load (hub id, folder, GGUF, ``pkg:``).
        layer_steer: L*, the block whose output is steered.
        layer_context: L', the block whose output is the context h.
        forward: ``prefix_shared`` (prompt encoded once through blocks 0..max(L*, L'), completions through
            0..L* on its cache; with a template suffix, the tokens the suffixed and the plain prompt share are
            encoded once) or ``reference``
            (three full forwards per sample, batch 1 inside the step; for checks and benchmarks).
        z_readout: how z reads each completion at L*: ``last`` (its last token's state, the paper's P2S) or
            ``mean`` (the mean over its tokens: the completion as a whole rather than the next-token state after
            its last word; on SmolLM2-135M only ``mean`` vectors make the model refuse, ``docs/RESULTS.md``).
        compile: ``torch.compile`` each decoder block run (and the vision tower's blocks), shapes dynamic
            (:func:`l2s_lightning.models.compile.compile_blocks`): fuses the elementwise work around the
            matrix products, for GPUs; the first batches pay the compilation (``bench/extraction.py
            --compile-layers`` measures it).

    Batches come from the DataLoader already encoded (:meth:`collate_fn`, run in the loader's workers) or
    as lists of rows, encoded in the step. A :class:`~l2s_lightning.data.batch_plan.PromptEncoding` for
    ``PromptDataModule``: it measures rows and chooses the ``auto`` batch size; batches need not be full.
    """

    def __init__(
        self,
        model: ModelSpec,
        layer_steer: int,
        layer_context: int,
        forward: Literal["prefix_shared", "reference"] = "prefix_shared",
        z_readout: Readout = "last",
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._settings(model, layer_steer, layer_context, forward, z_readout, compile, load_config(model))

    @classmethod
    def of_loaded(
        cls, loaded: LoadedModel, layer_steer: int, layer_context: int, z_readout: Readout = "last"
    ) -> ExtractionModule:
        """The module around a model already in memory (:mod:`l2s_lightning.api`), ready for :meth:`features`
        outside a Trainer: nothing is read from disk, the inputs go where the model's input embeddings are."""
        module = cls.__new__(cls)
        L.LightningModule.__init__(module)
        module._settings(
            loaded.spec, layer_steer, layer_context, "prefix_shared", z_readout, False, loaded.model.config
        )
        module.loaded = loaded
        module.configure_model()
        set_module_device(module, cast(Any, loaded.model).get_input_embeddings().weight.device)
        return module

    def _settings(
        self,
        model: ModelSpec,
        layer_steer: int,
        layer_context: int,
        forward: Literal["prefix_shared", "reference"],
        z_readout: Readout,
        compile: bool,
        model_config: Any,
    ) -> None:
        """What the constructor sets, the model's config given (layers checked against it)."""
        self.spec = model
        self.layer_steer = layer_steer
        self.layer_context = layer_context
        self.forward_style = forward
        if z_readout not in READOUTS:
            raise L2SInputError(f"model.z_readout={z_readout!r} must be one of {READOUTS}")
        self.z_readout = z_readout
        self.use_compile = compile  # not `self.compile`: that is nn.Module.compile()
        config = text_config(model_config)
        self.num_layers = int(config.num_hidden_layers)
        self.hidden_size = int(config.hidden_size)
        check_layer_range(
            self.num_layers, model.display_name, {"layer_steer": layer_steer, "layer_context": layer_context}
        )
        self.loaded: LoadedModel | None = None
        self.encoder: ContrastEncoder | None = None  # the loaded model's processor and tokenizer
        self.batch_plan: BatchPlan | None = None  # the plan of the current predict run

    def configure_model(self) -> None:
        if self.loaded is None:
            self.loaded = load_model(self.spec)
        self.llm = self.loaded.model
        if self.use_compile:  # idempotent: blocks compiled already are left as they are
            depth = max(self.layer_steer, self.layer_context) + 1
            compile_blocks(self.llm, depth=None if self.forward_style == "reference" else depth)
        self.encoder = ContrastEncoder.of(self.loaded)

    def collate_fn(self) -> ContrastEncoder:
        """The DataLoader ``collate_fn`` that encodes batches in the loader's workers (used by
        :class:`~l2s_lightning.data.datamodule.PromptDataModule`); ``predict_step`` then gets an
        :class:`EncodedBatch`."""
        assert self.encoder is not None, "configure_model() has not run"
        return self.encoder

    def encode(self, items: list[PromptItem]) -> ContrastInputs:
        """Encode prompts (with template suffixes) and both completions of every item."""
        return self.collate_fn().encode(items)

    def prompt_width(self, item: PromptItem) -> int:
        """The tokens of ``item``'s prompt (template suffix and image tokens included) plus its longer
        completion: what ``PromptDataModule`` compares to find a run's widest item."""
        inputs = self.encode([item])
        return int(inputs.prefix["input_ids"].shape[1] + inputs.completion_lengths.max())

    @property
    def full_batches(self) -> bool:
        """False: a smaller last batch costs nothing here."""
        return False

    def static_cache_for(self, width: int) -> int | None:
        """None: extraction sizes no cache before the first batch."""
        return None

    def use_data(self, prompt_baseline: str, data_options: str) -> None:
        """Ignored: extraction prompts take no baseline instruction; the writer records the data options."""

    def use_batch_plan(self, plan: BatchPlan) -> None:
        """Record the run's :class:`BatchPlan`."""
        self.batch_plan = plan

    def auto_batch_size(self, widest: PromptItem) -> int:
        """The batch size that fits free accelerator memory for items up to ``widest``'s width."""
        from l2s_lightning.extraction.batch_size import auto_batch_size, vision_patches

        inputs = self.encode([widest])
        patches = vision_patches(inputs.prefix)  # (all, largest image) for a dynamic-resolution tower
        return auto_batch_size(
            self.llm,
            prompt_tokens=int(inputs.prefix["input_ids"].shape[1]),
            completion_tokens=int(inputs.completion_lengths.max()),
            layer_depth=max(self.layer_steer, self.layer_context) + 1,
            vision_tokens=patches[0] if patches else None,
            largest_image=patches[1] if patches else None,
        )

    @overload
    def _to_device(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...
    @overload
    def _to_device(self, tensors: None) -> None: ...
    def _to_device(self, tensors: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        if tensors is None:
            return None
        dtype = next(self.llm.parameters()).dtype
        return {
            key: value.to(self.device, dtype=dtype if value.is_floating_point() else None, non_blocking=True)
            for key, value in tensors.items()
        }

    def features(self, batch: list[PromptItem] | EncodedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, z) of a batch (rows, or rows already encoded by :meth:`collate_fn`), each (B, D) float32 on
        the module's device. A row whose two completions are the same text (a ``zero_target`` behaviour's) has
        z = 0 exactly: its two forwards are equal by definition, though batched kernels need not agree bit for bit."""
        context, steer = self._features(batch)
        items = batch.items if isinstance(batch, EncodedBatch) else batch
        same = [i for i, item in enumerate(items) if item.positive == item.negative]
        if same:
            steer[torch.tensor(same, device=steer.device)] = 0.0
        return context, steer

    def _features(self, batch: list[PromptItem] | EncodedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = batch.inputs if isinstance(batch, EncodedBatch) else self.encode(batch)
        if self.forward_style == "reference":
            return self._reference(inputs)
        inputs.prefix = self._to_device(dict(inputs.prefix))
        if not tail_shares_cache(self.llm, inputs):  # a sliding window shorter than the prompts: h from its own pass
            tail = inputs.context
            assert tail is not None  # the tail always shares the cache when there is none
            context = torch.stack(
                [
                    last_token_state(
                        self.llm, self._to_device(_plain_prompt(inputs.prefix, tail, i)), self.layer_context
                    ).float()
                    for i in range(inputs.prefix["input_ids"].shape[0])
                ]
            )
            plain = dataclasses.replace(inputs, context=None)
            _, steer = prefix_shared_features(self.llm, plain, self.layer_steer, self.layer_context, self.z_readout)
            return context, steer
        return prefix_shared_features(self.llm, inputs, self.layer_steer, self.layer_context, self.z_readout)

    def _reference(self, inputs: ContrastInputs) -> tuple[torch.Tensor, torch.Tensor]:
        contexts, steers = [], []
        for i in range(inputs.completions.shape[0] // 2):
            one = _unpad_row(inputs.prefix, i)
            pos = inputs.completions[2 * i, : inputs.completion_lengths[2 * i]]
            neg = inputs.completions[2 * i + 1, : inputs.completion_lengths[2 * i + 1]]
            h, z = reference_features(
                self.llm,
                self._to_device(one),
                pos.to(self.device),
                neg.to(self.device),
                self.layer_steer,
                self.layer_context,
                self._to_device(_context_prompt(inputs, i)),
                self.z_readout,
            )
            contexts.append(h)
            steers.append(z)
        return torch.stack(contexts), torch.stack(steers)

    def predict_step(
        self, batch: list[PromptItem] | EncodedBatch, batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Any]:
        """The batch's rows: ids, categories, behaviours, splits, (B, D) ``context`` and ``steer`` on the CPU, and
        ``ready``: None, or on CUDA the event after which those two hold their values (call
        ``ready.synchronize()`` before reading them; :class:`HDF5FeatureWriter` does so on its writing thread)."""
        context, steer = self.features(batch)
        host, ready = copy_to_host({"context": context, "steer": steer})
        if isinstance(batch, EncodedBatch):
            batch = batch.items
        return {
            "sample_id": [item.id for item in batch],
            "category": [item.category for item in batch],
            "behaviour": [item.behaviour for item in batch],
            "split": [item.split for item in batch],
            **host,  # "context", "steer": still being copied to pinned memory when "ready" is a CUDA event
            "ready": ready,
        }


def _context_prompt(inputs: ContrastInputs, row: int) -> dict[str, torch.Tensor] | None:
    """The whole, un-padded prompt h is read from for one sample when it differs from the steering prompt:
    the positions it shares with it, then its own tail."""
    if inputs.context is None:
        return None
    return _plain_prompt(inputs.prefix, inputs.context, row)


def _plain_prompt(prefix: Mapping[str, torch.Tensor], tail: ContextTail, row: int) -> dict[str, torch.Tensor]:
    """One sample's whole, un-padded plain prompt: the positions of ``prefix`` it shares, then its ``tail``."""
    shared = _unpad_row({**prefix, "attention_mask": tail.prefix_mask}, row)
    shared["attention_mask"] = torch.ones_like(shared["input_ids"])  # un-padded: every position is real
    return append_tokens(shared, tail.ids[row, : tail.lengths[row]][None])


def _unpad_row(encoded: Mapping[str, torch.Tensor], row: int) -> dict[str, torch.Tensor]:
    """One sample of a left-padded batch encoding, padding removed (pixel tensors split per image)."""
    mask = encoded["attention_mask"][row].bool()
    out: dict[str, torch.Tensor] = {}
    batch = encoded["input_ids"].shape[0]
    for key, value in encoded.items():
        if key in PER_TOKEN_KEYS:
            out[key] = value[row][mask][None]
        elif key == "pixel_values" and value.shape[0] == batch and value.dim() == 4:
            out[key] = value[row : row + 1]
        elif key == "image_grid_thw":
            out[key] = value[row : row + 1]
        elif key == "pixel_values" and "image_grid_thw" in encoded:
            sizes = encoded["image_grid_thw"].prod(-1).tolist()
            start = sum(sizes[:row])
            out[key] = value[start : start + sizes[row]]
        else:
            out[key] = value
    return out
