"""The GGUF cache (models/loading.py): one safetensors copy per GGUF *content*, the hash index, and `l2s cache`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from test_internals import _write_gguf

from l2s_lightning.cli import main as l2s_main
from l2s_lightning.models.cache_cli import cache_entries
from l2s_lightning.models.loading import GGUF_INDEX, GGUF_SOURCE, dequantized_gguf_folder, gguf_cache_folder


def test_one_copy_serves_every_path_holding_the_same_gguf(
    tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two clones / venvs with the same GGUF file share one dequantised copy; another file gets its own."""
    import transformers

    cache = str(tmp_path / "cache")
    first, second = tmp_path / "clone1", tmp_path / "clone2"
    first.mkdir()
    _write_gguf(tiny_llama_dir, first / "tiny.gguf")
    shutil.copytree(first, second)
    copy = dequantized_gguf_folder(str(first), "tiny.gguf", cache)
    assert json.loads((copy / GGUF_SOURCE).read_text()) == {"gguf_file": "tiny.gguf"}
    assert (copy / "config.json").is_file() and any(copy.glob("*.safetensors"))

    def refuse(*_args, **_kwargs):
        raise AssertionError("the GGUF file was dequantised again")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    assert dequantized_gguf_folder(str(second), "tiny.gguf", cache) == copy
    index = json.loads((copy.parent / GGUF_INDEX).read_text())
    assert set(index) == {str((first / "tiny.gguf").resolve()), str((second / "tiny.gguf").resolve())}
    assert {entry["sha256"][:16] for entry in index.values()} == {copy.name.rsplit("-", 1)[1]}
    assert sorted(p.name for p in copy.parent.iterdir()) == sorted([copy.name, GGUF_INDEX])  # no temporary left

    with (second / "tiny.gguf").open("ab") as file:
        file.write(b"\0")  # other content: another key
    assert gguf_cache_folder(str(second), "tiny.gguf", cache) != copy


def test_the_hash_index_spares_rehashing_until_the_file_changes(tmp_path: Path) -> None:
    """An unchanged file (same path, size and mtime) takes its hash from the index; a touched one is rehashed;
    a broken index is rebuilt."""
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF not really")
    cache = str(tmp_path / "cache")
    real = gguf_cache_folder(str(tmp_path), "m.gguf", cache)
    index_path = real.parent / GGUF_INDEX
    index = json.loads(index_path.read_text())
    index[str(gguf.resolve())]["sha256"] = "f" * 64  # what the index says is believed
    index_path.write_text(json.dumps(index))
    assert gguf_cache_folder(str(tmp_path), "m.gguf", cache).name == "m-" + "f" * 16
    stat = gguf.stat()
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert gguf_cache_folder(str(tmp_path), "m.gguf", cache) == real
    index_path.write_text("{not json")
    assert gguf_cache_folder(str(tmp_path), "m.gguf", cache) == real
    assert list(json.loads(index_path.read_text())) == [str(gguf.resolve())]


def _fake_entry(folder: Path, name: str, size: int, source: str | None = None) -> None:
    folder.joinpath(name).mkdir(parents=True)
    folder.joinpath(name, "model.safetensors").write_bytes(b"x" * size)
    if source:
        folder.joinpath(name, GGUF_SOURCE).write_text(json.dumps({"gguf_file": source}))


def test_cache_info_and_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """`l2s cache` lists each copy (source, size) and the total; `l2s cache clear` deletes our entries only."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("L2S_CACHE", str(cache))
    gguf = tmp_path / "model.Q4.gguf"
    gguf.write_bytes(b"GGUF not really")
    new = gguf_cache_folder(str(tmp_path), "model.Q4.gguf").name  # writes the index
    root = cache / "gguf"
    _fake_entry(root, new, 2_000_000 - len(json.dumps({"gguf_file": "model.Q4.gguf"})), source="model.Q4.gguf")
    _fake_entry(root, "Old.Q4_1-0123456789ab", 3_000_000)
    _fake_entry(root, f"{new}.abc123_x.tmp", 1_000)
    (root / "notes.txt").write_text("not ours")
    _fake_entry(root, "someone-else", 10)
    (cache / "other.bin").write_bytes(b"not ours")

    assert l2s_main(["cache"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"cache: {cache}"
    assert lines[1:] == [
        "  Old.Q4_1.gguf  3.0 MB  gguf/Old.Q4_1-0123456789ab (old: one copy per path)",
        f"  model.Q4.gguf  2.0 MB  gguf/{new}",
        f"  model.Q4.gguf  0.0 MB  gguf/{new}.abc123_x.tmp (unfinished)",
        "total: 5.0 MB in 3 cached model(s)",
    ]
    assert [(e.old, e.unfinished) for e in cache_entries()] == [(True, False), (False, False), (False, True)]

    assert l2s_main(["cache", "clear"]) == 0
    assert capsys.readouterr().out == f"cleared: 3 cached model(s), 5.0 MB, from {cache}\n"
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt", "someone-else"]
    assert (cache / "other.bin").read_bytes() == b"not ours"
    assert l2s_main(["cache", "info"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["no cached models"]


def test_cache_clear_of_a_missing_cache_and_explicit_cache_dir(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "never_made"
    assert l2s_main(["cache", "clear", "--cache_dir", str(target)]) == 0
    assert capsys.readouterr().out == f"cleared: 0 cached model(s), 0.0 MB, from {target}\n"
    assert not target.exists()
    with pytest.raises(SystemExit):
        l2s_main(["cache", "purge"])
