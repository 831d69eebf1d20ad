"""L2S training (`FeatureDataModule`, `L2SModule`), baseline steerers and `l2s fit`.

Imports are lazy so that importing the package does not pull in Lightning. `SteeringMLP` lives in
`l2s_lightning.mlp` (the steerer uses it); it is re-exported here.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "FeatureDataModule": "l2s_lightning.training.data",
    "L2SModule": "l2s_lightning.training.module",
    "SteeringMLP": "l2s_lightning.mlp",
    "build_baseline": "l2s_lightning.training.baselines",
    "l2s_steerer": "l2s_lightning.training.baselines",
    "evaluate_steerer": "l2s_lightning.training.baselines",
    "fit_main": "l2s_lightning.training.cli",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
