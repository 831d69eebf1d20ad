"""Percentile bootstrap intervals over questions: of a mean, of a macro mean over groups (rows resampled within
each group, i.e. stratified), and of the paired difference of two methods' macro means (the same rows resampled
for both). Fixed seed: the same inputs give the same interval."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

N_RESAMPLES = 1000
LEVEL = 0.95
SEED = 0
_CHUNK = 1_000_000  # index draws held in memory at once


def _array(values: Sequence[float] | np.ndarray, what: str = "values") -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"bootstrap: {what} must be a non-empty 1-d sequence, got shape {array.shape}")
    return array


def _resampled_means(values: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_resamples`` resamples (with replacement, same size) of ``values``: shape (n_resamples,)."""
    n = len(values)
    out = np.empty(n_resamples)
    step = max(1, _CHUNK // n)
    for start in range(0, n_resamples, step):
        stop = min(start + step, n_resamples)
        out[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return out


def _interval(stats: np.ndarray, level: float) -> tuple[float, float]:
    if not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap: level={level} must lie in (0, 1)")
    lo, hi = np.quantile(stats, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, n_resamples: int = N_RESAMPLES, level: float = LEVEL, seed: int = SEED
) -> tuple[float, float]:
    """Percentile bootstrap interval (lo, hi) of the mean of ``values``."""
    array = _array(values)
    return _interval(_resampled_means(array, n_resamples, np.random.default_rng(seed)), level)


def _group_index(groups: Sequence[Hashable], n: int) -> list[np.ndarray]:
    if len(groups) != n:
        raise ValueError(f"bootstrap: {len(groups)} group labels for {n} values")
    order: dict[Hashable, list[int]] = {}
    for i, group in enumerate(groups):
        order.setdefault(group, []).append(i)
    return [np.asarray(order[key]) for key in sorted(order, key=str)]


def macro_mean(values: Sequence[float] | np.ndarray, groups: Sequence[Hashable]) -> float:
    """Mean over groups of each group's mean of ``values``."""
    array = _array(values)
    return float(np.mean([array[index].mean() for index in _group_index(groups, len(array))]))


def stratified_macro_ci(
    values: Sequence[float] | np.ndarray,
    groups: Sequence[Hashable],
    n_resamples: int = N_RESAMPLES,
    level: float = LEVEL,
    seed: int = SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`macro_mean`: each resample draws every group's rows from that group."""
    array = _array(values)
    rng = np.random.default_rng(seed)
    means = [_resampled_means(array[index], n_resamples, rng) for index in _group_index(groups, len(array))]
    return _interval(np.mean(means, axis=0), level)


def paired_difference_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    groups: Sequence[Hashable],
    n_resamples: int = N_RESAMPLES,
    level: float = LEVEL,
    seed: int = SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``macro_mean(a, groups) - macro_mean(b, groups)`` where ``a[i]`` and
    ``b[i]`` are two methods' values on the same question: each resample takes the same rows for both (within
    each group)."""
    first, second = _array(a, "a"), _array(b, "b")
    if first.shape != second.shape:
        raise ValueError(f"bootstrap: paired values differ in length ({len(first)} and {len(second)})")
    return stratified_macro_ci(first - second, groups, n_resamples, level, seed)
