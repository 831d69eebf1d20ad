"""The steering methods, in one registry: name → how the method is made, which stored tensors hold it and what
it needs at test time (docs/DESIGN.md, "Steerer folder").

* ``none``, ``prompt``: not fitted, no steerer (``prompt`` adds the behaviour's instruction to the prompt);
* ``mean``, ``mean_ba``, ``random``, ``p2s_oracle``: built from features.h5 (``build_baseline``);
* ``l2s``: the MLP g(h) trained by ``l2s fit``.

Plain Python (no torch): the CLIs import the ``Literal`` types below for their choices.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from l2s_lightning.errors import L2SInputError

MethodName = Literal["none", "prompt", "mean", "mean_ba", "random", "p2s_oracle", "l2s"]
"""Every method (``--model.method`` of ``l2s predict``), in the registry's order."""
BaselineName = Literal["mean", "mean_ba", "random", "p2s_oracle"]
"""The methods built from features.h5 without a training loop."""
SteererMethodName = Literal["l2s", BaselineName]
"""The methods with a steerer folder (``--method`` of ``l2s fit``: L2S, then the baselines)."""

Making = Literal["unfitted", "features", "trained"]
"""How a method's steerer is made: ``unfitted`` (none), ``features`` (computed from features.h5),
``trained`` (the training loop of ``l2s fit``)."""


class KeyedRows(Protocol):
    """What a :class:`Lookup` reads from a steerer to check the inputs' keys."""

    behaviours: list[str]
    features: str

    @property
    def row_index(self) -> Mapping[str, int]: ...


@dataclass(frozen=True)
class Lookup:
    """The stored vectors are rows, one per key; each input takes the row of its key (behaviour / sample id)."""

    key: Literal["behaviours", "sample_ids"]  # the ``vectors()`` argument that holds each input's key
    noun: str  # one key, in messages ("behaviour", "sample id")
    labels: Literal["behaviours", "oracle_ids"]  # the Steerer field giving each row's key, in row order
    labels_noun: str  # that field, in messages
    check: Callable[[KeyedRows, Sequence[str], Sequence[str] | None], None]  # raises for keys without a row

    def keys(self, behaviours: Sequence[str] | None, sample_ids: Sequence[str] | None) -> Sequence[str] | None:
        """The inputs' keys among ``vectors()``'s arguments (``None`` when not given)."""
        return behaviours if self.key == "behaviours" else sample_ids


@dataclass(frozen=True)
class MethodSpec:
    """One steering method: how it is made, where its vectors are stored, what it needs at test time."""

    name: str
    making: Making
    vector_tensor: str | None = None  # the stored tensor holding the vectors (None: no steerer, or the MLP)
    required: tuple[str, ...] = ()  # tensors a steerer of this method must hold
    needs_context: bool = False  # the vectors are computed from h at layer_context (by the MLP)
    lookup: Lookup | None = None  # rows of ``vector_tensor`` chosen per input; None: one vector for every input

    @property
    def has_steerer(self) -> bool:
        return self.making != "unfitted"

    @property
    def is_baseline(self) -> bool:
        return self.making == "features"

    @property
    def needs_behaviours(self) -> bool:
        return self.lookup is not None and self.lookup.key == "behaviours"

    @property
    def needs_sample_ids(self) -> bool:
        return self.lookup is not None and self.lookup.key == "sample_ids"


def _check_behaviours(steerer: KeyedRows, behaviours: Sequence[str], sample_ids: Sequence[str] | None) -> None:
    unknown = sorted(set(behaviours) - set(steerer.behaviours))
    if unknown:
        examples = (
            f" (samples e.g. {[i for i, b in zip(sample_ids, behaviours) if b in unknown][:3]})" if sample_ids else ""
        )
        raise L2SInputError(
            f"mean_ba steerer has no vector for behaviour(s) {unknown}{examples}; it knows {steerer.behaviours}"
        )


def _check_sample_ids(steerer: KeyedRows, sample_ids: Sequence[str], _: Sequence[str] | None) -> None:
    unknown = [s for s in sample_ids if s not in steerer.row_index]
    if unknown:
        raise L2SInputError(
            f"p2s_oracle steerer has no target z for sample id(s) {unknown[:5]} "
            f"(it holds the test split of {steerer.features or 'its features'})"
        )


BY_BEHAVIOUR = Lookup("behaviours", "behaviour", "behaviours", "behaviours", _check_behaviours)
BY_SAMPLE_ID = Lookup("sample_ids", "sample id", "oracle_ids", "oracle ids", _check_sample_ids)

METHOD_REGISTRY: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("none", "unfitted"),
        MethodSpec("prompt", "unfitted"),
        MethodSpec("mean", "features", vector_tensor="mean", required=("mean",)),
        MethodSpec("mean_ba", "features", "behaviour_means", ("behaviour_means",), lookup=BY_BEHAVIOUR),
        MethodSpec("random", "features", vector_tensor="random", required=("random",)),
        MethodSpec("p2s_oracle", "features", "oracle_steer", ("oracle_steer",), lookup=BY_SAMPLE_ID),
        MethodSpec("l2s", "trained", required=("mlp.0.weight",), needs_context=True),
    )
}
ALL_METHODS: tuple[str, ...] = tuple(METHOD_REGISTRY)
STEERER_METHODS: tuple[str, ...] = tuple(name for name, spec in METHOD_REGISTRY.items() if spec.has_steerer)
BASELINES: tuple[str, ...] = tuple(name for name, spec in METHOD_REGISTRY.items() if spec.is_baseline)


__all__ = [
    "ALL_METHODS",
    "BASELINES",
    "METHOD_REGISTRY",
    "STEERER_METHODS",
    "BaselineName",
    "Lookup",
    "MethodName",
    "MethodSpec",
    "SteererMethodName",
]
