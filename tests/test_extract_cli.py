"""`l2s extract` end to end: HDF5 output, resume after a kill, DDP with 2 CPU processes, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import h5py
import numpy as np
import pytest
from lightning.pytorch.callbacks import Callback
from PIL import Image

from l2s_lightning.extraction import writer as writer_module
from l2s_lightning.extraction.cli import extract_main

TESTS = Path(__file__).resolve().parent


def _jsonl(path: Path, n: int = 10, with_images: bool = False) -> Path:
    rows = []
    for i in range(n):
        row = {
            "id": f"q{i:02d}",
            "question": f"Question number {i}: how do I do thing {i * 7}?",
            "category": ["harm", "legal"][i % 2],
        }
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


def test_extract_resumes_after_a_kill(tiny_llama_dir, workdir, crash_writer_after):
    clean = workdir / "clean.h5"
    extract_main(_args(tiny_llama_dir, workdir, clean))
    out = workdir / "features.h5"
    crash_writer_after(writer_module.HDF5FeatureWriter, 2)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        extract_main(_args(tiny_llama_dir, workdir, out))
    parts = list(out.with_name(out.name + ".parts").glob("*.h5"))
    assert parts and sum(len(writer_module.read_rows(p)["sample_id"]) for p in parts) == 6
    crash_writer_after.restore()
    assert extract_main(_args(tiny_llama_dir, workdir, out)) == 0
    resumed, reference = _read(out), _read(clean)
    assert resumed["ids"] == reference["ids"]  # none lost, none duplicated
    np.testing.assert_allclose(resumed["steer"], reference["steer"], atol=2e-4)
    np.testing.assert_allclose(resumed["context"], reference["context"], atol=2e-4)
    # A third run finds nothing to do and keeps the file.
    before = out.stat().st_mtime_ns
    assert extract_main(_args(tiny_llama_dir, workdir, out)) == 0
    assert out.stat().st_mtime_ns == before


def test_only_rank_zero_merges_parts_left_by_a_run_killed_after_its_last_batch(
    tiny_llama_dir, workdir, crash_writer_after
):
    """Every batch written, killed before the merge: the next run has nothing to extract and merges the parts,
    on rank 0 only (torchrun / SLURM start every rank: two merges raced on the same files)."""
    import lightning as L

    out = workdir / "features.h5"
    crash_writer_after(writer_module.HDF5FeatureWriter, 4)  # 10 rows in batches of 3: after the last one
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        extract_main(_args(tiny_llama_dir, workdir, out))
    crash_writer_after.restore()
    assert _part_rows(out) == 10 and not out.exists()
    with mock.patch.object(L.Trainer, "is_global_zero", new_callable=mock.PropertyMock, return_value=False):
        assert extract_main(_args(tiny_llama_dir, workdir, out)) == 0  # another rank: leaves the parts alone
    assert _part_rows(out) == 10 and not out.exists()
    assert extract_main(_args(tiny_llama_dir, workdir, out)) == 0
    assert _read(out)["ids"] == sorted(f"q{i:02d}" for i in range(10)) and _part_rows(out) == 0


class PauseBeforeSecondBatch(Callback):
    """Sleeps before predict batch 1 (batch 0 is written by then), so that a SIGKILL lands mid-run."""

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 1:
            time.sleep(300)


def _part_rows(out: Path) -> int:
    parts = out.with_name(out.name + ".parts")
    return sum(len(writer_module.read_rows(p)["sample_id"]) for p in parts.glob("*.h5")) if parts.is_dir() else 0


def test_extract_resumes_after_sigkill(tiny_llama_dir, workdir):
    """A real `kill -9` of `l2s extract` after batch 0 is written: the rerun reads the killed run's part file,
    extracts only the rest, and the result equals an uninterrupted run (no id lost or duplicated)."""
    out = workdir / "features.h5"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    cmd = [
        sys.executable,
        "-m",
        "l2s_lightning.cli",
        "extract",
        *_args(tiny_llama_dir, workdir, out),
        f"--trainer.callbacks+={Path(__file__).stem}.PauseBeforeSecondBatch",
    ]
    log = workdir / "killed.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.time() + 120
        while _part_rows(out) == 0:
            assert process.poll() is None, f"extract ended before the kill: {log.read_text()[-3000:]}"
            assert time.time() < deadline, "no batch was written within 120 s"
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not out.exists() and _part_rows(out) == 3  # batch 0 only, readable after the kill
    # a kill during a batch's write leaves a torn temporary file: ignored, then removed with the parts
    (out.with_name(out.name + ".parts") / "rank0-1.h5.tmp").write_bytes(b"\x89HDF torn")
    assert extract_main(_args(tiny_llama_dir, workdir, out)) == 0
    clean = workdir / "clean.h5"
    assert extract_main(_args(tiny_llama_dir, workdir, clean)) == 0
    resumed, reference = _read(out), _read(clean)
    assert len(set(resumed["ids"])) == len(resumed["ids"]) == 10
    assert resumed["ids"] == reference["ids"] == sorted(f"q{i:02d}" for i in range(10))
    np.testing.assert_allclose(resumed["context"], reference["context"], atol=2e-4)
    np.testing.assert_allclose(resumed["steer"], reference["steer"], atol=2e-4)
    assert not out.with_name(out.name + ".parts").exists()


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
    # fewer rows to do than ranks (a small dataset, or the end of a resume): the idle rank gets a filler copy
    (workdir / "one").mkdir()
    _jsonl(workdir / "one" / "data.jsonl", n=1)
    one = workdir / "one" / "out.h5"
    args = [
        *cmd,
        f"--data.source.path={workdir / 'one' / 'data.jsonl'}",
        f"--data.split_file={workdir / 'one' / 'split.json'}",
        f"--writer.output={one}",
        "--data.test_fraction=0",
    ]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _read(one)["ids"] == ["q00"]
    np.testing.assert_allclose(_read(one)["steer"], reference["steer"][:1], atol=2e-4)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_extract_with_images(family, workers, tmp_path, request):
    """Images of different sizes (Qwen2-VL: different numbers of image tokens) through the CLI, batches
    encoded in the main process or in 2 loader workers; the rows equal the module's features of the same
    items (reference forward, encoded here)."""
    model_dir = request.getfixturevalue(f"tiny_{family}_dir")
    _jsonl(tmp_path / "data.jsonl", n=4, with_images=True)
    for i in (1, 3):
        Image.new("RGB", (80, 40), (0, i * 50, 0)).save(tmp_path / f"img{i}.png")
    _templates(tmp_path / "templates.yaml")
    out = tmp_path / "features.h5"
    assert extract_main(_args(model_dir, tmp_path, out, f"--data.num_workers={workers}", use_images=True)) == 0
    data = _read(out)
    assert data["ids"] == ["q00", "q01", "q02", "q03"] and data["context"].shape == (4, 64)
    assert data["attrs"]["model"] == str(model_dir) and json.loads(data["attrs"]["data_options"])["use_images"] is True
    from l2s_lightning.data.datamodule import PromptDataModule
    from l2s_lightning.data.sources import JsonlSource
    from l2s_lightning.extraction.module import ExtractionModule
    from l2s_lightning.models.loading import ModelSpec

    module = ExtractionModule(ModelSpec(str(model_dir)), layer_steer=1, layer_context=2, forward="reference")
    module.configure_model()
    items = (
        PromptDataModule(
            JsonlSource(str(tmp_path / "data.jsonl")),
            templates=str(tmp_path / "templates.yaml"),
            split_file=str(tmp_path / "split.json"),
        )
        .predict_dataloader()
        .dataset
    )
    by_id = {item.id: item for item in items}
    h, z = module.features([by_id[i] for i in data["ids"]])
    np.testing.assert_allclose(data["context"], h.numpy(), atol=2e-4)
    np.testing.assert_allclose(data["steer"], z.numpy(), atol=2e-4)


def test_extract_rows_with_their_own_completions(tiny_llama_dir, workdir):
    """Rows bringing their own T+/T- need no template for their category, nor a category at all."""
    with (workdir / "data.jsonl").open("a") as f:
        f.write(json.dumps({"id": "own1", "question": "Is it fine?", "positive": "Yes it is", "negative": "No"}) + "\n")
        f.write(
            json.dumps(
                {"id": "own2", "question": "A poem?", "category": "poetry", "positive": "Roses", "negative": "No"}
            )
            + "\n"
        )
    out = workdir / "features.h5"
    assert extract_main(_args(tiny_llama_dir, workdir, out)) == 0
    with h5py.File(out) as f:
        behaviour = dict(zip((s.decode() for s in f["sample_id"][:]), (s.decode() for s in f["behaviour"][:])))
    assert len(behaviour) == 12 and behaviour["own1"] == behaviour["own2"] == "custom" and behaviour["q00"] == "refuse"


# --- bad input: a clear error naming the culprit, before the model runs, nothing overwritten ---------


def _model_loaded(*_args, **_kwargs):
    raise AssertionError("the model was loaded: bad input must be refused before")


def _fails(args: list[str], match: str) -> None:
    """The run stops with an error containing ``match``, before any model weights are loaded."""
    with mock.patch("l2s_lightning.extraction.module.load_model", _model_loaded):
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


def test_l2s_command_reports_bad_input_without_a_traceback(tiny_llama_dir, workdir, capsys, monkeypatch):
    """`l2s extract` with a bad setting: one message naming it, exit status 2; L2S_TRACEBACK=1 re-raises."""
    from l2s_lightning.cli import main

    args = ["extract", *_args(tiny_llama_dir, workdir, workdir / "f.h5", "--model.layer_steer=99")]
    monkeypatch.delenv("L2S_TRACEBACK", raising=False)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "l2s extract: error: layer_steer=99 is out of range" in err and "Traceback" not in err
    monkeypatch.setenv("L2S_TRACEBACK", "1")
    with pytest.raises(ValueError, match="layer_steer=99 is out of range"):
        main(args)
    assert not (workdir / "f.h5").exists()


def _unpacking_bug(argv):
    first, second = argv  # a bug, not a check: its ValueError keeps the traceback
    return 0


def _unreadable(argv):
    open(argv[0])


def test_l2s_command_keeps_the_traceback_of_a_bug(monkeypatch, capsys, tmp_path):
    import l2s_lightning.cli as cli

    monkeypatch.delenv("L2S_TRACEBACK", raising=False)
    monkeypatch.setitem(cli.COMMANDS, "buggy", (f"{__name__}:_unpacking_bug", ""))
    monkeypatch.setitem(cli.COMMANDS, "read", (f"{__name__}:_unreadable", ""))
    with pytest.raises(ValueError, match="not enough values to unpack"):
        cli.main(["buggy", "one"])
    assert cli.main(["read", str(tmp_path / "missing.txt")]) == 2  # an unreadable path is bad input wherever raised
    assert f"l2s read: error: No such file or directory: {tmp_path / 'missing.txt'}" in capsys.readouterr().err


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


def test_output_from_another_model_dataset_or_templates_is_kept(tiny_llama_dir, tiny_qwen2_vl_dir, workdir):
    """Same layers and hidden size, but another model, another dataset, edited templates of the same name or
    other reader settings: refused before the model loads, nothing overwritten; a half-done part file too."""
    out = workdir / "features.h5"
    extract_main(_args(tiny_llama_dir, workdir, out))
    before = out.read_bytes()
    _fails(_args(tiny_qwen2_vl_dir, workdir, out), f"model={str(tiny_llama_dir)!r}")
    other = workdir / "other"
    other.mkdir()
    _jsonl(other / "questions.jsonl")
    _fails(
        _args(tiny_llama_dir, workdir, out, f"--data.source.path={other / 'questions.jsonl'}"),
        "dataset='JsonlSource:data.jsonl'",
    )
    _fails(_args(tiny_llama_dir, workdir, out, "--data.typo_font_size=40", use_images=True), "data_options=")
    templates = (workdir / "templates.yaml").read_text()
    (workdir / "templates.yaml").write_text(templates.replace("Sure, here is", "Of course, here is"))
    _fails(_args(tiny_llama_dir, workdir, out), "template_sha256=")
    assert out.read_bytes() == before
    (workdir / "templates.yaml").write_text(templates)
    # the same checks hold against a part file of an interrupted run
    parts = out.with_name(out.name + ".parts")
    parts.mkdir()
    out.rename(parts / "rank0-0.h5")
    _fails(_args(tiny_qwen2_vl_dir, workdir, out), "rank0-0.h5 holds features with model=")


def test_rows_mixing_images_and_none(tiny_llava_dir, tmp_path):
    _jsonl(tmp_path / "data.jsonl", n=4, with_images=True)
    with (tmp_path / "data.jsonl").open("a") as f:
        f.write(json.dumps({"id": "text-only", "question": "No picture here?", "category": "harm"}) + "\n")
    _templates(tmp_path / "templates.yaml")
    _fails(
        _args(tiny_llava_dir, tmp_path, tmp_path / "f.h5", use_images=True),
        "4 rows have an image and 1 have none (e.g. ['text-only'])",
    )


def test_empty_completion(tiny_llama_dir, workdir):
    with (workdir / "data.jsonl").open("a") as f:
        f.write(json.dumps({"id": "blank", "question": "?", "category": "harm", "negative": " "}) + "\n")
    _fails(_args(tiny_llama_dir, workdir, workdir / "f.h5"), "sample 'blank': the negative completion is empty")


def test_mm_safetybench_image_root_with_no_image(tiny_llava_dir, tmp_path):
    args = [a for a in _args(tiny_llava_dir, tmp_path, tmp_path / "f.h5", use_images=True) if "data.source" not in a]
    mmsb = Path(__file__).resolve().parents[1] / "data" / "mm_safetybench"
    args += [
        "--data.source=l2s_lightning.data.sources.MMSafetyBenchSource",
        f"--data.source.root={mmsb}",
        f"--data.source.image_root={tmp_path / 'imgs_typo'}",
        '--data.source.scenarios=["03"]',
        "--data.templates=safety",
    ]
    _fails(args, "no image found for any of the 44 questions")


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

    item = PromptItem(
        id="x",
        question="a long question " * 10,
        category="c",
        behaviour="b",
        positive="yes",
        negative="no",
        suffix="",
        close_turn=False,
        instruction="",
        split="train",
        benchmark="jsonl",
    )
    assert module.auto_batch_size(item) == CPU_BATCH_SIZE


def test_resume_from_another_data_file_of_the_same_name_is_refused(tiny_llama_dir, workdir, tmp_path):
    """features.h5 records a digest of the data source: same ids, same file name, other questions: refused."""
    out = workdir / "features.h5"
    assert extract_main(_args(tiny_llama_dir, workdir, out, "--data.limit_per_category={train: 1, test: 1}")) == 0
    before = out.read_bytes()
    other = tmp_path / "other"
    other.mkdir()
    _templates(other / "templates.yaml")
    rows = [json.loads(line) for line in (workdir / "data.jsonl").read_text().splitlines()]
    rows[0]["question"] = "A different question entirely?"
    (other / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    args = _args(tiny_llama_dir, other, out, f"--data.split_file={workdir / 'split.json'}")
    with pytest.raises(ValueError, match=r"data_sha256=.* \(another data file, or its rows changed\)"):
        extract_main(args)
    assert out.read_bytes() == before
    assert extract_main(_args(tiny_llama_dir, workdir, out)) == 0  # the same data (more of it) still resumes


def test_question_longer_than_the_context_is_refused_or_cut(tiny_llama_dir, workdir, recwarn):
    """The tiny Llama has a 512-token context: a 100,000-character question is refused before the model loads,
    naming the sample, or cut to fit with a warning when data.long_questions=truncate."""
    with (workdir / "data.jsonl").open("a") as f:
        f.write(json.dumps({"id": "huge", "question": "why " * 25_000, "category": "harm"}) + "\n")
    out = workdir / "features.h5"
    with pytest.raises(ValueError, match=r"sample 'huge': its question is \d+ tokens, more than the \d+ .*512-token"):
        extract_main(_args(tiny_llama_dir, workdir, out))
    assert not out.exists()
    assert extract_main(_args(tiny_llama_dir, workdir, out, "--data.long_questions=truncate")) == 0
    assert "huge" in _read(out)["ids"]
    assert any("sample 'huge': question cut from" in str(w.message) for w in recwarn)
