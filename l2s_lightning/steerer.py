"""The ``Steerer`` artifact: a folder with ``steerer.json`` + ``weights.safetensors`` (+ ``oracle_ids.json``).

One class for every method (docs/DESIGN.md, "Steerer folder"):

* ``l2s``: g(h), the MLP trained by ``l2s fit`` (tensors ``mlp.*``, ``input_mean``/``input_std``);
* ``mean``: one vector, the mean of z over the training rows (``mean``);
* ``mean_ba``: one mean per behaviour, chosen by each input's behaviour (``behaviour_means`` (B, D));
* ``random``: a seeded random unit direction times the mean ‖z‖ (``random``);
* ``p2s_oracle``: each test input's own z, looked up by sample id (``oracle_steer`` (M, D) + ids).

Vectors are unscaled: α is applied by the steering hook. No Lightning is needed to load or use one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from l2s_lightning.errors import L2SInputError
from l2s_lightning.readers import read_json
from l2s_lightning.training.mlp import SteeringMLP

FORMAT_VERSION = 1
METHODS = ("l2s", "mean", "mean_ba", "random", "p2s_oracle")
JSON_NAME, WEIGHTS_NAME, ORACLE_IDS_NAME = "steerer.json", "weights.safetensors", "oracle_ids.json"
_VECTOR_TENSOR = {"mean": "mean", "random": "random", "mean_ba": "behaviour_means", "p2s_oracle": "oracle_steer"}
_REQUIRED = {
    "l2s": ("mlp.0.weight",),
    "mean": ("mean",),
    "mean_ba": ("behaviour_means",),
    "random": ("random",),
    "p2s_oracle": ("oracle_steer",),
}


@dataclass
class Steerer:
    """Steering vectors of one method for one model and layer pair (L* = ``layer_steer``, L' = ``layer_context``)."""

    method: str
    model: str
    layer_steer: int
    layer_context: int
    hidden_size: int
    tensors: dict[str, Tensor]
    default_alpha: float = 1.0
    behaviours: list[str] = field(default_factory=list)
    oracle_ids: list[str] = field(default_factory=list)
    mlp: dict[str, Any] | None = None  # {"hidden", "activation", "bias_out"} for l2s
    input_norm: bool = False
    fingerprint: str = ""
    features: str = ""
    seed: int | None = None
    stats: dict[str, float] = field(default_factory=dict)
    sweep: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise L2SInputError(f"unknown steering method {self.method!r}; expected one of {METHODS}")
        missing = [name for name in _REQUIRED[self.method] if name not in self.tensors]
        if missing:
            raise L2SInputError(f"{self.method} steerer needs tensor(s) {missing}")
        self.tensors = {name: t.detach().float().cpu().contiguous() for name, t in self.tensors.items()}
        self._on_device: dict[str, Tensor] = {}
        self._digest = ""  # computed on first use (the tensors do not change after this)
        for name, tensor in self.tensors.items():
            if not name.startswith("mlp.") and tensor.shape[-1] != self.hidden_size:
                raise L2SInputError(
                    f"tensor {name!r} has shape {tuple(tensor.shape)}, hidden_size is {self.hidden_size}"
                )
        if self.method == "mean_ba" and self.tensors["behaviour_means"].shape[0] != len(self.behaviours):
            raise L2SInputError(
                f"{len(self.behaviours)} behaviours but behaviour_means has {self.tensors['behaviour_means'].shape[0]} rows"
            )
        if self.method == "p2s_oracle":
            if self.tensors["oracle_steer"].shape[0] != len(self.oracle_ids):
                raise L2SInputError(
                    f"{len(self.oracle_ids)} oracle ids but oracle_steer has {self.tensors['oracle_steer'].shape[0]} rows"
                )
            self._oracle_index = {sample_id: i for i, sample_id in enumerate(self.oracle_ids)}
        if self.method == "l2s":
            if self.mlp is None:
                raise L2SInputError("l2s steerer needs the `mlp` config (hidden, activation, bias_out)")
            self._net = SteeringMLP(self.hidden_size, normalize_input=self.input_norm, **self.mlp)
            state = {name[len("mlp.") :]: t for name, t in self.tensors.items() if name.startswith("mlp.")}
            self._net.net.load_state_dict(state)
            if self.input_norm:
                self._net.set_input_stats(self.tensors["input_mean"], self.tensors["input_std"], eps=0.0)
            self._net.eval().requires_grad_(False)

    # ------------------------------------------------------------------ use
    @property
    def needs_context(self) -> bool:
        return self.method == "l2s"

    @property
    def needs_behaviours(self) -> bool:
        return self.method == "mean_ba"

    @property
    def needs_sample_ids(self) -> bool:
        return self.method == "p2s_oracle"

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Steerer:
        """Place the steerer where its contexts live, once: the MLP on ``device`` (it keeps computing in
        float32), the stored vectors on ``device`` in ``dtype`` (default float32). :meth:`vectors` on a
        context of that device and dtype then copies nothing between devices; a context elsewhere moves
        them there (once). The saved tensors (``self.tensors``) stay float32 on CPU."""
        device = torch.device(device)
        if self.method == "l2s":
            self._net.to(device)
        else:
            self._placed(_VECTOR_TENSOR[self.method], device, dtype or torch.float32)
        return self

    def _placed(self, name: str, device: torch.device, dtype: torch.dtype) -> Tensor:
        """``self.tensors[name]`` on ``device`` in ``dtype``, converted once and kept (the last placement)."""
        tensor = self._on_device.get(name)
        if tensor is None or tensor.device != device or tensor.dtype != dtype:
            tensor = self._on_device[name] = self.tensors[name].to(device=device, dtype=dtype)
        return tensor

    def check_inputs(self, behaviours: Sequence[str] | None = None, sample_ids: Sequence[str] | None = None) -> None:
        """Raise a ValueError for inputs this steerer has no vector for: a behaviour unknown to a ``mean_ba``
        steerer, a sample id outside a ``p2s_oracle`` steerer's split (inputs a method ignores pass)."""
        if self.method == "mean_ba" and behaviours is not None:
            unknown = sorted(set(behaviours) - set(self.behaviours))
            if unknown:
                examples = (
                    f" (samples e.g. {[i for i, b in zip(sample_ids, behaviours) if b in unknown][:3]})"
                    if sample_ids
                    else ""
                )
                raise L2SInputError(
                    f"mean_ba steerer has no vector for behaviour(s) {unknown}{examples}; it knows {self.behaviours}"
                )
        if self.method == "p2s_oracle" and sample_ids is not None:
            unknown = [s for s in sample_ids if s not in self._oracle_index]
            if unknown:
                raise L2SInputError(
                    f"p2s_oracle steerer has no target z for sample id(s) {unknown[:5]} "
                    f"(it holds the test split of {self.features or 'its features'})"
                )

    @torch.no_grad()
    def vectors(
        self,
        context: Tensor | None = None,
        behaviours: list[str] | None = None,
        sample_ids: list[str] | None = None,
    ) -> Tensor:
        """Unscaled steering vectors (B, D), on ``context``'s device and dtype (float32 on CPU without one).

        The stored vectors / the MLP are moved to that device once and kept there (see :meth:`to`)."""
        sizes = {len(x) for x in (context, behaviours, sample_ids) if x is not None}
        if len(sizes) > 1:
            raise L2SInputError(f"context, behaviours and sample_ids have different batch sizes: {sorted(sizes)}")
        if not sizes:
            raise L2SInputError(f"{self.method} steerer: give context (B, D) or the batch's behaviours / sample ids")
        batch = sizes.pop()
        device = context.device if context is not None else torch.device("cpu")
        dtype = context.dtype if context is not None and context.is_floating_point() else torch.float32
        if context is not None and (context.ndim != 2 or context.shape[1] != self.hidden_size):
            raise L2SInputError(f"context must be (B, {self.hidden_size}), got {tuple(context.shape)}")
        if self.method == "l2s":
            if context is None:
                raise L2SInputError("the l2s steerer needs the context h (B, D) at layer_context")
            if self._net.input_mean.device != device:
                self._net.to(device)
            return self._net(context.float()).to(dtype).contiguous()
        if self.method == "mean_ba" and behaviours is None:
            raise L2SInputError("the mean_ba steerer needs each input's behaviour")
        if self.method == "p2s_oracle" and sample_ids is None:
            raise L2SInputError("the p2s_oracle steerer needs each input's sample id")
        self.check_inputs(behaviours, sample_ids)
        table = self._placed(_VECTOR_TENSOR[self.method], device, dtype)
        if self.method in ("mean", "random"):
            return table.expand(batch, -1).contiguous()
        if self.method == "mean_ba":
            rows = [self.behaviours.index(b) for b in behaviours]
        else:
            rows = [self._oracle_index[s] for s in sample_ids]
        return table[torch.tensor(rows, dtype=torch.long, device=device)]

    @property
    def digest(self) -> str:
        """A short hash of what the vectors depend on (method, layers, MLP config, every tensor's bytes,
        behaviours, oracle ids), not of ``default_alpha`` or the sweep: predictions record it, so that a file
        made with another steerer (e.g. one retrained with other settings) is never resumed."""
        if self._digest:
            return self._digest
        h = hashlib.sha256(
            json.dumps(
                [
                    self.method,
                    self.layer_steer,
                    self.layer_context,
                    self.hidden_size,
                    self.mlp,
                    self.input_norm,
                    self.behaviours,
                    self.oracle_ids,
                ],
                sort_keys=True,
            ).encode()
        )
        for name in sorted(self.tensors):
            tensor = self.tensors[name]
            h.update(f"{name}:{tuple(tensor.shape)}".encode())
            h.update(tensor.numpy().tobytes())
        self._digest = h.hexdigest()[:16]
        return self._digest

    def norm_stats(self) -> dict[str, float]:
        """Norm statistics recorded at fit (``z_norm_mean``, ``z_norm_std``, ``h_norm_mean``, ``n_rows``) plus
        ``vector_norm_mean`` of the stored vectors for the fixed methods."""
        stats = dict(self.stats)
        stored = _VECTOR_TENSOR.get(self.method)
        if stored:
            stats["vector_norm_mean"] = float(self.tensors[stored].reshape(-1, self.hidden_size).norm(dim=-1).mean())
        return stats

    def attach(self, model: Any, alpha: float | None = None, **kw: Any) -> Any:
        """Add α·vectors to ``model``'s layer L* (see :func:`l2s_lightning.steering.attach.attach_steerer`)."""
        from l2s_lightning.steering.attach import attach_steerer

        return attach_steerer(self, model, alpha=self.default_alpha if alpha is None else alpha, **kw)

    # ------------------------------------------------------------------ files
    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "model": self.model,
            "layer_steer": self.layer_steer,
            "layer_context": self.layer_context,
            "hidden_size": self.hidden_size,
            "default_alpha": self.default_alpha,
            "behaviours": list(self.behaviours),
            "input_norm": {"mean": "tensor:input_mean", "std": "tensor:input_std"} if self.input_norm else None,
            "mlp": dict(self.mlp) if self.mlp is not None else None,
            "fingerprint": self.fingerprint,
            "features": self.features,
            "seed": self.seed,
            "stats": dict(self.stats),
            "oracle_ids": ORACLE_IDS_NAME if self.method == "p2s_oracle" else None,
            "tensors": sorted(self.tensors),
            "sweep": self.sweep,
            "info": dict(self.info),
        }

    def save(self, folder: str | Path) -> Path:
        """Write the folder (files replaced atomically); returns it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = {JSON_NAME: json.dumps(self.to_json(), indent=2).encode()}
        if self.method == "p2s_oracle":
            files[ORACLE_IDS_NAME] = json.dumps(self.oracle_ids).encode()
        tmp = folder / (WEIGHTS_NAME + ".tmp")
        save_file(self.tensors, str(tmp), metadata={"method": self.method, "format_version": str(FORMAT_VERSION)})
        os.replace(tmp, folder / WEIGHTS_NAME)
        for name, data in files.items():
            (folder / (name + ".tmp")).write_bytes(data)
            os.replace(folder / (name + ".tmp"), folder / name)
        if self.method != "p2s_oracle" and (folder / ORACLE_IDS_NAME).exists():
            (folder / ORACLE_IDS_NAME).unlink()
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Steerer:
        folder = Path(folder)
        if not (folder / JSON_NAME).is_file():
            raise FileNotFoundError(f"no {JSON_NAME} in {folder}: not a steerer folder (write one with `l2s fit`)")
        config = read_json(folder / JSON_NAME)
        required = ("method", "model", "layer_steer", "layer_context", "hidden_size")
        missing = [key for key in required if key not in config] if isinstance(config, dict) else list(required)
        if missing:
            raise L2SInputError(f"{folder / JSON_NAME}: not a steerer description (missing {missing})")
        if int(config.get("format_version", 0)) > FORMAT_VERSION:
            raise L2SInputError(
                f"{folder}: steerer format_version {config['format_version']} is newer than this reader ({FORMAT_VERSION})"
            )
        tensors = load_file(str(folder / WEIGHTS_NAME))
        oracle_ids = read_json(folder / config["oracle_ids"]) if config.get("oracle_ids") else []
        return cls(
            method=config["method"],
            model=config["model"],
            layer_steer=int(config["layer_steer"]),
            layer_context=int(config["layer_context"]),
            hidden_size=int(config["hidden_size"]),
            tensors=tensors,
            default_alpha=float(config.get("default_alpha", 1.0)),
            behaviours=list(config.get("behaviours") or []),
            oracle_ids=oracle_ids,
            mlp=config.get("mlp"),
            input_norm=config.get("input_norm") is not None,
            fingerprint=config.get("fingerprint", ""),
            features=config.get("features", ""),
            seed=config.get("seed"),
            stats=dict(config.get("stats") or {}),
            sweep=config.get("sweep"),
            info=dict(config.get("info") or {}),
        )

    def __repr__(self) -> str:
        return (
            f"Steerer(method={self.method!r}, model={self.model!r}, layer_steer={self.layer_steer}, "
            f"layer_context={self.layer_context}, hidden_size={self.hidden_size}, default_alpha={self.default_alpha})"
        )
