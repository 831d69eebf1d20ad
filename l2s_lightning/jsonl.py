"""Reading JSON Lines files: one iterator for datasets, prediction files and resumable part files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from l2s_lightning.errors import L2SInputError


def iter_jsonl(
    path: str | Path, *, torn_tail_ok: bool = False, error: type[ValueError] = L2SInputError
) -> Iterator[tuple[str, Any]]:
    """``("<path>:<line>", value)`` for each non-blank line of a UTF-8 JSONL file, read as bytes so that a
    bad byte names its own line.

    A bad line raises ``error`` naming the file and line. With ``torn_tail_ok`` a bad *last* line that has no
    final newline (a kill mid-write, possibly inside a UTF-8 character) ends the iteration instead.
    """
    with Path(path).open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            torn_tail = torn_tail_ok and not raw.endswith(b"\n")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                if torn_tail:
                    return
                raise error(f"{path}:{number}: not UTF-8 text ({err.reason} at byte {err.start})") from None
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                if torn_tail:
                    return
                raise error(f"{path}:{number}: not valid JSON ({err.msg})") from None
            yield f"{path}:{number}", value


def starts_with_json_array(path: str | Path) -> bool:
    """Whether the file's first non-blank character is ``[`` (a JSON array file rather than JSONL)."""
    with Path(path).open("rb") as handle:
        while chunk := handle.read(4096):
            if stripped := chunk.lstrip():
                return stripped.startswith(b"[")
    return False
