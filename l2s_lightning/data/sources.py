"""Dataset readers: MM-SafetyBench, POPE and generic JSONL, each giving a `datasets.Dataset` of prompt rows.

Every row has the columns of :data:`COLUMNS`: ``id``, ``question``, ``category``, ``image`` (path or ""),
``key_phrase`` (rendered as a TYPO image when ``image`` is empty and images are wanted), ``positive``,
``negative``, ``behaviour`` (row-level overrides, "" when absent), ``label`` (POPE's yes/no), ``benchmark``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import datasets

COLUMNS = ("id", "question", "category", "image", "key_phrase", "positive", "negative", "behaviour", "label", "benchmark")


def _row(**values: str) -> dict[str, str]:
    row = {column: "" for column in COLUMNS}
    row.update({key: "" if value is None else str(value) for key, value in values.items()})
    return row


def _dataset(rows: list[dict[str, str]], where: str) -> datasets.Dataset:
    if not rows:
        raise ValueError(f"empty dataset: no rows read from {where}")
    ids = [row["id"] for row in rows]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"{where}: duplicate sample ids {dupes}")
    return datasets.Dataset.from_list(rows)


class PromptSource:
    """A reader of prompt rows; subclasses are chosen in YAML by ``class_path``."""

    def load(self) -> datasets.Dataset:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:
        """A short name recorded in output files."""
        return type(self).__name__


@dataclass
class MMSafetyBenchSource(PromptSource):
    """MM-SafetyBench from a local folder of its 13 ``processed_questions`` JSON files.

    Args:
        root: folder with ``01-Illegal_Activitiy.json`` … ``13-Gov_Decision.json``.
        question_field: ``Rephrased Question`` (pairs with SD_TYPO/TYPO images), ``Changed Question`` or
            ``Question`` (for text-only models).
        image_root: optional folder laid out as upstream ``imgs/<scenario>/<image_type>/<index>.jpg``;
            without it (or when a file is absent and ``render_missing``) a TYPO image of the Key Phrase is
            rendered.
        use_images: False for text-only models.
        scenarios: restrict to these scenario ids ("01", "10", ...) or names.
    """

    root: str
    question_field: str = "Rephrased Question"
    image_root: str | None = None
    image_type: str = "SD_TYPO"
    use_images: bool = True
    render_missing: bool = True
    scenarios: list[str] | None = None

    def load(self) -> datasets.Dataset:
        root = Path(self.root)
        files = sorted(root.glob("[0-9][0-9]-*.json"))
        if not files:
            raise FileNotFoundError(f"no MM-SafetyBench question files (NN-Scenario.json) in {root}")
        rows = []
        for file in files:
            scenario = file.stem
            if self.scenarios and not any(scenario == s or scenario.startswith(f"{s}-") for s in self.scenarios):
                continue
            try:
                items = json.loads(file.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{file}: not valid JSON ({err})") from err
            for key, item in items.items():
                if self.question_field not in item:
                    raise ValueError(f"{file} item {key}: no field {self.question_field!r} (has {sorted(item)})")
                image = ""
                if self.use_images and self.image_root:
                    candidate = Path(self.image_root) / scenario / self.image_type / f"{key}.jpg"
                    if candidate.is_file() or not self.render_missing:
                        image = str(candidate)
                rows.append(
                    _row(
                        id=f"{scenario}/{key}",
                        question=item[self.question_field],
                        category=scenario,
                        image=image,
                        key_phrase=item.get("Key Phrase", "") if self.use_images else "",
                        benchmark="mm_safetybench",
                    )
                )
        return _dataset(rows, str(root))


_POPE_SUBSET = re.compile(r"(random|popular|adversarial)")


@dataclass
class PopeSource(PromptSource):
    """POPE from its JSON/JSONL files (``{"question_id", "image", "text", "label"}`` per line) plus an image
    folder, or from a `datasets` id / local dataset folder (columns ``question``, ``answer``, ``image``,
    ``category``)."""

    files: list[str] | None = None
    image_root: str | None = None
    hf_dataset: str | None = None
    hf_split: str = "test"
    image_cache: str | None = None

    def load(self) -> datasets.Dataset:
        if self.hf_dataset:
            return self._load_hf()
        if not self.files:
            raise ValueError("PopeSource needs `files` (POPE JSON/JSONL) or `hf_dataset`")
        rows = []
        for name in self.files:
            path = Path(name)
            if not path.is_file():
                raise FileNotFoundError(f"POPE file not found: {path}")
            match = _POPE_SUBSET.search(path.stem)
            subset = match.group(1) if match else path.stem
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number}: not valid JSON ({err})") from err
                for key in ("question_id", "image", "text", "label"):
                    if key not in item:
                        raise ValueError(f"{path}:{number}: missing field {key!r}")
                image = Path(self.image_root or path.parent) / item["image"]
                rows.append(_pope_row(f"{subset}/{item['question_id']}", item["text"], subset, str(image), item["label"]))
        return _dataset(rows, ", ".join(self.files))

    def _load_hf(self) -> datasets.Dataset:
        data = datasets.load_dataset(self.hf_dataset, split=self.hf_split)
        cache = Path(self.image_cache or Path.home() / ".cache" / "l2s_lightning" / "pope_images")
        cache.mkdir(parents=True, exist_ok=True)
        rows = []
        for index, item in enumerate(data):
            subset = item.get("category", "pope")
            sample_id = f"{subset}/{item.get('question_id', index)}"
            image_path = cache / f"{sample_id.replace('/', '_')}.png"
            if not image_path.is_file():
                item["image"].convert("RGB").save(image_path)
            rows.append(_pope_row(sample_id, item["question"], subset, str(image_path), item["answer"]))
        return _dataset(rows, self.hf_dataset)


def _pope_row(sample_id: str, question: str, subset: str, image: str, label: str) -> dict[str, str]:
    label = str(label).strip().lower()
    if label not in {"yes", "no"}:
        raise ValueError(f"POPE sample {sample_id!r}: label {label!r} is not yes/no")
    return _row(id=sample_id, question=question, category=subset, image=image, label=label, benchmark="pope")


@dataclass
class JsonlSource(PromptSource):
    """Generic JSONL: ``id``, ``question``, optional ``image`` (relative to the file or ``image_root``),
    ``category``, optional ``positive`` / ``negative`` / ``behaviour`` / ``label``."""

    path: str
    image_root: str | None = None
    benchmark: str = "jsonl"

    def load(self) -> datasets.Dataset:
        path = Path(self.path)
        if not path.is_file():
            raise FileNotFoundError(f"JSONL file not found: {path}")
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON ({err})") from err
            for key in ("id", "question"):
                if not item.get(key):
                    raise ValueError(f"{path}:{number}: missing field {key!r}")
            image = item.get("image") or ""
            if image:
                image = str(Path(self.image_root or path.parent) / image)
            values = {k: item.get(k, "") for k in ("category", "positive", "negative", "behaviour", "label")}
            rows.append(_row(id=item["id"], question=item["question"], image=image, benchmark=self.benchmark, **values))
        return _dataset(rows, str(path))

