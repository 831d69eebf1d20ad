"""CHAIR word rules and metrics on hand-made COCO-format annotation files."""

from __future__ import annotations

import json

import pytest

from l2s_lightning.evaluation.chair import ChairVocabulary, chair_metrics, image_id_of, load_ground_truth, singularize
from l2s_lightning.evaluation.records import Prediction, PredictionFormatError


@pytest.fixture(scope="module")
def vocab():
    return ChairVocabulary()


def test_synonym_file_has_the_80_coco_classes(vocab):
    assert len(vocab.classes) == 80
    assert {"person", "motorcycle", "dining table", "hair drier", "toothbrush", "orange"} <= set(vocab.classes)


@pytest.mark.parametrize(
    "word, lemma",
    [
        ("dogs", "dog"),
        ("mice", "mouse"),
        ("knives", "knife"),
        ("people", "people"),
        ("children", "child"),
        ("buses", "bus"),
        ("geese", "goose"),
    ],
)
def test_singularize(word, lemma):
    assert singularize(word) == lemma


def _classes(vocab, caption):
    return [c for _, c in vocab.mentions(caption)]


def test_word_rules(vocab):
    assert _classes(vocab, "Two dogs, three mice and two knives.") == ["dog", "mouse", "knife"]
    assert _classes(vocab, "Some people and children.") == ["person", "person"]
    assert _classes(vocab, "A hot dog next to teddy bears.") == ["hot dog", "teddy bear"]
    assert _classes(vocab, "A baby elephant and an adult giraffe.") == ["elephant", "giraffe"]  # not person
    assert _classes(vocab, "A passenger train.") == ["train"]
    assert _classes(vocab, "The toilet seat is up.") == ["toilet"]
    assert _classes(vocab, "A man with a bow tie on a motor bike.") == ["person", "tie", "motorcycle"]
    assert _classes(vocab, "Two corgis play.") == ["dog"]
    assert _classes(vocab, "A teddy-bear and an iPhone.") == ["teddy bear", "cell phone"]


@pytest.fixture()
def coco_files(tmp_path):
    instances = {
        "images": [{"id": 1}, {"id": 2}, {"id": 3}],
        "categories": [
            {"id": 1, "name": "person"},
            {"id": 18, "name": "dog"},
            {"id": 49, "name": "knife"},
            {"id": 52, "name": "banana"},
            {"id": 88, "name": "teddy bear"},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1},
            {"id": 11, "image_id": 1, "category_id": 18},
            {"id": 12, "image_id": 1, "category_id": 52},
            {"id": 13, "image_id": 2, "category_id": 49},
            {"id": 14, "image_id": 99, "category_id": 49},
        ],
    }
    captions = {
        "images": [{"id": 1}, {"id": 2}, {"id": 3}],
        "annotations": [
            {"image_id": 1, "caption": "A man walking his dog."},
            {"image_id": 2, "caption": "A knife on a table."},
            {"image_id": 3, "caption": "A teddy bear on the floor."},
        ],
    }
    paths = tmp_path / "instances.json", tmp_path / "captions.json"
    paths[0].write_text(json.dumps(instances))
    paths[1].write_text(json.dumps(captions))
    return paths


def _row(i, image, response):
    return Prediction(
        id=f"chair/{i}", benchmark="chair", method="m", alpha=1.0, response=response, image=image, source=f"p.jsonl:{i}"
    )


def test_ground_truth_from_instances_and_captions(coco_files, vocab):
    truth = load_ground_truth([coco_files[0]], [coco_files[1]], vocab, {1, 2, 3, 4})
    assert truth == {1: {"person", "dog", "banana"}, 2: {"knife", "dining table"}, 3: {"teddy bear"}}


def test_chair_hand_computed(coco_files, vocab):
    truth = load_ground_truth([coco_files[0]], [coco_files[1]], vocab, {1, 2, 3})
    rows = [
        _row(1, "val2014/COCO_val2014_000000000001.jpg", "Two dogs and some people in a park with a car."),
        _row(2, "COCO_val2014_000000000002.jpg", "Knives and mice on a dining table."),
        _row(3, "3.jpg", "A teddy bear on the floor."),
    ]
    summary, per_row = chair_metrics(rows, truth, vocab)
    # mentions: (dog, person, car*), (knife, mouse*, dining table), (teddy bear): 7 mentions, 2 hallucinated
    assert summary["chair_s"] == pytest.approx(2 / 3)
    assert summary["chair_i"] == pytest.approx(2 / 7)
    assert summary["recall"] == pytest.approx((2 + 2 + 1) / (3 + 2 + 1))
    assert summary["n_mentions"] == 7 and summary["n"] == 3
    assert per_row[0]["hallucinated"] == ["car"] and per_row[1]["hallucinated"] == ["mouse"]


def test_image_ids(vocab):
    assert image_id_of(_row(1, "COCO_val2014_000000391895.jpg", "")) == 391895
    assert image_id_of(Prediction(id="coco-42", benchmark="chair", method="m", alpha=0, response="")) == 42
    row = Prediction(id="x", benchmark="chair", method="m", alpha=0, response="", extra={"image_id": "7"})
    assert image_id_of(row) == 7
    with pytest.raises(PredictionFormatError, match="p.jsonl:5: no COCO image id"):
        image_id_of(Prediction(id="abc", benchmark="chair", method="m", alpha=0, response="", source="p.jsonl:5"))
    with pytest.raises(PredictionFormatError, match="image 5 is not in the COCO annotation"):
        chair_metrics([_row(5, "5.jpg", "a dog")], {1: set()}, vocab)


def test_bad_annotation_files(tmp_path, vocab):
    with pytest.raises(FileNotFoundError):
        load_ground_truth([tmp_path / "missing.json"], [], vocab, {1})
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a COCO annotation file"):
        load_ground_truth([tmp_path / "bad.json"], [], vocab, {1})
    with pytest.raises(ValueError, match="CHAIR needs COCO"):
        load_ground_truth([], [], vocab, {1})


@pytest.mark.parametrize(
    "kind, section, entry, message",
    [
        ("instances", "annotations", {"id": 5, "category_id": 18}, r"annotations\[0\] has no 'image_id' field"),
        ("instances", "annotations", {"id": 5, "image_id": 1}, r"annotations\[0\] has no 'category_id' field"),
        ("instances", "categories", {"name": "dog"}, r"categories\[0\] has no 'id' field"),
        ("instances", "images", {"file_name": "x.jpg"}, r"images\[0\] has no 'id' field"),
        ("captions", "annotations", {"image_id": 1}, r"annotations\[0\] has no 'caption' field"),
        ("captions", "annotations", {"caption": "A dog."}, r"annotations\[0\] has no 'image_id' field"),
    ],
)
def test_missing_coco_fields_name_file_and_field(tmp_path, vocab, kind, section, entry, message):
    data = {"images": [{"id": 1}], "categories": [{"id": 18, "name": "dog"}], "annotations": []}
    data[section] = [entry]
    path = tmp_path / f"{kind}.json"
    path.write_text(json.dumps(data))
    files = ([path], []) if kind == "instances" else ([], [path])
    with pytest.raises(ValueError, match=f"{kind}.json: {message}"):
        load_ground_truth(*files, vocab, {1})
