"""A seeded train/test split, stratified by category, saved as JSON and reused on every later run; an optional
validation part carved from train (``l2s tune`` chooses its settings there, never on test)."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from l2s_lightning.errors import L2SInputError
from l2s_lightning.files import write_atomically
from l2s_lightning.readers import read_json

SPLITS = ("train", "validation", "test")  # validation: carved from train by `l2s tune` (carve_validation)


def make_split(ids: Sequence[str], categories: Sequence[str], test_fraction: float, seed: int) -> dict[str, str]:
    """Map each id to "train" or "test": within each category, a seeded shuffle puts
    ``round(test_fraction * n)`` ids in test."""
    if not 0.0 <= test_fraction < 1.0:
        raise L2SInputError(f"test_fraction={test_fraction} must be in [0, 1)")
    by_category: dict[str, list[str]] = defaultdict(list)
    for sample_id, category in zip(ids, categories):
        by_category[category].append(sample_id)
    rng = random.Random(seed)
    split: dict[str, str] = {}
    for category in sorted(by_category):
        members = sorted(by_category[category])
        rng.shuffle(members)
        n_test = round(test_fraction * len(members))
        for i, sample_id in enumerate(members):
            split[sample_id] = "test" if i < n_test else "train"
    return split


def load_or_make_split(
    path: str | Path, ids: Sequence[str], categories: Sequence[str], test_fraction: float, seed: int
) -> dict[str, str]:
    """Reuse the split saved at ``path`` (checking seed, fraction and ids), or make and save it."""
    path = Path(path)
    if path.is_file():
        saved = read_json(path)
        lists = isinstance(saved, dict) and all(
            isinstance(saved.get(key), list) and all(isinstance(i, str) for i in saved[key])
            for key in ("train", "test")
        )
        if not lists:
            raise L2SInputError(
                f"split file {path}: not a split (needs 'train' and 'test' lists of sample ids); "
                "delete it or give another data.split_file to make a new one"
            )
        if saved.get("seed") != seed or abs(saved.get("test_fraction", -1) - test_fraction) > 1e-9:
            raise L2SInputError(
                f"split file {path} was made with seed={saved.get('seed')}, test_fraction="
                f"{saved.get('test_fraction')}, not seed={seed}, test_fraction={test_fraction}: "
                "use the same values or another split file"
            )
        validation = saved.get("validation", [])
        if not isinstance(validation, list) or not all(isinstance(i, str) for i in validation):
            raise L2SInputError(f"split file {path}: 'validation' must be a list of sample ids")
        split = (
            {i: "train" for i in saved["train"]}
            | {i: "validation" for i in validation}
            | {i: "test" for i in saved["test"]}
        )
        missing = [i for i in ids if i not in split]
        if missing:
            raise L2SInputError(f"split file {path} does not cover {len(missing)} sample ids, e.g. {missing[:3]}")
        return split
    split = make_split(ids, categories, test_fraction, seed)
    save_split(path, split, test_fraction, seed)
    return split


def carve_validation(
    split: dict[str, str], categories: dict[str, str], per_category: int | Mapping[str, int], seed: int
) -> dict[str, str]:
    """``split`` with N train ids of each category (a seeded shuffle) moved to "validation"; test ids are never
    moved. ``categories`` maps each id to its category; ``per_category``: N, or N per category name with a
    ``default`` for the others."""
    counts = dict(per_category) if isinstance(per_category, Mapping) else {"default": per_category}
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise L2SInputError(f"validation_per_category[{name!r}]={value!r} must be a non-negative integer")
    unknown = sorted(set(counts) - set(categories.values()) - {"default"})
    if unknown:
        raise L2SInputError(f"validation_per_category names categories {unknown} the data does not have")
    by_category: dict[str, list[str]] = defaultdict(list)
    for sample_id, part in split.items():
        if part == "train":
            by_category[categories[sample_id]].append(sample_id)
    rng = random.Random(seed)
    carved = dict(split)
    for category in sorted(by_category):
        members = sorted(by_category[category])
        n = counts.get(category, counts.get("default", 0))
        if n and len(members) <= n:
            raise L2SInputError(
                f"category {category!r} has {len(members)} training rows: too few to hold out "
                f"{n} for validation and still train"
            )
        rng.shuffle(members)
        for sample_id in members[:n]:
            carved[sample_id] = "validation"
    return carved


def save_split(path: str | Path, split: dict[str, str], test_fraction: float, seed: int) -> Path:
    """Write ``split`` as :func:`load_or_make_split` reads it (a "validation" list when it has one)."""
    payload: dict[str, object] = {"seed": seed, "test_fraction": test_fraction}
    for part in ("train", "validation", "test"):
        ids = sorted(i for i, s in split.items() if s == part)
        if ids or part != "validation":
            payload[part] = ids
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(payload, indent=1).encode())  # every rank of a torchrun job may write it
    return path
