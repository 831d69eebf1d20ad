"""`l2s extract` end to end: HDF5 output, resume after a kill, DDP with 2 CPU processes, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from l2s_lightning.extraction import writer as writer_module
from l2s_lightning.extraction.cli import extract_main


def _jsonl(path: Path, n: int = 10, with_images: bool = False) -> Path:
    rows = []
    for i in range(n):
        row = {"id": f"q{i:02d}", "question": f"Question number {i}: how do I do thing {i * 7}?", "category": ["harm", "legal"][i % 2]}
        if with_images:
            Image.new("RGB", (32, 32), (i * 20, 0, 0)).save(path.parent / f"img{i}.png")
            row["image"] = f"img{i}.png"
        rows.append(row)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _templates(path: Path) -> Path:
    path.write_text(
        "name: test\nbehaviours:\n  refuse: {positive: \"I'm sorry, I can't\", negative: 'Sure, here is'}\n"
        "  consult: {positive: 'Please consult a lawyer', negative: 'The answer is'}\n"
        "categories:\n  harm: refuse\n  legal: consult\n"
    )
    return path


def _args(model_dir: Path, tmp: Path, output: Path, *extra: str, use_images: bool = False) -> list[str]:
    return [
        f"--model.model.name_or_path={model_dir}",
        "--model.layer_steer=1",
        "--model.layer_context=2",
        "--data.source=l2s_lightning.data.sources.JsonlSource",
        f"--data.source.path={tmp / 'data.jsonl'}",
        f"--data.templates={tmp / 'templates.yaml'}",
        f"--data.split_file={tmp / 'split.json'}",
        f"--data.use_images={str(use_images).lower()}",
        "--data.batch_size=3",
        f"--writer.output={output}",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.enable_progress_bar=false",
        *extra,
    ]


def _read(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {
            "attrs": dict(f.attrs),
            "ids": [s.decode() for s in f["sample_id"][:]],
            "split": [s.decode() for s in f["split"][:]],
            "context": f["context"][:],
            "steer": f["steer"][:],
        }


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    _jsonl(tmp_path / "data.jsonl")
    _templates(tmp_path / "templates.yaml")
    return tmp_path


def test_extract_writes_features_and_attributes(tiny_llama_dir, workdir):
    out = workdir / "features.h5"
    assert extract_main(_args(tiny_llama_dir, workdir, out)) == 0
    data = _read(out)
    assert data["ids"] == sorted(f"q{i:02d}" for i in range(10))
    assert data["context"].shape == data["steer"].shape == (10, 64)
    assert set(data["split"]) == {"train", "test"}
    attrs = data["attrs"]
    assert attrs["layer_steer"] == 1 and attrs["layer_context"] == 2 and attrs["hidden_size"] == 64
    assert attrs["template_set"] == "test" and attrs["model"] == str(tiny_llama_dir) and attrs["split_seed"] == 21
    split = json.loads((workdir / "split.json").read_text())
    assert sorted(split["train"] + split["test"]) == data["ids"]
    assert not out.with_name(out.name + ".parts").exists()


def test_extract_resumes_after_a_kill(tiny_llama_dir, workdir, monkeypatch):
    clean = workdir / "clean.h5"
    extract_main(_args(tiny_llama_dir, workdir, clean))
    out = workdir / "features.h5"
    original = writer_module.HDF5FeatureWriter.write_on_batch_end
    calls = {"n": 0}

    def crash_after_two(self, *args, **kwargs):
        original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(writer_module.HDF5FeatureWriter, "write_on_batch_end", crash_after_two)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        extract_main(_args(tiny_llama_dir, workdir, out))
    parts = list(out.with_name(out.name + ".parts").glob("*.h5"))
    assert parts and sum(len(writer_module.read_rows(p)["sample_id"]) for p in parts) == 6
    monkeypatch.setattr(writer_module.HDF5FeatureWriter, "write_on_batch_end", original)
    assert extract_main(_args(tiny_llama_dir, workdir, out)) == 0
    resumed, reference = _read(out), _read(clean)
    assert resumed["ids"] == reference["ids"]  # none lost, none duplicated
    np.testing.assert_allclose(resumed["steer"], reference["steer"], atol=2e-4)
    np.testing.assert_allclose(resumed["context"], reference["context"], atol=2e-4)
    # A third run finds nothing to do and keeps the file.
    before = out.stat().st_mtime_ns
    assert extract_main(_args(tiny_llama_dir, workdir, out)) == 0
    assert out.stat().st_mtime_ns == before


def test_extract_ddp_two_cpu_processes(tiny_llama_dir, workdir):
    single = workdir / "single.h5"
    extract_main(_args(tiny_llama_dir, workdir, single))
    out = workdir / "ddp.h5"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "l2s_lightning.cli", "extract", *_args(tiny_llama_dir, workdir, out)]
    cmd = [c for c in cmd if not c.startswith("--trainer.devices")] + ["--trainer.devices=2", "--trainer.strategy=ddp"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp, reference = _read(out), _read(single)
    assert ddp["ids"] == reference["ids"]
    np.testing.assert_allclose(ddp["steer"], reference["steer"], atol=2e-4)


def test_extract_with_images_on_tiny_llava(tiny_llava_dir, tmp_path):
    _jsonl(tmp_path / "data.jsonl", n=4, with_images=True)
    _templates(tmp_path / "templates.yaml")
    out = tmp_path / "features.h5"
    assert extract_main(_args(tiny_llava_dir, tmp_path, out, use_images=True)) == 0
    assert _read(out)["context"].shape[0] == 4


# --- bad input: a clear error naming the culprit, before the model runs, nothing overwritten ---------


def _fails(args: list[str], match: str) -> None:
    with pytest.raises((ValueError, FileNotFoundError, SystemExit)) as info:
        extract_main(args)
    text = str(info.value) + str(getattr(info.value, "__context__", ""))
    assert match in text, text


def test_unknown_model(workdir):
    _fails(_args(workdir / "no-such-model", workdir, workdir / "f.h5"), "unknown model")
    assert not (workdir / "f.h5").exists()


def test_layer_out_of_range(tiny_llama_dir, workdir):
    _fails(_args(tiny_llama_dir, workdir, workdir / "f.h5", "--model.layer_steer=99"), "layer_steer=99 is out of range")
    assert not (workdir / "f.h5").exists()


def test_category_without_template(tiny_llama_dir, workdir):
    with (workdir / "data.jsonl").open("a") as f:
        f.write(json.dumps({"id": "odd", "question": "?", "category": "poetry"}) + "\n")
    _fails(_args(tiny_llama_dir, workdir, workdir / "f.h5"), "'poetry' of sample 'odd'")


def test_missing_image(tiny_llava_dir, tmp_path):
    _jsonl(tmp_path / "data.jsonl", n=3, with_images=True)
    _templates(tmp_path / "templates.yaml")
    (tmp_path / "img1.png").unlink()
    _fails(_args(tiny_llava_dir, tmp_path, tmp_path / "f.h5", use_images=True), "sample 'q01' not found")


def test_unreadable_image(tiny_llava_dir, tmp_path):
    _jsonl(tmp_path / "data.jsonl", n=3, with_images=True)
    _templates(tmp_path / "templates.yaml")
    (tmp_path / "img2.png").write_bytes(b"not a png")
    _fails(_args(tiny_llava_dir, tmp_path, tmp_path / "f.h5", use_images=True), "sample 'q02' is unreadable")


def test_empty_dataset(tiny_llama_dir, workdir):
    (workdir / "data.jsonl").write_text("\n")
    _fails(_args(tiny_llama_dir, workdir, workdir / "f.h5"), "empty dataset")


def test_output_from_other_layers_is_kept(tiny_llama_dir, workdir):
    out = workdir / "features.h5"
    extract_main(_args(tiny_llama_dir, workdir, out))
    before = out.read_bytes()
    _fails(_args(tiny_llama_dir, workdir, out, "--model.layer_steer=2"), "layer_steer=1")
    assert out.read_bytes() == before


def test_auto_batch_size(tiny_llama_dir, workdir):
    """`--data.batch_size auto` asks the module once the model is loaded (a fixed size on CPU)."""
    from l2s_lightning.extraction.batch_size import CPU_BATCH_SIZE

    out = workdir / "auto.h5"
    assert extract_main(_args(tiny_llama_dir, workdir, out, "--data.batch_size=auto")) == 0
    assert len(_read(out)["ids"]) == 10
    from l2s_lightning.extraction.module import ExtractionModule
    from l2s_lightning.models.loading import ModelSpec

    module = ExtractionModule(ModelSpec(str(tiny_llama_dir)), layer_steer=1, layer_context=2)
    module.configure_model()
    from l2s_lightning.data.datamodule import PromptItem

    item = PromptItem(id="x", question="a long question " * 10, category="c", behaviour="b", positive="yes", negative="no",
                      suffix="", close_turn=False, instruction="", split="train", benchmark="jsonl")
    assert module.auto_batch_size(item) == CPU_BATCH_SIZE
