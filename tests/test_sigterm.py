"""SIGTERM (a scheduler's stop) to `l2s extract`, `l2s predict` and `l2s fit` in a subprocess: the batch in flight
is finished and written, the command exits with 143 saying what was kept, and a rerun resumes to the result of
an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
from test_extract_cli import _args, _read, workdir  # noqa: F401 - workdir is a fixture
from test_predict import predict_args, templates
from test_training_resume import EPOCHS, STOP, _argv, _assert_same_steerer, features, uninterrupted  # noqa: F401

from l2s_lightning.extraction.cli import extract_main
from l2s_lightning.generation.cli import predict_main
from l2s_lightning.generation.writer import read_jsonl
from l2s_lightning.training.cli import fit_main

TESTS = Path(__file__).resolve().parent


class SigtermAfter(L.Callback):
    """Sends this process SIGTERM at the end of batch ``batches`` (of epoch ``epoch`` when training)."""

    def __init__(self, batches: int, epoch: int = 0) -> None:
        self.batches, self.epoch = batches, epoch

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx + 1 == self.batches:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx + 1 == self.batches:
            os.kill(os.getpid(), signal.SIGTERM)


def _l2s(command: str, args: list[str], batches: int, epoch: int = 0) -> subprocess.CompletedProcess:
    """``l2s <command> args`` in a subprocess that gets SIGTERM after ``batches`` batches."""
    callback = [{"class_path": f"{__name__}.SigtermAfter", "init_args": {"batches": batches, "epoch": epoch}}]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "l2s_lightning.cli", command, *args, "--trainer.callbacks", json.dumps(callback)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def test_extract_stops_after_the_batch_and_resumes(tiny_llama_dir, workdir, tmp_path):
    reference = tmp_path / "reference.h5"
    assert extract_main(_args(tiny_llama_dir, workdir, reference)) == 0
    out = workdir / "features.h5"
    result = _l2s("extract", _args(tiny_llama_dir, workdir, out), batches=2)
    assert result.returncode == 143, result.stderr[-3000:]
    assert "extract stopped by SIGTERM; the batches done are kept in" in result.stderr
    assert "Traceback" not in result.stderr
    parts = sorted(out.with_name(out.name + ".parts").glob("*.h5"))
    assert len(parts) == 2 and not out.exists()  # batches 1 and 2 (3 rows each) written, 3 and 4 not run
    assert extract_main(_args(tiny_llama_dir, workdir, out)) == 0
    done, expected = _read(out), _read(reference)
    assert done["ids"] == expected["ids"] and (done["steer"] == expected["steer"]).all()


def test_predict_stops_after_the_batch_and_resumes(tiny_llama_dir, tmp_path):
    rows = [{"id": f"q{i:02d}", "question": f"How do I make thing {i}?", "category": "harm"} for i in range(16)]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "templates.yaml").write_text(templates())
    reference, out = tmp_path / "reference.jsonl", tmp_path / "pred.jsonl"
    extra = ("--data.test_fraction=0.5", "--model.max_new_tokens=4")
    assert predict_main(predict_args(tiny_llama_dir, tmp_path, "none", reference, *extra)) == 0
    result = _l2s("predict", predict_args(tiny_llama_dir, tmp_path, "none", out, *extra), batches=1)
    assert result.returncode == 143, result.stderr[-3000:]
    assert "predict stopped by SIGTERM; the batches done are kept in" in result.stderr
    parts = list(out.with_name(out.name + ".parts").glob("*.jsonl"))
    assert len(parts) == 1 and len(read_jsonl(parts[0])) == 4 and not out.exists()  # one batch of 4 rows kept
    assert predict_main(predict_args(tiny_llama_dir, tmp_path, "none", out, *extra)) == 0
    strip = lambda rows: [{k: v for k, v in row.items() if k != "prompt_tokens"} for row in rows]  # noqa: E731
    assert strip(read_jsonl(out)) == strip(read_jsonl(reference))


def test_fit_stops_keeping_last_checkpoint_and_resumes(features, uninterrupted, tmp_path):
    out = tmp_path / "stopped"
    result = _l2s("fit", _argv(features, out, EPOCHS), batches=3, epoch=STOP)
    assert result.returncode == 143, result.stderr[-3000:]
    last = out / "runs" / "l2s" / "checkpoints" / "last.ckpt"
    assert f"fit stopped by SIGTERM in epoch {STOP}; {last} holds the last finished epoch" in result.stderr
    assert last.is_file() and not (out / "steerers" / "l2s").exists()
    assert fit_main([*_argv(features, out, EPOCHS), "--ckpt_path", "last"]) == 0
    _assert_same_steerer(uninterrupted, out)
