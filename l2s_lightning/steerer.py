"""The ``Steerer`` artifact: a folder with ``steerer.json`` + ``weights.safetensors`` (+ ``oracle_ids.json``).

One class for every method (docs/DESIGN.md, "Steerer folder"):

* ``l2s``: g(h), the MLP trained by ``l2s fit`` (tensors ``mlp.*``, ``input_mean``/``input_std``);
* ``mean``: one vector, the mean of z over the training rows (``mean``);
* ``mean_ba``: one mean per behaviour, chosen by each input's behaviour (``behaviour_means`` (B, D));
* ``random``: a seeded random unit direction times the mean ‖z‖ (``random``);
* ``p2s_oracle``: each test input's own z, looked up by sample id (``oracle_steer`` (M, D) + ids).

What each method stores and needs is in :mod:`l2s_lightning.methods`. Vectors are unscaled: α is applied by the
steering hook. No Lightning is needed to load or use one.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import Tensor

from l2s_lightning.errors import L2SInputError
from l2s_lightning.files import write_atomically
from l2s_lightning.methods import METHOD_REGISTRY, STEERER_METHODS, MethodSpec
from l2s_lightning.mlp import SteeringMLP
from l2s_lightning.readers import read_json

FORMAT_VERSION = 1
JSON_NAME, WEIGHTS_NAME, ORACLE_IDS_NAME = "steerer.json", "weights.safetensors", "oracle_ids.json"


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
        spec = METHOD_REGISTRY.get(self.method)
        if spec is None or not spec.has_steerer:
            raise L2SInputError(f"unknown steering method {self.method!r}; expected one of {STEERER_METHODS}")
        self._spec = spec
        missing = [name for name in spec.required if name not in self.tensors]
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
        self._row_index = self._index_rows(spec)
        self._net = self._build_net() if spec.needs_context else None

    def _index_rows(self, spec: MethodSpec) -> dict[str, int]:
        """Key → row of the stored vectors, for a method that picks a row per input (else empty)."""
        lookup = spec.lookup
        if lookup is None or spec.vector_tensor is None:
            return {}
        labels: list[str] = getattr(self, lookup.labels)
        rows = self.tensors[spec.vector_tensor].shape[0]
        if rows != len(labels):
            raise L2SInputError(f"{len(labels)} {lookup.labels_noun} but {spec.vector_tensor} has {rows} rows")
        index = {label: i for i, label in enumerate(labels)}
        if len(index) != len(labels):
            raise L2SInputError(f"{self.method} steerer: {lookup.labels} has repeated {lookup.noun}s")
        return index

    def _build_net(self) -> SteeringMLP:
        """The MLP g from the ``mlp.*`` tensors (and ``input_mean``/``input_std``), in eval mode."""
        if self.mlp is None:
            raise L2SInputError(f"{self.method} steerer needs the `mlp` config (hidden, activation, bias_out)")
        net = SteeringMLP(self.hidden_size, normalize_input=self.input_norm, **self.mlp)
        state = {name[len("mlp.") :]: t for name, t in self.tensors.items() if name.startswith("mlp.")}
        net.net.load_state_dict(state)
        if self.input_norm:
            net.set_input_stats(self.tensors["input_mean"], self.tensors["input_std"], eps=0.0)
        return net.eval().requires_grad_(False)

    @classmethod
    def from_vector(cls, vector: Tensor | Sequence[float], layer: int, alpha: float = 1.0, model: str = "") -> Steerer:
        """A steerer that adds one given ``vector`` (D,) at block ``layer`` for every input (a ``mean``-method
        steerer holding it; ``default_alpha`` = ``alpha``): ``attach`` and ``save`` it like a fitted one."""
        tensor = torch.as_tensor(vector, dtype=torch.float32)
        if tensor.ndim != 1 or tensor.numel() == 0:
            raise L2SInputError(f"vector must be one (D,) vector, got shape {tuple(tensor.shape)}")
        if not torch.isfinite(tensor).all():
            raise L2SInputError("vector holds NaN or infinite values")
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise L2SInputError(f"layer={layer!r} must be a non-negative integer layer index")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise L2SInputError(f"alpha={alpha!r} must be a finite number")
        return cls(
            "mean",
            model=model,
            layer_steer=layer,
            layer_context=layer,
            hidden_size=int(tensor.shape[0]),
            tensors={"mean": tensor},
            default_alpha=float(alpha),
            info={"made_by": "Steerer.from_vector"},
        )

    # ------------------------------------------------------------------ use
    @property
    def spec(self) -> MethodSpec:
        """The method's registry entry (:mod:`l2s_lightning.methods`)."""
        return self._spec

    @property
    def row_index(self) -> Mapping[str, int]:
        """Key (behaviour / sample id) → row of the stored vectors, for ``mean_ba`` and ``p2s_oracle``."""
        return self._row_index

    @property
    def needs_context(self) -> bool:
        return self._spec.needs_context

    @property
    def needs_behaviours(self) -> bool:
        return self._spec.needs_behaviours

    @property
    def needs_sample_ids(self) -> bool:
        return self._spec.needs_sample_ids

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Steerer:
        """Place the steerer where its contexts live, once: the MLP on ``device`` (it keeps computing in
        float32), the stored vectors on ``device`` in ``dtype`` (default float32). :meth:`vectors` on a
        context of that device and dtype then copies nothing between devices; a context elsewhere moves
        them there (once). The saved tensors (``self.tensors``) stay float32 on CPU."""
        device = torch.device(device)
        if self._net is not None:
            self._net.to(device)
        elif self._spec.vector_tensor is not None:
            self._placed(self._spec.vector_tensor, device, dtype or torch.float32)
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
        lookup = self._spec.lookup
        keys = lookup.keys(behaviours, sample_ids) if lookup is not None else None
        if lookup is not None and keys is not None:
            lookup.check(self, keys, sample_ids)

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
        if self._net is not None:
            if context is None:
                raise L2SInputError(f"the {self.method} steerer needs the context h (B, D) at layer_context")
            if self._net.input_mean.device != device:
                self._net.to(device)
            return self._net(context.float()).to(dtype).contiguous()
        spec = self._spec
        assert spec.vector_tensor is not None  # a method with a steerer has the MLP or stored vectors
        if spec.lookup is None:
            return self._placed(spec.vector_tensor, device, dtype).expand(batch, -1).contiguous()
        keys = spec.lookup.keys(behaviours, sample_ids)
        if keys is None:
            raise L2SInputError(f"the {self.method} steerer needs each input's {spec.lookup.noun}")
        self.check_inputs(behaviours, sample_ids)
        rows = torch.tensor([self._row_index[key] for key in keys], dtype=torch.long, device=device)
        return self._placed(spec.vector_tensor, device, dtype)[rows]

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
        stored = self._spec.vector_tensor
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
            "oracle_ids": ORACLE_IDS_NAME if self._spec.needs_sample_ids else None,
            "tensors": sorted(self.tensors),
            "sweep": self.sweep,
            "info": dict(self.info),
        }

    def save(self, folder: str | Path) -> Path:
        """Write the folder (files replaced atomically); returns it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = {JSON_NAME: json.dumps(self.to_json(), indent=2).encode()}
        if self._spec.needs_sample_ids:
            files[ORACLE_IDS_NAME] = json.dumps(self.oracle_ids).encode()
        metadata = {"method": self.method, "format_version": str(FORMAT_VERSION)}
        write_atomically(folder / WEIGHTS_NAME, save(self.tensors, metadata=metadata))
        for name, data in files.items():
            write_atomically(folder / name, data)
        if not self._spec.needs_sample_ids and (folder / ORACLE_IDS_NAME).exists():
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
                f"{folder}: steerer format_version {config['format_version']} is newer than this reader "
                f"({FORMAT_VERSION})"
            )
        described = folder / JSON_NAME
        numbers = {
            key: _whole_number(config[key], described, key) for key in ("layer_steer", "layer_context", "hidden_size")
        }
        default_alpha = config.get("default_alpha", 1.0)
        if (
            isinstance(default_alpha, bool)
            or not isinstance(default_alpha, (int, float))
            or not math.isfinite(default_alpha)
        ):
            raise L2SInputError(f"{described}: default_alpha must be a finite number, got {default_alpha!r}")
        tensors = _read_weights(folder / WEIGHTS_NAME)
        oracle_ids = read_json(folder / config["oracle_ids"]) if config.get("oracle_ids") else []
        try:
            return cls(
                method=config["method"],
                model=config["model"],
                tensors=tensors,
                default_alpha=float(default_alpha),
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
                **numbers,
            )
        except L2SInputError as err:
            raise L2SInputError(f"{folder}: {err}") from None

    def __repr__(self) -> str:
        return (
            f"Steerer(method={self.method!r}, model={self.model!r}, layer_steer={self.layer_steer}, "
            f"layer_context={self.layer_context}, hidden_size={self.hidden_size}, default_alpha={self.default_alpha})"
        )


def _whole_number(value: Any, path: Path, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise L2SInputError(f"{path}: {key} must be a whole number, got {value!r}")
    return value


def _read_weights(path: Path) -> dict[str, Tensor]:
    """The tensors of a steerer's safetensors file; an L2SInputError naming it when it cannot be read or holds a
    NaN or infinite value."""
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise
    except Exception as err:  # safetensors' own error type for a truncated or overwritten file
        raise L2SInputError(f"{path}: not a readable safetensors file ({err}); fit the steerer again") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise L2SInputError(f"{path}: tensor {name!r} holds NaN or infinite values; fit the steerer again")
    return tensors
