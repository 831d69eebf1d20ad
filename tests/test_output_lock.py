"""One run at a time per output: a second process writing the same features or predictions refuses at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_extract_cli import _args, workdir  # noqa: F401 - workdir is a fixture

from l2s_lightning.errors import L2SInputError
from l2s_lightning.extraction.cli import extract_main
from l2s_lightning.extraction.writer import HDF5FeatureWriter
from l2s_lightning.generation.writer import JsonlPredictionWriter

HOLD = """
import sys, time
from l2s_lightning.part_writer import OutputLock
from pathlib import Path
output = Path(sys.argv[1])
OutputLock(output.with_name(output.name + ".rank0.lock")).acquire(output)
print("locked", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


class LockHolder:
    """Another process holding rank 0's lock on ``output`` until the block ends."""

    def __init__(self, output: Path) -> None:
        self.output = output

    def __enter__(self) -> subprocess.Popen:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(self.output)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "locked"
        return self.process

    def __exit__(self, *exc: object) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.mark.parametrize("writer_class", [HDF5FeatureWriter, JsonlPredictionWriter])
def test_second_writer_refuses_naming_the_holder(tmp_path, writer_class):
    output = tmp_path / "out" / ("features.h5" if writer_class is HDF5FeatureWriter else "pred.jsonl")
    output.parent.mkdir()
    with LockHolder(output) as holder:
        writer = writer_class(output=str(output))
        with pytest.raises(L2SInputError, match=rf"being written by another run \(pid {holder.pid}"):
            writer.lock(0)
        with pytest.raises(L2SInputError, match="another run"):
            writer.merge_and_clean()  # a merge needs the lock too
        writer.lock(1)  # another rank's lock is free
        writer.unlock()
    writer.lock(0)  # free again once the holder has ended
    writer.unlock()
    assert not list(output.parent.glob("*.lock"))  # released locks leave no files


def test_concurrent_extract_refuses_before_writing(tiny_llama_dir, workdir):
    out = workdir / "features.h5"
    with LockHolder(out) as holder:
        with pytest.raises(L2SInputError, match=f"pid {holder.pid}"):
            extract_main(_args(tiny_llama_dir, workdir, out))
        assert not out.exists() and not out.with_name(out.name + ".parts").exists()
    assert extract_main(_args(tiny_llama_dir, workdir, out)) == 0  # the holder gone, the run goes ahead
    assert out.is_file() and not list(workdir.glob("*.lock"))


def test_a_file_system_without_locks_runs_unlocked_with_a_warning(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    writer = JsonlPredictionWriter(output=str(tmp_path / "pred.jsonl"))
    with pytest.warns(UserWarning, match=r"pred\.jsonl\.rank0\.lock: no file locks here .*is not locked"):
        writer.lock(0)
    writer.unlock()
    assert not list(tmp_path.glob("*.lock"))


def test_a_merge_removes_what_killed_merges_left(tmp_path):
    output = tmp_path / "pred.jsonl"
    writer = JsonlPredictionWriter(output=str(output))
    writer.parts_dir.mkdir()
    (writer.parts_dir / "rank0-0.jsonl").write_text('{"id": "a", "response": "x"}\n')
    stale = tmp_path / "pred.jsonl.12345.tmp"  # a merge killed before its rename
    stale.write_text("half a file")
    assert writer.merge_and_clean() == 1
    assert output.is_file() and not stale.exists() and not writer.parts_dir.exists()
