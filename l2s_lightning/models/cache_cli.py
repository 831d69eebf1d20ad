"""``l2s cache [info|clear]``: the safetensors copies of GGUF models kept by :func:`dequantized_gguf_folder`."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from l2s_lightning.models.loading import GGUF_INDEX, GGUF_SOURCE, gguf_cache_root

# <gguf stem>-<key>: 16 hex digits of the file's sha256; 12 are the older copies keyed by path (one per clone)
_ENTRY = re.compile(r"(?P<stem>.+)-(?P<key>[0-9a-f]{16}|[0-9a-f]{12})(?P<tmp>\..+\.tmp)?")


@dataclass
class CacheEntry:
    """One cached copy: its folder, the GGUF file it was made from, its size on disk."""

    path: Path
    source: str
    size: int
    old: bool  # keyed by the GGUF file's path (made before copies were shared by content)
    unfinished: bool  # a temporary folder: being written, or left by a process that was killed


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def cache_entries(cache_dir: str | Path | None = None) -> list[CacheEntry]:
    """Our entries under ``<cache_dir>/gguf``, by name; other files there are no entry."""
    root = gguf_cache_root(cache_dir)
    entries = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        match = _ENTRY.fullmatch(path.name)
        if not match or not path.is_dir() or path.is_symlink():
            continue
        try:
            source = json.loads((path / GGUF_SOURCE).read_text())["gguf_file"]
        except (OSError, ValueError, KeyError, TypeError):
            source = match["stem"] + ".gguf"
        entries.append(CacheEntry(path, str(source), _size(path), len(match["key"]) == 12, bool(match["tmp"])))
    return entries


def _human(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def cache_info(cache_dir: str | Path | None = None) -> str:
    """The cache folder, each cached model (GGUF file name, size, folder) and the total size."""
    entries = cache_entries(cache_dir)
    root = gguf_cache_root(cache_dir)
    lines = [f"cache: {root.parent}"]
    for entry in entries:
        note = " (unfinished)" if entry.unfinished else " (old: one copy per path)" if entry.old else ""
        lines.append(f"  {entry.source}  {_human(entry.size)}  {root.name}/{entry.path.name}{note}")
    total = sum(entry.size for entry in entries)
    lines.append(f"total: {_human(total)} in {len(entries)} cached model(s)" if entries else "no cached models")
    return "\n".join(lines)


def clear_cache(cache_dir: str | Path | None = None) -> tuple[int, int]:
    """Delete our entries and the hash index under ``<cache_dir>/gguf`` (other files stay); their number and size."""
    root = gguf_cache_root(cache_dir)
    entries = cache_entries(cache_dir)
    for entry in entries:
        shutil.rmtree(entry.path)
    for index in [root / GGUF_INDEX, *root.glob(GGUF_INDEX + ".*.tmp")] if root.is_dir() else []:
        index.unlink(missing_ok=True)
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    return len(entries), sum(entry.size for entry in entries)


def cache_main(argv: list[str]) -> int:
    """Entry point of ``l2s cache``: ``info`` (the default) or ``clear``."""
    parser = argparse.ArgumentParser(prog="l2s cache", description="the dequantised copies of GGUF models")
    parser.add_argument("action", nargs="?", choices=("info", "clear"), default="info")
    parser.add_argument("--cache_dir", default=None, help="default: $L2S_CACHE or ~/.cache/l2s_lightning")
    args = parser.parse_args(argv)
    if args.action == "clear":
        count, size = clear_cache(args.cache_dir)
        print(f"cleared: {count} cached model(s), {_human(size)}, from {gguf_cache_root(args.cache_dir).parent}")
    else:
        print(cache_info(args.cache_dir))
    return 0
