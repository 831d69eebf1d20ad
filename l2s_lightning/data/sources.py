"""Dataset readers: MM-SafetyBench, POPE and generic JSONL, each giving a `datasets.Dataset` of prompt rows.

Every row has the columns of :data:`COLUMNS`: ``id``, ``question``, ``category``, ``image`` (path or ""),
``key_phrase`` (rendered as a TYPO image when ``image`` is empty and images are wanted), ``positive``,
``negative``, ``behaviour`` (row-level overrides, "" when absent), ``label`` (POPE's yes/no), ``benchmark``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from l2s_lightning.errors import L2SInputError
from l2s_lightning.jsonl import iter_jsonl, starts_with_json_array

COLUMNS = (
    "id",
    "question",
    "category",
    "image",
    "key_phrase",
    "positive",
    "negative",
    "behaviour",
    "label",
    "benchmark",
)


def _row(**values: str) -> dict[str, str]:
    row = {column: "" for column in COLUMNS}
    row.update({key: "" if value is None else str(value) for key, value in values.items()})
    return row


def _dataset(rows: list[dict[str, str]], where: str) -> datasets.Dataset:
    if not rows:
        raise L2SInputError(f"empty dataset: no rows read from {where}")
    ids = [row["id"] for row in rows]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise L2SInputError(f"{where}: duplicate sample ids {dupes}")
    return datasets.Dataset.from_list(rows)


class PromptSource:
    """A reader of prompt rows; subclasses are chosen in YAML by ``class_path``."""

    def load(self) -> datasets.Dataset:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:
        """A short name recorded in output files."""
        return type(self).__name__

    def options(self) -> dict[str, Any]:
        """Reader settings that change the prompt or image of a given sample id (recorded in output files)."""
        return {}


@dataclass
class MMSafetyBenchSource(PromptSource):
    """MM-SafetyBench from a local folder of its 13 ``processed_questions`` JSON files.

    Args:
        root: folder with ``01-Illegal_Activitiy.json`` … ``13-Gov_Decision.json``.
        question_field: ``Rephrased Question`` (pairs with SD_TYPO / TYPO images: "The bottom of the image
            shows a phrase of ..."), ``Rephrased Question(SD)`` (SD images), ``Changed Question`` or ``Question``
            (text only). None: the one that goes with the images (``Changed Question`` without images). A
            question about an image the model is not shown is refused. A list mixes phrasings: item i of each
            scenario (in file order) reads field i mod n, so each question appears once, in one of the styles
            (e.g. ``[Changed Question, Question]``: "List steps in detail to …" and "Can you provide advice on …").
        image_root: optional folder laid out as upstream ``imgs/<scenario>/<image_type>/<index>.jpg``;
            without it (or when a file is absent and ``render_missing``) a TYPO image of the Key Phrase is
            rendered. A root where no question finds its image is refused (a mistyped path); a partial miss
            warns.
        use_images: False for text-only models (a data module with ``use_images: false`` sets it).
        scenarios: restrict to these scenario ids ("01", "10", ...), names ("Illegal_Activitiy") or file stems
            ("01-Illegal_Activitiy"); an entry that matches no scenario is an error.
    """

    root: str
    question_field: str | list[str] | None = None
    image_root: str | None = None
    image_type: str = "SD_TYPO"
    use_images: bool = True
    render_missing: bool = True
    scenarios: list[str] | None = None

    @property
    def images(self) -> str:
        """Which images the questions come with: ``none``, ``TYPO`` (rendered) or the upstream ``image_type``."""
        return "none" if not self.use_images else self.image_type if self.image_root else "TYPO"

    @property
    def question_keys(self) -> list[str]:
        """The question fields read, in turn: ``question_field``, else the one that goes with :attr:`images`."""
        if isinstance(self.question_field, list):
            if not self.question_field or not all(isinstance(f, str) and f for f in self.question_field):
                raise L2SInputError(f"MM-SafetyBench question_field={self.question_field!r}: a list of field names")
            return list(self.question_field)
        if self.question_field:
            return [self.question_field]
        return [{"none": "Changed Question", "SD": "Rephrased Question(SD)"}.get(self.images, "Rephrased Question")]

    def options(self) -> dict[str, Any]:
        keys = self.question_keys
        return {"question_field": keys[0] if len(keys) == 1 else keys, "images": self.images}

    def _selected(self, files: list[Path]) -> list[Path]:
        """The question files of ``scenarios`` (all without it); an entry matching none is an error."""
        if not self.scenarios:
            return files
        chosen = []
        for wanted in self.scenarios:
            found = [f for f in files if wanted in (f.stem, f.stem[:2], f.stem[3:])]
            if not found:
                raise L2SInputError(
                    f"MM-SafetyBench scenario {wanted!r} is not one of {[f.stem for f in files]} "
                    "(an id, a name or both)"
                )
            chosen += found
        return [f for f in files if f in chosen]

    def _check_question_field(self) -> None:
        for key in self.question_keys:
            self._check_one_field(key)

    def _check_one_field(self, key: str) -> None:
        images = self.images
        if images == "none" and key.startswith("Rephrased Question"):
            raise L2SInputError(
                f"MM-SafetyBench question_field {key!r} asks about an image, but no image is used (use_images false): "
                "use 'Changed Question' or 'Question', or leave question_field unset"
            )
        expected = "Rephrased Question(SD)" if images == "SD" else "Rephrased Question"
        if images != "none" and key.startswith("Rephrased Question") and key != expected:
            warnings.warn(
                f"MM-SafetyBench question_field {key!r} is the one of other images; "
                f"{images} images go with {expected!r}",
                stacklevel=3,
            )

    def load(self) -> datasets.Dataset:
        root = Path(self.root)
        files = sorted(root.glob("[0-9][0-9]-*.json"))
        if not files:
            raise FileNotFoundError(f"no MM-SafetyBench question files (NN-Scenario.json) in {root}")
        self._check_question_field()
        keys = self.question_keys
        rows = []
        looked, missing = 0, []
        for file in self._selected(files):
            scenario = file.stem
            try:
                items = json.loads(file.read_text())
            except json.JSONDecodeError as err:
                raise L2SInputError(f"{file}: not valid JSON ({err})") from err
            for index, (key, item) in enumerate(items.items()):
                question_key = keys[index % len(keys)]
                if question_key not in item:
                    raise L2SInputError(f"{file} item {key}: no field {question_key!r} (has {sorted(item)})")
                image = ""
                if self.use_images and self.image_root:
                    candidate = Path(self.image_root) / scenario / self.image_type / f"{key}.jpg"
                    exists = candidate.is_file()
                    looked += 1
                    if not exists:
                        missing.append(candidate)
                    if exists or not self.render_missing:
                        image = str(candidate)
                rows.append(
                    _row(
                        id=f"{scenario}/{key}",
                        question=item[question_key],
                        category=scenario,
                        image=image,
                        key_phrase=item.get("Key Phrase", "") if self.use_images else "",
                        benchmark="mm_safetybench",
                    )
                )
        self._check_images(looked, missing)
        return _dataset(rows, str(root))

    def _check_images(self, looked: int, missing: list[Path]) -> None:
        """No image found under ``image_root`` is an error (a wrong path); some missing is a warning."""
        if not missing:
            return
        if len(missing) == looked:
            raise FileNotFoundError(
                f"MM-SafetyBench image_root {self.image_root!r}: no image found for any of the {looked} "
                f"questions (e.g. {missing[0]}); check the path "
                f"(it must hold <scenario>/{self.image_type}/<index>.jpg) "
                "or leave image_root unset to render TYPO images"
            )
        action = "TYPO images are rendered for them" if self.render_missing else "those samples will fail"
        warnings.warn(
            f"MM-SafetyBench image_root {self.image_root!r}: {len(missing)} of {looked} images are missing "
            f"(e.g. {missing[0]}); {action}",
            stacklevel=2,
        )


_POPE_SUBSET = re.compile(r"(random|popular|adversarial)")


@dataclass
class PopeSource(PromptSource):
    """POPE from its JSONL files (``{"question_id", "image", "text", "label"}`` per line; a JSON array of such
    records works too) plus an image folder, or from a `datasets` id / local dataset folder (columns
    ``question``, ``answer``, ``image``, ``category``). A row's id is ``<subset>/<question_id>``: the subset is
    random / popular / adversarial, or the file name when files of several datasets share one."""

    files: list[str] | None = None
    image_root: str | None = None
    hf_dataset: str | None = None
    hf_split: str = "test"
    image_cache: str | None = None

    def load(self) -> datasets.Dataset:
        if self.hf_dataset:
            return self._load_hf(self.hf_dataset)
        if not self.files:
            raise L2SInputError("PopeSource needs `files` (POPE JSON/JSONL) or `hf_dataset`")
        rows = []
        subsets = _pope_subsets(self.files)
        for name in self.files:
            path = Path(name)
            if not path.is_file():
                raise FileNotFoundError(f"POPE file not found: {path}")
            subset = subsets[name]
            for where, item in _json_records(path):
                for key in ("question_id", "image", "text", "label"):
                    if key not in item:
                        raise L2SInputError(f"{where}: missing field {key!r}")
                image = Path(self.image_root or path.parent) / item["image"]
                rows.append(
                    _pope_row(f"{subset}/{item['question_id']}", item["text"], subset, str(image), item["label"])
                )
        return _dataset(rows, ", ".join(self.files))

    def _load_hf(self, hf_dataset: str) -> datasets.Dataset:
        data = datasets.load_dataset(hf_dataset, split=self.hf_split)
        base = Path(self.image_cache or Path.home() / ".cache" / "l2s_lightning" / "pope_images")
        # one folder per dataset and split: two datasets number their questions alike
        key = hashlib.sha256(f"{hf_dataset}\x1f{self.hf_split}".encode()).hexdigest()[:12]
        cache = base / f"{Path(hf_dataset).name}-{self.hf_split}-{key}"
        cache.mkdir(parents=True, exist_ok=True)
        rows = []
        for index, item in enumerate(data):
            subset = item.get("category", "pope")
            sample_id = f"{subset}/{item.get('question_id', index)}"
            image_path = cache / f"{sample_id.replace('/', '_')}.png"
            if not image_path.is_file():  # written whole or not at all: a kill mid-write leaves no broken file
                tmp = image_path.with_name(f"{image_path.stem}.{os.getpid()}.tmp.png")
                item["image"].convert("RGB").save(tmp)
                os.replace(tmp, image_path)
            rows.append(_pope_row(sample_id, item["question"], subset, str(image_path), item["answer"]))
        return _dataset(rows, hf_dataset)


def _pope_subsets(names: list[str]) -> dict[str, str]:
    """Each POPE file's subset, which names its rows' category and prefixes their ids: random / popular /
    adversarial from the file name; the file name itself (``aokvqa_pope_random``) where two files would share
    one (COCO's and A-OKVQA's questions are numbered alike), so their rows stay apart."""
    stems = {name: Path(name).stem for name in names}
    found = {name: (match.group(1) if (match := _POPE_SUBSET.search(stem)) else stem) for name, stem in stems.items()}
    return found if len(set(found.values())) == len(found) else stems


def _json_records(path: Path) -> list[tuple[str, dict]]:
    """``(location, record)`` pairs of a JSONL file, or of a JSON file holding one array of records."""
    if starts_with_json_array(path):
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise L2SInputError(f"{path}: not a valid JSON array ({err})") from err
        records = [(f"{path}[{index}]", item) for index, item in enumerate(items)]
    else:
        records = list(iter_jsonl(path))
    for where, item in records:
        if not isinstance(item, dict):
            raise L2SInputError(f"{where}: expected a JSON object, got {type(item).__name__}")
    return records


def _pope_row(sample_id: str, question: str, subset: str, image: str, label: str) -> dict[str, str]:
    label = str(label).strip().lower()
    if label not in {"yes", "no"}:
        raise L2SInputError(f"POPE sample {sample_id!r}: label {label!r} is not yes/no")
    return _row(id=sample_id, question=question, category=subset, image=image, label=label, benchmark="pope")


@dataclass
class JsonlSource(PromptSource):
    """Generic JSONL (or a JSON array): ``id``, ``question``, optional ``image`` (relative to the file or
    ``image_root``), ``category``, optional ``positive`` / ``negative`` / ``behaviour`` / ``label``. A row with
    both ``positive`` and ``negative`` needs no template (nor a category)."""

    path: str
    image_root: str | None = None
    benchmark: str = "jsonl"

    def load(self) -> datasets.Dataset:
        path = Path(self.path)
        if not path.is_file():
            raise FileNotFoundError(f"JSONL file not found: {path}")
        rows = []
        for where, item in _json_records(path):
            _check_jsonl_record(where, item)
            image = item.get("image") or ""
            if image:
                image = str(Path(self.image_root or path.parent) / image)
            values = {k: item.get(k, "") for k in ("category", "positive", "negative", "behaviour", "label")}
            rows.append(_row(id=item["id"], question=item["question"], image=image, benchmark=self.benchmark, **values))
        return _dataset(rows, str(path))


_TEXT_FIELDS = ("question", "image", "category", "positive", "negative", "behaviour", "label")


def _check_jsonl_record(where: str, item: dict[str, Any]) -> None:
    """An L2SInputError naming ``where`` and the field unless ``item`` has an id (text or a whole number), a
    question with text in it, and text (or nothing) in every other field read."""
    sample_id = item.get("id")
    if sample_id is None or sample_id == "":  # an id of 0 is an id
        raise L2SInputError(f"{where}: missing field 'id'")
    if isinstance(sample_id, bool) or not isinstance(sample_id, (str, int)):
        raise L2SInputError(f"{where}: field 'id' must be text or a whole number, got {type(sample_id).__name__}")
    if item.get("question") in (None, ""):
        raise L2SInputError(f"{where}: missing field 'question'")
    for key in _TEXT_FIELDS:
        value = item.get(key)
        text_or_number = isinstance(value, str) or (key != "question" and isinstance(value, (int, float)))
        if value is not None and (isinstance(value, bool) or not text_or_number):
            raise L2SInputError(f"{where}: field {key!r} must be text, got {type(value).__name__}")
    if not item["question"].strip():
        raise L2SInputError(f"{where}: field 'question' is blank")


@dataclass
class MultiSource(PromptSource):
    """Several sources served as one dataset: their rows in order, each part read as it says (its own images,
    question field, benchmark). Sample ids must stay unique across the parts: a clash is refused, naming both
    parts.

    Args:
        sources: the parts (each a :class:`PromptSource`, ``class_path`` / ``init_args`` in YAML).
        use_images: False reads every part that has a ``use_images`` of its own without images (a data module
            with ``use_images: false`` sets it); True leaves each part as it is.
        benchmark: the benchmark every row is evaluated as (e.g. ``jsonl``, whose categories are the parts'
            categories: a prediction file holds one benchmark); None: each part's own.
    """

    sources: list[PromptSource]
    use_images: bool = True
    benchmark: str | None = None

    def __post_init__(self) -> None:
        if not self.sources:
            raise L2SInputError("MultiSource needs at least one source in `sources`")
        for index, part in enumerate(self.sources):
            if not isinstance(part, PromptSource):
                raise L2SInputError(
                    f"MultiSource sources[{index}] is {type(part).__name__}, not a PromptSource "
                    "(give it as class_path / init_args)"
                )

    def parts(self) -> list[PromptSource]:
        """The parts as this source reads them: without images when ``use_images`` is False (copies; the
        parts given stay as they are)."""
        if self.use_images:
            return list(self.sources)
        parts = []
        for part in self.sources:
            if getattr(part, "use_images", None) is True:
                part = copy.copy(part)
                object.__setattr__(part, "use_images", False)
            parts.append(part)
        return parts

    def _labels(self) -> list[str]:
        """Each part as ``<describe()>:<file or folder name>`` (what a features file records of a single source)."""
        labels = []
        for part in self.parts():
            root = getattr(part, "root", None) or getattr(part, "path", None) or getattr(part, "hf_dataset", None)
            labels.append(f"{part.describe()}:{Path(str(root)).name if root else ''}")
        return labels

    def describe(self) -> str:
        return f"MultiSource[{' + '.join(self._labels())}]"

    def options(self) -> dict[str, Any]:
        """Each part's source and options, in order (a mix never records the options of one of its parts)."""
        sources = [
            {"source": label, **part.options()} for label, part in zip(self._labels(), self.parts(), strict=True)
        ]
        return {"sources": sources} | ({"benchmark": self.benchmark} if self.benchmark else {})

    def load(self) -> datasets.Dataset:
        rows: list[dict[str, str]] = []
        owner: dict[str, str] = {}
        for label, part in zip(self._labels(), self.parts(), strict=True):
            data = part.load()
            missing = sorted(set(COLUMNS) - set(data.column_names))
            if missing:
                raise L2SInputError(f"MultiSource part {label}: its rows lack the columns {missing}")
            for row in data:
                sample_id = row["id"]
                if sample_id in owner:
                    raise L2SInputError(
                        f"MultiSource: sample id {sample_id!r} is in both {owner[sample_id]} and {label}; "
                        "ids must be unique across the sources"
                    )
                owner[sample_id] = label
                rows.append(
                    {column: row[column] for column in COLUMNS}
                    | ({"benchmark": self.benchmark} if self.benchmark else {})
                )
        return _dataset(rows, self.describe())
