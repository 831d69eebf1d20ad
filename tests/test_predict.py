"""`l2s predict` end to end on a tiny Llama: every method, JSONL rows, resume, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from l2s_lightning.extraction.cli import extract_main
from l2s_lightning.generation import writer as writer_module
from l2s_lightning.generation.cli import predict_main
from l2s_lightning.steerer import Steerer
from l2s_lightning.training.cli import fit_main

METHODS = ["none", "prompt", "mean", "mean_ba", "random", "p2s_oracle", "l2s"]


@pytest.fixture(scope="module")
def fitted(tiny_llama_dir, tmp_path_factory) -> Path:
    """Features of 24 JSONL questions (train + test), and every steerer fitted on them."""
    tmp = tmp_path_factory.mktemp("predict")
    rows = [{"id": f"q{i:02d}", "question": f"Question {i}: how do I make thing {i}?", "category": ["harm", "legal"][i % 2]} for i in range(24)]
    (tmp / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp / "templates.yaml").write_text(
        "name: test\nbehaviours:\n  refuse: {positive: \"I'm sorry, I can't\", negative: 'Sure, here is', instruction: 'Refuse.'}\n"
        "  consult: {positive: 'Please consult a lawyer', negative: 'The answer is'}\n"
        "categories:\n  harm: refuse\n  legal: consult\nprompt_baseline: Refuse harmful requests.\n"
    )
    extract_main([*data_args(tmp), f"--model.model.name_or_path={tiny_llama_dir}", "--model.layer_steer=1",
                  "--model.layer_context=2", f"--writer.output={tmp / 'features.h5'}", "--trainer.enable_progress_bar=false"])
    fit_main([f"--data.features={tmp / 'features.h5'}", "--method=all", f"--out_dir={tmp}", "--trainer.max_epochs=3",
              "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--data.batch_size=8", "--default_alpha=4.0"])
    return tmp


def data_args(tmp: Path) -> list[str]:
    return [
        "--data.source=l2s_lightning.data.sources.JsonlSource", f"--data.source.path={tmp / 'data.jsonl'}",
        f"--data.templates={tmp / 'templates.yaml'}", f"--data.split_file={tmp / 'split.json'}",
        "--data.use_images=false", "--data.batch_size=4", "--data.test_fraction=0.25",
    ]


def predict_args(model_dir: Path, tmp: Path, method: str, output: Path, *extra: str) -> list[str]:
    args = [*data_args(tmp), f"--model.model.name_or_path={model_dir}", f"--model.method={method}",
            "--model.max_new_tokens=5", f"--writer.output={output}", "--trainer.enable_progress_bar=false", *extra]
    if method not in {"none", "prompt"}:
        args.append(f"--model.steerer={tmp / 'steerers' / method}")
    return args


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_method_writes_one_row_per_test_sample(tiny_llama_dir, fitted):
    outputs = {}
    for method in METHODS:
        out = fitted / "pred" / f"{method}.jsonl"
        assert predict_main(predict_args(tiny_llama_dir, fitted, method, out)) == 0
        outputs[method] = read(out)
    test_ids = sorted(json.loads((fitted / "split.json").read_text())["test"])
    for method, rows in outputs.items():
        assert [r["id"] for r in rows] == test_ids
        row = rows[0]
        assert row["method"] == method and row["benchmark"] == "jsonl" and row["new_tokens"] <= 5
        assert {"prompt", "response", "prompt_tokens", "category", "behaviour", "alpha", "model"} <= set(row)
    assert all("Refuse harmful requests." in r["prompt"] for r in outputs["prompt"])
    assert outputs["mean"][0]["alpha"] == 4.0  # the steerer's default α
    changed = sum(a["response"] != b["response"] for a, b in zip(outputs["none"], outputs["l2s"]))
    assert changed > 0


def test_predict_resumes_after_a_kill(tiny_llama_dir, fitted, monkeypatch):
    clean = fitted / "pred_clean.jsonl"
    predict_main(predict_args(tiny_llama_dir, fitted, "l2s", clean))
    out = fitted / "pred_resumed.jsonl"
    original = writer_module.JsonlPredictionWriter.write_on_batch_end

    def crash(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(writer_module.JsonlPredictionWriter, "write_on_batch_end", crash)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        predict_main(predict_args(tiny_llama_dir, fitted, "l2s", out))
    monkeypatch.setattr(writer_module.JsonlPredictionWriter, "write_on_batch_end", original)
    predict_main(predict_args(tiny_llama_dir, fitted, "l2s", out))
    assert read(out) == read(clean)


def test_bad_input_stops_before_generation(tiny_llama_dir, fitted, tmp_path):
    out = tmp_path / "p.jsonl"
    from l2s_lightning.generation.module import SteeredGenerationModule
    from l2s_lightning.models.loading import ModelSpec

    with pytest.raises(ValueError, match="finite"):
        SteeredGenerationModule(ModelSpec(str(tiny_llama_dir)), method="mean", steerer=str(fitted / "steerers" / "mean"), alpha=float("nan"))
    with pytest.raises(ValueError, match="needs a steerer folder"):
        predict_main([a for a in predict_args(tiny_llama_dir, fitted, "l2s", out) if "steerer" not in a])
    with pytest.raises(ValueError, match="holds method 'mean'"):
        predict_main([*predict_args(tiny_llama_dir, fitted, "l2s", out)[:-1], f"--model.steerer={fitted / 'steerers' / 'mean'}"])
    wide = Steerer.load(fitted / "steerers" / "mean")
    wide.hidden_size = 32
    wide.tensors = {"mean": wide.tensors["mean"][:32]}
    wide.save(tmp_path / "wide")
    with pytest.raises(ValueError, match="hidden size 32"):
        predict_main([*predict_args(tiny_llama_dir, fitted, "mean", out)[:-1], f"--model.steerer={tmp_path / 'wide'}"])
    # the oracle holds only the test split: asking it for training rows fails up front
    with pytest.raises(ValueError, match="no features for"):
        predict_main(predict_args(tiny_llama_dir, fitted, "p2s_oracle", out, "--data.splits=[train]"))
    assert not out.exists()
