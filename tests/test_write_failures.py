"""A write that fails mid-run (a full disk; here a file-size limit on a subprocess) is one line naming the file,
exit status 2, the parts already written kept, and a rerun finishes the job."""

from __future__ import annotations

import subprocess
import sys

import h5py
from test_extract_cli import _args, _read, workdir  # noqa: F401 - workdir is a fixture

from l2s_lightning.extraction.cli import extract_main
from l2s_lightning.extraction.writer import read_attrs, read_rows
from l2s_lightning.features import append_rows
from l2s_lightning.part_writer import hdf5_bytes

LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from l2s_lightning.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _run_limited(limit: int, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", LIMITED, str(limit), *args], capture_output=True, text=True, timeout=600, check=False
    )


def _hdf5_size(attrs: dict, rows: dict, n: int) -> int:
    def fill(file: h5py.File) -> None:
        file.attrs.update(attrs)
        append_rows(file, {name: values[:n] for name, values in rows.items()})

    return len(hdf5_bytes(fill))


def test_extract_write_failure_names_the_file_and_a_rerun_resumes(tiny_llama_dir, workdir, tmp_path):
    reference = tmp_path / "reference.h5"
    assert extract_main(_args(tiny_llama_dir, workdir, reference)) == 0
    rows, attrs = read_rows(reference), read_attrs(reference)
    part, merged = _hdf5_size(attrs, rows, 3), reference.stat().st_size  # a batch of 3 rows; all 10 rows
    assert part + 1024 < merged
    out = workdir / "features.h5"
    # every batch's part fits under the limit, the merged file does not: the write that fails is the merge
    result = _run_limited((part + merged) // 2, ["extract", *_args(tiny_llama_dir, workdir, out)])
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"l2s extract: error: File too large: {out}" in result.stderr
    assert "Traceback" not in result.stderr
    parts = sorted(out.with_name(out.name + ".parts").glob("*.h5"))
    assert len(parts) == 4 and not out.exists() and not list(workdir.rglob("*.tmp"))  # parts kept, no half file
    assert extract_main(_args(tiny_llama_dir, workdir, out)) == 0  # the rerun merges what was kept
    done, expected = _read(out), _read(reference)
    assert done["ids"] == expected["ids"] and (done["steer"] == expected["steer"]).all()


WRITE = """
import resource, signal, sys
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
from l2s_lightning.generation.writer import JsonlPredictionWriter
writer = JsonlPredictionWriter(output=sys.argv[1])
part = writer.parts_dir / "rank0-0.jsonl"
part.parent.mkdir(parents=True)
part.write_text('{"id": "a", "response": "' + "x" * 900 + '"}\\n')
(writer.parts_dir / "rank0-1.jsonl").write_text('{"id": "b", "response": "' + "y" * 900 + '"}\\n')
try:
    writer.merge_and_clean()
except OSError as err:
    print(err.filename, err.strerror)
"""


def test_prediction_merge_failure_names_the_output_and_keeps_the_parts(tmp_path):
    output = tmp_path / "pred.jsonl"
    result = subprocess.run([sys.executable, "-c", WRITE, str(output)], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"{output} File too large"
    assert len(list(output.with_name(output.name + ".parts").glob("*.jsonl"))) == 2 and not output.exists()
    assert not list(tmp_path.glob("*.tmp"))
