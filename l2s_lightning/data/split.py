"""A seeded train/test split, stratified by category, saved as JSON and reused on every later run."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from l2s_lightning.errors import L2SInputError
from l2s_lightning.files import write_atomically
from l2s_lightning.readers import read_json


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
        split = {i: "train" for i in saved["train"]} | {i: "test" for i in saved["test"]}
        missing = [i for i in ids if i not in split]
        if missing:
            raise L2SInputError(f"split file {path} does not cover {len(missing)} sample ids, e.g. {missing[:3]}")
        return split
    split = make_split(ids, categories, test_fraction, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "seed": seed,
        "test_fraction": test_fraction,
        "train": sorted(i for i, s in split.items() if s == "train"),
        "test": sorted(i for i, s in split.items() if s == "test"),
    }
    write_atomically(path, json.dumps(payload, indent=1).encode())  # every rank of a torchrun job may write it
    return split
