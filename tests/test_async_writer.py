"""The HDF5 writer's background thread (used on CUDA, where features reach the host through a non-blocking
copy): same file as writing in the step, batches computed before a crash still written, write errors raised."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_extract_cli import _args, _part_rows, _read, workdir  # noqa: F401 - workdir is a fixture

from l2s_lightning.extraction import writer as writer_module
from l2s_lightning.extraction.cli import extract_main
from l2s_lightning.extraction.host_copy import copy_to_host


def test_copy_to_host_on_cpu_is_complete_at_once():
    tensors = {"context": torch.randn(2, 3), "steer": torch.randn(2, 3)}
    host, ready = copy_to_host(tensors)
    assert ready is None and all(torch.equal(host[k], tensors[k]) for k in tensors)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_copy_to_host_from_cuda_is_pinned_and_equal():  # pragma: no cover - GPU machines only
    tensors = {"steer": torch.randn(4, 8, device="cuda")}
    host, ready = copy_to_host(tensors)
    ready.synchronize()
    assert host["steer"].is_pinned() and torch.equal(host["steer"], tensors["steer"].cpu())


def test_background_writer_matches_writing_in_the_step(tiny_llama_dir, workdir):
    inline, threaded = workdir / "inline.h5", workdir / "threaded.h5"
    assert extract_main(_args(tiny_llama_dir, workdir, inline)) == 0
    assert (
        extract_main(_args(tiny_llama_dir, workdir, threaded, "--writer.async_write=true", "--writer.max_pending=1"))
        == 0
    )
    a, b = _read(inline), _read(threaded)
    assert a["ids"] == b["ids"] and len(b["ids"]) == 10
    np.testing.assert_array_equal(a["context"], b["context"])
    np.testing.assert_array_equal(a["steer"], b["steer"])
    assert not threaded.with_name(threaded.name + ".parts").exists()


def test_background_writer_keeps_batches_done_before_a_crash(tiny_llama_dir, workdir, monkeypatch):
    out = workdir / "features.h5"
    original = writer_module.HDF5FeatureWriter.write_on_batch_end
    calls = {"n": 0}

    def crash_after_two(self, *args, **kwargs):
        original(self, *args, **kwargs)  # queued, not yet written
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(writer_module.HDF5FeatureWriter, "write_on_batch_end", crash_after_two)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        extract_main(_args(tiny_llama_dir, workdir, out, "--writer.async_write=true"))
    assert _part_rows(out) == 6  # both queued batches were written before the run ended
    monkeypatch.setattr(writer_module.HDF5FeatureWriter, "write_on_batch_end", original)
    assert extract_main(_args(tiny_llama_dir, workdir, out, "--writer.async_write=true")) == 0
    clean = workdir / "clean.h5"
    assert extract_main(_args(tiny_llama_dir, workdir, clean)) == 0
    resumed, reference = _read(out), _read(clean)
    assert resumed["ids"] == reference["ids"]
    np.testing.assert_allclose(resumed["steer"], reference["steer"], atol=2e-4)


def test_background_write_error_reaches_the_caller(tiny_llama_dir, workdir, monkeypatch):
    out = workdir / "features.h5"
    original = writer_module.HDF5FeatureWriter._write_part

    def poison_second(self, path, rows, ready=None):
        if "q03" in rows["sample_id"]:
            rows["steer"] = rows["steer"].clone().fill_(float("nan"))
        return original(self, path, rows, ready)

    monkeypatch.setattr(writer_module.HDF5FeatureWriter, "_write_part", poison_second)
    with pytest.raises(FloatingPointError, match="q03"):
        extract_main(_args(tiny_llama_dir, workdir, out, "--writer.async_write=true"))
    assert _part_rows(out) >= 3  # the first batch is kept


def test_max_pending_is_checked():
    with pytest.raises(ValueError, match="max_pending"):
        writer_module.HDF5FeatureWriter("x.h5", max_pending=0)
