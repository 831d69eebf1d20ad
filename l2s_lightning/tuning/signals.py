"""Cheap signals of a layer pair (L', L*) from features alone: does h at L' tell the behaviours apart, and does
it predict z at L* on held-out rows.

* ``probe_accuracy``: a nearest-centroid probe on standardised h (centroids of the training rows' behaviours),
  its accuracy on the validation rows: whether L' carries what input-dependent steering needs.
* ``ridge_cos``: ridge regression from standardised h to z fitted on the training rows, the mean cosine of its
  prediction to z on the validation rows whose z is not zero (a linear stand-in for the MLP g).
* ``zero_norm_ratio``: on validation rows with z = 0 (a zero-target behaviour), the mean norm of the ridge
  prediction over the mean norm of the nonzero z: how close to "leave it alone" the map gets (0 is perfect).
* ``strength_scale``: mean ‖h_L*‖ / mean ‖z_L*‖ of the training rows, which turns a relative strength
  (‖α z‖ / ‖h_L*‖) into α.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PairSignals:
    """The signals of one (L', L*) pair (module docstring)."""

    layer_context: int
    layer_steer: int
    probe_accuracy: float
    ridge_cos: float
    zero_norm_ratio: float | None
    strength_scale: float

    @property
    def score(self) -> float:
        """How promising the pair is: probe accuracy times held-out ridge cosine (both in [0, 1] when useful)."""
        return self.probe_accuracy * max(self.ridge_cos, 0.0)

    def as_row(self) -> dict[str, Any]:
        return asdict(self) | {"score": self.score}


def _standardise(train: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(0), train.std(0) + 1e-6
    return (train - mean) / std, (other - mean) / std


def probe_accuracy(h_train: np.ndarray, y_train: np.ndarray, h_val: np.ndarray, y_val: np.ndarray) -> float:
    """Nearest-centroid accuracy on the validation rows (standardised h, Euclidean distance)."""
    train, val = _standardise(h_train.astype(np.float64), h_val.astype(np.float64))
    labels = sorted(set(y_train.tolist()))
    centroids = np.stack([train[y_train == label].mean(0) for label in labels])
    distances = ((val[:, None, :] - centroids[None]) ** 2).sum(-1)
    predicted = np.array(labels, dtype=object)[distances.argmin(1)]
    return float((predicted == y_val).mean())


def ridge_predict(h_train: np.ndarray, z_train: np.ndarray, h_val: np.ndarray, penalty: float = 1.0) -> np.ndarray:
    """Ridge regression (standardised h, intercept) fitted on the training rows, applied to ``h_val``; the
    penalty is relative to the mean eigenvalue of the Gram matrix."""
    train, val = _standardise(h_train.astype(np.float64), h_val.astype(np.float64))
    z_mean = z_train.mean(0)
    gram = train @ train.T  # (N, N): the dual form, N < D here
    ridge = penalty * np.trace(gram) / len(gram)
    weights = np.linalg.solve(gram + ridge * np.eye(len(gram)), z_train - z_mean)
    return (val @ train.T) @ weights + z_mean


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def pair_signals(
    layer_context: int,
    layer_steer: int,
    h_train: np.ndarray,
    z_train: np.ndarray,
    y_train: np.ndarray,
    h_val: np.ndarray,
    z_val: np.ndarray,
    y_val: np.ndarray,
    h_steer_train: np.ndarray,
) -> PairSignals:
    """The signals of the pair from h at L' (``h_*``), z at L* (``z_*``), behaviours (``y_*``) and h at L* of the
    training rows (``h_steer_train``, for the strength scale)."""
    predicted = ridge_predict(h_train, z_train, h_val)
    nonzero = np.linalg.norm(z_val, axis=1) > 0
    z_norm = float(np.linalg.norm(z_train[np.linalg.norm(z_train, axis=1) > 0], axis=1).mean())
    zero_ratio = None
    if (~nonzero).any():
        zero_ratio = float(np.linalg.norm(predicted[~nonzero], axis=1).mean() / z_norm)
    return PairSignals(
        layer_context=layer_context,
        layer_steer=layer_steer,
        probe_accuracy=probe_accuracy(h_train, y_train, h_val, y_val),
        ridge_cos=float(_cos(predicted[nonzero], z_val[nonzero]).mean()) if nonzero.any() else 0.0,
        zero_norm_ratio=zero_ratio,
        strength_scale=float(np.linalg.norm(h_steer_train, axis=1).mean() / z_norm),
    )
