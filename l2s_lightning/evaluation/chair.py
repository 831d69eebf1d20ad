"""CHAIR (Rohrbach et al., EMNLP 2018): object hallucination in captions against COCO ground truth.

Follows the released metric (github.com/LisaAnne/Hallucination, ``utils/chair.py``):

* words: lower-cased tokens, each singularised (``pattern.en.singularize`` there; the noun lemma of
  ``lemminflect`` here, whose data ships in its wheel: "dogs"→dog, "mice"→mouse, "knives"→knife; words
  already in the synonym list are kept as they are, so "corgi" is not made "corgus");
* two-word phrases merged first: the COCO double words ("hot dog", "teddy bear", "motor bike", "stop sign",
  ...), "baby <animal>" / "adult <animal>" → the animal (so that "baby" is not read as a person),
  "passenger jet/train" → jet/train, "bow tie" → tie, "toilet seat" → toilet; "seat" is dropped when
  "toilet" is in the caption;
* words mapped through the synonym list (``resources/evaluation/chair_synonyms.txt``, 80 classes) to their
  class ("people" → person);
* ground truth per image: the classes of its COCO instance annotations plus those mentioned in its
  reference captions (same word rules).

CHAIR_s = captions with ≥1 hallucinated object / captions; CHAIR_i = hallucinated mentions / all object
mentions; recall = ground-truth classes mentioned / ground-truth classes (summed over images, as in the
common extended version of the script). Differences from the release: hyphens between letters read as
spaces ("teddy-bear"), a regex tokenizer instead of nltk's, synonym entries stripped and lower-cased.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from l2s_lightning.errors import L2SInputError
from l2s_lightning.evaluation.records import Prediction, PredictionFormatError
from l2s_lightning.evaluation.resources import read_lines

COCO_DOUBLE_WORDS = (
    "motor bike",
    "motor cycle",
    "air plane",
    "traffic light",
    "street light",
    "traffic signal",
    "stop light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "suit case",
    "sports ball",
    "baseball bat",
    "baseball glove",
    "tennis racket",
    "wine glass",
    "hot dog",
    "cell phone",
    "mobile phone",
    "teddy bear",
    "hair drier",
    "potted plant",
    "bow tie",
    "laptop computer",
    "stove top oven",
    "home plate",
    "train track",
)
ANIMAL_WORDS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
VEHICLE_WORDS = ("jet", "train")


@lru_cache(maxsize=65536)
def singularize(word: str) -> str:
    """The noun lemma of a lower-case word (lemminflect, out-of-vocabulary rules included)."""
    try:
        from lemminflect import getLemma
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("CHAIR needs the lemminflect package: pip install lemminflect") from err

    lemmas = getLemma(word, upos="NOUN", lemmatize_oov=True)
    return lemmas[0] if lemmas else word


def tokenize(text: str) -> list[str]:
    """Lower-case word, number and punctuation tokens; hyphens between letters become spaces."""
    text = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", text.lower())
    return re.findall(r"[a-z]+|\d+|[^\sa-z\d]", text)


class ChairVocabulary:
    """The synonym classes and word rules that turn a caption into COCO object mentions."""

    def __init__(self, synonyms: str = "chair_synonyms.txt"):
        self.word_to_class: dict[str, str] = {}
        self.classes: list[str] = []
        for line in read_lines(synonyms):
            entries = [e.strip().lower() for e in line.split(",") if e.strip()]
            self.classes.append(entries[0])
            for entry in entries:
                self.word_to_class[entry] = entries[0]
        self.double_words: dict[str, str] = {w: w for w in COCO_DOUBLE_WORDS}
        for animal in ANIMAL_WORDS:
            self.double_words[f"baby {animal}"] = animal
            self.double_words[f"adult {animal}"] = animal
        for vehicle in VEHICLE_WORDS:
            self.double_words[f"passenger {vehicle}"] = vehicle
        self.double_words.update({"bow tie": "tie", "toilet seat": "toilet", "wine glas": "wine glass"})

    def class_of(self, name: str) -> str:
        """The class of a COCO category name (itself, lower-cased, when not in the list)."""
        name = name.strip().lower()
        return self.word_to_class.get(name, name)

    def mentions(self, caption: str) -> list[tuple[str, str]]:
        """(word, class) for every COCO object mention in the caption, in order, repeats kept."""
        words = [w if w in self.word_to_class else singularize(w) for w in tokenize(caption)]
        merged: list[str] = []
        i = 0
        while i < len(words):
            pair = " ".join(words[i : i + 2])
            if pair in self.double_words:
                merged.append(self.double_words[pair])
                i += 2
            else:
                merged.append(words[i])
                i += 1
        if "toilet" in merged and "seat" in merged:
            merged = [w for w in merged if w != "seat"]
        return [(w, self.word_to_class[w]) for w in merged if w in self.word_to_class]


def _load_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise L2SInputError(f"{path}: not valid JSON ({err.msg})") from None
    except UnicodeDecodeError as err:
        raise L2SInputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not isinstance(data, dict) or "annotations" not in data:
        raise L2SInputError(f"{path}: not a COCO annotation file (no 'annotations')")
    for section in ("annotations", "images", "categories"):
        if not isinstance(data.get(section, []), list):
            raise L2SInputError(f"{path}: '{section}' must be a list, got {type(data[section]).__name__}")
    return data


def _items(data: dict, section: str, path: Path, *keys: str) -> Iterable[tuple]:
    """The ``keys`` of every entry of ``data[section]``; ValueError naming the file, entry and missing field."""
    for index, item in enumerate(data.get(section, [])):
        missing = [k for k in keys if not isinstance(item, dict) or item.get(k) is None]
        if missing:
            raise L2SInputError(f"{path}: {section}[{index}] has no {', '.join(map(repr, missing))} field")
        yield tuple(item[k] for k in keys)


def load_ground_truth(
    instances: Sequence[str | Path], captions: Sequence[str | Path], vocab: ChairVocabulary, image_ids: Iterable[int]
) -> dict[int, set[str]]:
    """Ground-truth classes of the wanted images from COCO instance and caption JSON files.

    An image present in no file's ``images`` list (and with no annotation) is left out of the result. An
    entry without a field the metric needs (``images[i].id``, ``categories[i].id``/``name``,
    ``annotations[i].image_id``/``category_id``/``caption``) is a ValueError naming the file and entry.
    """
    if not instances and not captions:
        raise L2SInputError(
            "CHAIR needs COCO instance and/or caption annotation files (chair.instances / chair.captions)"
        )
    wanted = set(image_ids)
    truth: dict[int, set[str]] = {}
    for path in map(Path, instances):
        data = _load_json(path)
        names = dict(_items(data, "categories", path, "id", "name"))
        for (image_id,) in _items(data, "images", path, "id"):
            if image_id in wanted:
                truth.setdefault(image_id, set())
        for index, (image_id, category) in enumerate(_items(data, "annotations", path, "image_id", "category_id")):
            if image_id in wanted:
                if category not in names:
                    raise L2SInputError(f"{path}: annotations[{index}] has unknown category_id {category}")
                truth.setdefault(image_id, set()).add(vocab.class_of(names[category]))
    for path in map(Path, captions):
        data = _load_json(path)
        for (image_id,) in _items(data, "images", path, "id"):
            if image_id in wanted:
                truth.setdefault(image_id, set())
        for image_id, caption in _items(data, "annotations", path, "image_id", "caption"):
            if image_id in wanted:
                truth.setdefault(image_id, set()).update(c for _, c in vocab.mentions(str(caption)))
    return truth


def image_id_of(row: Prediction) -> int:
    """The COCO image id of a row: ``image_id`` if given, else the last number in the image file name
    (``COCO_val2014_000000391895.jpg`` → 391895), else the last number in the sample id."""
    if row.extra.get("image_id") is not None:
        try:
            return int(row.extra["image_id"])
        except (TypeError, ValueError):
            raise PredictionFormatError(f"{row.source}: image_id {row.extra['image_id']!r} is not an integer") from None
    for text in (Path(row.image).stem if row.image else "", row.id):
        numbers = re.findall(r"\d+", text)
        if numbers:
            return int(numbers[-1])
    raise PredictionFormatError(f"{row.source}: no COCO image id (give 'image_id', or an image/id with the number)")


def chair_metrics(
    rows: Sequence[Prediction], truth: dict[int, set[str]], vocab: ChairVocabulary
) -> tuple[dict, list[dict]]:
    """Summary (CHAIR_s, CHAIR_i, recall, counts, mean caption length) and per-caption details."""
    captions = hallucinated_captions = mentions = hallucinated_mentions = covered = gt_total = words = 0
    per_row = []
    for row in rows:
        image_id = image_id_of(row)
        if image_id not in truth:
            raise PredictionFormatError(f"{row.source}: image {image_id} is not in the COCO annotation files")
        gt = truth[image_id]
        found = vocab.mentions(row.response)
        bad = [(w, c) for w, c in found if c not in gt]
        hit = {c for _, c in found if c in gt}
        captions += 1
        hallucinated_captions += bool(bad)
        mentions += len(found)
        hallucinated_mentions += len(bad)
        covered += len(hit)
        gt_total += len(gt)
        words += len(re.findall(r"\w+", row.response))
        per_row.append(
            {
                "id": row.id,
                "image_id": image_id,
                "objects": sorted({c for _, c in found}),
                "hallucinated": [w for w, _ in bad],
                "ground_truth": sorted(gt),
                "empty": row.is_empty,
            }
        )
    summary = {
        "n": captions,
        "n_empty": sum(row.is_empty for row in rows),
        "chair_s": hallucinated_captions / captions if captions else None,
        "chair_i": hallucinated_mentions / mentions if mentions else None,
        "recall": covered / gt_total if gt_total else None,
        "n_mentions": mentions,
        "mean_words": words / captions if captions else None,
    }
    return summary, per_row
