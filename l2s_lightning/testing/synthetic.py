"""Synthetic test inputs: a features.h5 where z = A·tanh(B·h) + a per-behaviour offset + noise (the behaviour is a
function of h, the sign of h₀, so an input-dependent g can beat a single mean vector), prompt items, and a JSONL
dataset with its templates for stage configs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from l2s_lightning.data.items import PromptItem
from l2s_lightning.features import write_features


def make_synthetic_features(
    path: str | Path,
    n: int = 200,
    dim: int = 16,
    seed: int = 0,
    test_fraction: float = 0.2,
    noise: float = 0.05,
    behaviours: tuple[str, str] = ("refuse", "defer"),
    **attrs: Any,
) -> Path:
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, dim)).astype(np.float32)
    a = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    b = rng.normal(size=(dim, dim)) / np.sqrt(dim) * 2.0
    offsets = rng.normal(size=(2, dim)) * 2.0
    which = (h[:, 0] > 0).astype(int)
    z = np.tanh(h @ b.T) @ a.T + offsets[which] + noise * rng.normal(size=(n, dim))
    split = np.where(rng.random(n) < test_fraction, "test", "train")
    attrs = {
        "model": "synthetic",
        "layer_steer": 1,
        "layer_context": 1,
        "num_layers": 2,
        "template_set": "synthetic",
        "dataset": "synthetic",
        "split_seed": seed,
        "test_fraction": test_fraction,
        **attrs,
    }
    return write_features(
        path,
        h,
        z.astype(np.float32),
        [f"s{i:04d}" for i in range(n)],
        [f"cat{w}" for w in which],
        [behaviours[w] for w in which],
        split.tolist(),
        **attrs,
    )


def prompt_item(sample_id: str, question: str, **fields: Any) -> PromptItem:
    """A test-split :class:`PromptItem` of a JSONL ``harm`` / ``refuse`` row with no contrast; ``fields`` override."""
    values: dict[str, Any] = {
        "id": sample_id,
        "question": question,
        "category": "harm",
        "behaviour": "refuse",
        "positive": "",
        "negative": "",
        "suffix": "",
        "close_turn": False,
        "instruction": "",
        "split": "test",
        "benchmark": "jsonl",
    }
    return PromptItem(**(values | fields))


def jsonl_data(folder: Path, rows: list[dict[str, Any]], templates: dict[str, Any], **settings: Any) -> dict[str, Any]:
    """Write ``rows`` to ``folder/data.jsonl`` and the template set ``templates`` to ``folder/templates.yaml``; the
    ``data`` section of a stage config reading them as text (``settings``: more of its keys, e.g. batch_size)."""
    (folder / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "templates.yaml").write_text(yaml.safe_dump(templates))
    source = {"class_path": "l2s_lightning.data.sources.JsonlSource", "init_args": {"path": str(folder / "data.jsonl")}}
    return {"source": source, "templates": str(folder / "templates.yaml"), "use_images": False, **settings}
