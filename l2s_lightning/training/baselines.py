"""Steerers from features.h5: the fixed baselines (no training loop), the L2S steerer from a trained module,
and their evaluation against the targets z (MSE and cosine similarity)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from l2s_lightning.errors import L2SInputError
from l2s_lightning.features import FeatureFile
from l2s_lightning.methods import BASELINES, METHOD_REGISTRY
from l2s_lightning.mlp import SteeringMLP
from l2s_lightning.steerer import Steerer


def _rows(file: FeatureFile, rows: str | Sequence[int] | np.ndarray | None, default: str) -> np.ndarray:
    if rows is None:
        rows = default
    indices = file.rows(rows) if isinstance(rows, str) else np.asarray(rows, dtype=np.int64)
    if len(indices) == 0:
        raise L2SInputError(
            f"{file.path}: no rows to build from ({rows if isinstance(rows, str) else 'empty index list'})"
        )
    return indices


@torch.no_grad()
def target_stats(file: FeatureFile, rows: np.ndarray) -> dict[str, Any]:
    """Mean z, per-behaviour sums/counts and norm statistics over ``rows`` (streamed)."""
    dim = file.dim
    total = torch.zeros(dim, dtype=torch.float64)
    by_behaviour: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    z_norms, h_norms = [], []
    for part, arrays in file.iter_chunks(rows):
        z = torch.from_numpy(arrays["steer"]).double()
        total += z.sum(0)
        z_norms.append(z.norm(dim=-1))
        h_norms.append(torch.from_numpy(arrays["context"]).double().norm(dim=-1))
        for behaviour in sorted(set(file.behaviour[part].tolist())):
            mask = torch.from_numpy(file.behaviour[part] == behaviour)
            by_behaviour[behaviour] = by_behaviour.get(behaviour, torch.zeros(dim, dtype=torch.float64)) + z[mask].sum(
                0
            )
            counts[behaviour] = counts.get(behaviour, 0) + int(mask.sum())
    z_norm, h_norm = torch.cat(z_norms), torch.cat(h_norms)
    return {
        "mean": (total / len(rows)).float(),
        "behaviour_means": {b: (by_behaviour[b] / counts[b]).float() for b in sorted(counts)},
        "counts": counts,
        "stats": {
            "n_rows": int(len(rows)),
            "z_norm_mean": float(z_norm.mean()),
            "z_norm_std": float(z_norm.std()) if len(z_norm) > 1 else 0.0,
            "h_norm_mean": float(h_norm.mean()),
        },
    }


def _common(file: FeatureFile, rows: np.ndarray, default_alpha: float, seed: int | None) -> dict[str, Any]:
    meta = file.meta
    return {
        "model": meta.model,
        "layer_steer": meta.layer_steer,
        "layer_context": meta.layer_context,
        "hidden_size": meta.hidden_size,
        "default_alpha": float(default_alpha),
        "fingerprint": file.fingerprint(rows),
        "features": str(file.path),
        "seed": seed,
    }


@dataclass(frozen=True)
class _Build:
    """What every baseline is built from: the file, its training-row summary and the common steerer fields."""

    file: FeatureFile
    summary: dict[str, Any]
    seed: int
    test_split: str
    common: dict[str, Any]
    info: dict[str, Any]


def _mean(b: _Build) -> Steerer:
    return Steerer("mean", tensors={"mean": b.summary["mean"]}, info=b.info, **b.common)


def _mean_ba(b: _Build) -> Steerer:
    trained = b.summary["behaviour_means"]
    test_behaviours = sorted(set(b.file.behaviour[b.file.rows(b.test_split)].tolist()))
    missing = [behaviour for behaviour in test_behaviours if behaviour not in trained]
    if missing:
        raise L2SInputError(
            f"mean_ba: behaviour(s) {missing} of split {b.test_split!r} have no training rows "
            f"(training behaviours: {sorted(trained)}); re-split the data or drop those rows"
        )
    behaviours = sorted(trained)
    return Steerer(
        "mean_ba",
        tensors={"behaviour_means": torch.stack([trained[behaviour] for behaviour in behaviours])},
        behaviours=behaviours,
        info=b.info | {"counts": b.summary["counts"]},
        **b.common,
    )


def _random(b: _Build) -> Steerer:
    generator = torch.Generator().manual_seed(int(b.seed))
    direction = torch.randn(b.file.dim, generator=generator, dtype=torch.float64)
    vector = direction / direction.norm() * b.summary["stats"]["z_norm_mean"]
    return Steerer("random", tensors={"random": vector.float()}, info=b.info, **b.common)


def _p2s_oracle(b: _Build) -> Steerer:
    test_rows = b.file.rows(b.test_split)
    if len(test_rows) == 0:
        raise L2SInputError(f"p2s_oracle: {b.file.path} has no rows in split {b.test_split!r} to take targets from")
    b.file.check_rows(test_rows)
    steer = torch.from_numpy(b.file.read(test_rows, columns=("steer",))["steer"])
    return Steerer(
        "p2s_oracle",
        tensors={"oracle_steer": steer},
        oracle_ids=b.file.sample_id[test_rows].tolist(),
        info=b.info | {"oracle_rows": int(len(test_rows))},
        **b.common,
    )


BUILDERS: dict[str, Callable[[_Build], Steerer]] = {
    "mean": _mean,
    "mean_ba": _mean_ba,
    "random": _random,
    "p2s_oracle": _p2s_oracle,
}
"""How each baseline of the registry (``METHOD_REGISTRY[name].is_baseline``) is built."""


def build_baseline(
    method: str,
    feature_file: FeatureFile | str,
    seed: int = 0,
    *,
    rows: str | Sequence[int] | np.ndarray | None = None,
    test_split: str = "test",
    default_alpha: float = 1.0,
) -> Steerer:
    """A fixed steerer computed from the training ``rows`` (default: the ``train`` split).

    ``mean``: mean z; ``mean_ba``: mean z per behaviour (refused when the test split has a behaviour with no
    training rows); ``random``: a seeded random unit vector × mean ‖z‖; ``p2s_oracle``: the z of every row of
    ``test_split``, looked up by sample id.
    """
    spec = METHOD_REGISTRY.get(method)
    if spec is None or not spec.is_baseline:
        raise L2SInputError(f"unknown baseline {method!r}; expected one of {BASELINES} (l2s is trained by `l2s fit`)")
    file = feature_file if isinstance(feature_file, FeatureFile) else FeatureFile(feature_file)
    rows = _rows(file, rows, "train")
    file.check_rows(rows)
    summary = target_stats(file, rows)
    common = _common(file, rows, default_alpha, seed) | {"stats": summary["stats"]}
    return BUILDERS[method](_Build(file, summary, seed, test_split, common, {"rows": int(len(rows))}))


def l2s_steerer(
    module: torch.nn.Module,
    feature_file: FeatureFile,
    rows: np.ndarray,
    *,
    default_alpha: float = 1.0,
    seed: int | None = None,
    info: dict[str, Any] | None = None,
) -> Steerer:
    """The ``l2s`` steerer of a trained :class:`~l2s_lightning.training.module.L2SModule` (or SteeringMLP)."""
    mlp = cast(SteeringMLP, getattr(module, "mlp", module))
    tensors = {f"mlp.{name}": t.detach().cpu() for name, t in mlp.net.state_dict().items()}
    if mlp.normalize_input:
        tensors |= {"input_mean": mlp.input_mean.detach().cpu(), "input_std": mlp.input_std.detach().cpu()}
    stats = target_stats(feature_file, rows)["stats"]
    return Steerer(
        "l2s",
        tensors=tensors,
        mlp={"hidden": mlp.hidden, "activation": mlp.activation, "bias_out": mlp.bias_out},
        input_norm=mlp.normalize_input,
        stats=stats,
        info={"rows": int(len(rows)), **(info or {})},
        **_common(feature_file, rows, default_alpha, seed),
    )


@torch.no_grad()
def evaluate_steerer(steerer: Steerer, file: FeatureFile, rows: np.ndarray, chunk: int = 4096) -> dict[str, Any] | None:
    """MSE (over all elements) and mean cosine similarity between the steerer's vectors and z on ``rows``, and the
    same per behaviour (``by_behaviour``: ``mse``, ``cos`` over rows whose z is not zero (None when every z is
    zero, as for a ``zero_target`` behaviour), mean vector norm ``norm``, ``n``); ``None`` when the steerer cannot
    produce vectors for the rows (the oracle outside its split)."""
    if len(rows) == 0:
        return None
    if steerer.needs_sample_ids and not set(file.sample_id[rows].tolist()) <= set(steerer.row_index):
        return None
    sums: dict[str, dict[str, float]] = {}
    for part, arrays in file.iter_chunks(rows, chunk):
        context, target = torch.from_numpy(arrays["context"]), torch.from_numpy(arrays["steer"])
        behaviours = file.behaviour[part].tolist()
        vectors = steerer.vectors(context, behaviours=behaviours, sample_ids=file.sample_id[part].tolist())
        squared = ((vectors.double() - target.double()) ** 2).sum(dim=-1)
        cos = F.cosine_similarity(vectors, target, dim=-1).double()
        nonzero = target.abs().sum(dim=-1) > 0
        norms = vectors.double().norm(dim=-1)
        for i, behaviour in enumerate(behaviours):
            for key in ("", behaviour):  # "" gathers every row
                acc = sums.setdefault(
                    key, {"squared": 0.0, "cos": 0.0, "all_cos": 0.0, "n_cos": 0, "norm": 0.0, "n": 0}
                )
                acc["squared"] += float(squared[i])
                acc["all_cos"] += float(cos[i])
                acc["cos"] += float(cos[i]) if nonzero[i] else 0.0
                acc["n_cos"] += int(nonzero[i])
                acc["norm"] += float(norms[i])
                acc["n"] += 1
    total = sums.pop("")
    n = int(total["n"])
    by_behaviour = {
        behaviour: {
            "mse": acc["squared"] / (acc["n"] * file.dim),
            "cos": acc["cos"] / acc["n_cos"] if acc["n_cos"] else None,
            "norm": acc["norm"] / acc["n"],
            "n": int(acc["n"]),
        }
        for behaviour, acc in sorted(sums.items())
    }
    return {"mse": total["squared"] / (n * file.dim), "cos": total["all_cos"] / n, "n": n, "by_behaviour": by_behaviour}


__all__ = ["BASELINES", "BUILDERS", "build_baseline", "evaluate_steerer", "l2s_steerer", "target_stats"]
