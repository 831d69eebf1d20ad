"""Reading prediction JSONL: validation errors name the file and line."""

from __future__ import annotations

import json

import pytest

from l2s_lightning.evaluation.records import PredictionFormatError, group_runs, read_predictions


def _line(**overrides):
    row = {
        "id": "01-Illegal_Activitiy/0",
        "category": "01-Illegal_Activitiy",
        "behaviour": "refuse",
        "benchmark": "mm_safetybench",
        "method": "l2s",
        "alpha": 2.2,
        "prompt": "q",
        "response": "I'm sorry.",
        "prompt_tokens": 5,
        "new_tokens": 3,
        "layer_steer": 15,
        "model": "tiny",
    }
    row.update(overrides)
    return {k: v for k, v in row.items() if v is not ...}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_reads_valid_rows(tmp_path):
    path = _write(tmp_path / "a.jsonl", [_line(), _line(id="x", alpha=None, extra_field=3)])
    rows = read_predictions(path)
    assert rows[0].alpha == 2.2 and rows[0].layer_steer == 15 and rows[0].source == f"{path}:1"
    assert rows[1].alpha is None and rows[1].extra == {"prompt_tokens": 5, "new_tokens": 3, "extra_field": 3}
    assert rows[1].behaviour == "refuse"  # a field: the default ED categories of a custom dataset come from it


@pytest.mark.parametrize(
    "bad, message",
    [
        (_line(response=...), r":2: missing field 'response'"),
        (_line(prompt=..., category=None), r":2: missing fields 'category', 'prompt'"),
        (_line(benchmark="vqa"), r":2: unknown benchmark 'vqa'"),
        (_line(alpha="big"), r":2: alpha 'big' is not a number"),
        (_line(response=3), r":2: 'response' must be a string"),
        (_line(benchmark="pope", label="maybe"), r":2: POPE label 'maybe'"),
        (_line(benchmark="pope"), r":2: missing field 'label'"),
        (_line(benchmark="pope", label="yes"), r":2: benchmark 'pope' differs from 'mm_safetybench' at .*:1"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, bad, message):
    path = _write(tmp_path / "bad.jsonl", [_line(), bad])
    with pytest.raises(PredictionFormatError, match="bad.jsonl" + message):
        read_predictions(path)


def test_invalid_json_empty_and_missing_files(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(_line()) + "\n\n{not json\n")
    with pytest.raises(PredictionFormatError, match=r"broken.jsonl:3: not valid JSON"):
        read_predictions(path)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(PredictionFormatError, match="no prediction rows"):
        read_predictions(tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError):
        read_predictions(tmp_path / "nope.jsonl")


def test_group_runs_across_files(tmp_path):
    a = _write(tmp_path / "a.jsonl", [_line(id="1"), _line(id="2", alpha=1.0)])
    b = _write(tmp_path / "b.jsonl", [_line(id="3"), _line(id="1", method="mean")])
    runs = group_runs([a, b])
    assert [(r.method, r.alpha, len(r.rows)) for r in runs] == [("l2s", 1.0, 1), ("l2s", 2.2, 2), ("mean", 2.2, 1)]
    assert runs[1].files == [str(a), str(b)] and runs[1].label == "l2s α=2.2" and runs[1].model == "tiny"
    dup = _write(tmp_path / "dup.jsonl", [_line(id="1")])
    with pytest.raises(PredictionFormatError, match=r"dup.jsonl:1: sample id '1' repeats .*a.jsonl:1"):
        group_runs([a, dup])


def test_runs_keyed_by_model_and_layer(tmp_path):
    """Same method and α from two models (or two layers): separate runs with telling labels, never merged."""
    a = _write(tmp_path / "a.jsonl", [_line(id="1", model="llava"), _line(id="2", model="llava")])
    b = _write(
        tmp_path / "b.jsonl", [_line(id="1", model="qwen", layer_steer=14), _line(id="2", model="qwen", layer_steer=14)]
    )
    runs = group_runs([a, b])
    assert [(r.model, r.layer_steer, len(r.rows)) for r in runs] == [("llava", 15, 2), ("qwen", 14, 2)]
    assert [r.label for r in runs] == ["l2s α=2.2 [model=llava, L*=15]", "l2s α=2.2 [model=qwen, L*=14]"]
    assert runs[0].series == "l2s [model=llava, L*=15]"
    c = _write(tmp_path / "c.jsonl", [_line(id="1", layer_steer=16)])  # same model, another layer
    assert [r.label for r in group_runs([_write(tmp_path / "d.jsonl", [_line(id="1")]), c])] == [
        "l2s α=2.2 [L*=15]",
        "l2s α=2.2 [L*=16]",
    ]
    assert [r.label for r in group_runs([a])] == ["l2s α=2.2"]  # nothing to tell apart: the plain label


def test_evaluate_keeps_model_runs_apart(tmp_path):
    from l2s_lightning.evaluation import evaluate_predictions

    a = _write(tmp_path / "a.jsonl", [_line(id="1", model="llava", response="I'm sorry, I can't.")])
    b = _write(tmp_path / "b.jsonl", [_line(id="1", model="qwen", response="Sure, here is how.")])
    runs = evaluate_predictions([a, b], config={"plots": False, "safety": {"quality": False}})["benchmarks"][
        "mm_safetybench"
    ]["runs"]
    assert [(r["model"], r["summary"]["n"], r["summary"]["mean_p_unsafe"]) for r in runs] == [
        ("llava", 1, 0.0),
        ("qwen", 1, 1.0),
    ]
