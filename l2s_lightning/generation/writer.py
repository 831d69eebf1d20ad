"""`JsonlPredictionWriter`: one JSON line per sample, per-rank part files merged at the end, resumable."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L

from l2s_lightning.errors import L2SInputError
from l2s_lightning.files import naming_file, write_atomically
from l2s_lightning.jsonl import iter_jsonl
from l2s_lightning.models.names import same_setting
from l2s_lightning.part_writer import RankPartWriter


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a part or output JSONL file; a torn last line (a kill mid-write) is dropped, any other bad
    line raises, naming the file and line."""
    return [row for _, row in iter_jsonl(path, torn_tail_ok=True)]


_HINTS = {
    "steerer_digest": " (another steerer, e.g. one trained again with other settings; for `l2s sweep` the files are"
    " in its out_dir, by default <steerer>/sweep)"
}


class JsonlPredictionWriter(RankPartWriter):
    """Appends each batch's rows to ``<output>.parts/rank<R>-<k>.jsonl`` (flushed per batch); rank 0 merges
    everything into ``output`` sorted by id, each id once."""

    part_suffix = ".jsonl"

    def __init__(self, output: str = "outputs/predictions.jsonl") -> None:
        super().__init__(output)

    def done_ids(self) -> set[str]:
        return {row["id"] for path in self.existing_files() for row in read_jsonl(path)}

    def check_compatible(self, settings: Mapping[str, Any]) -> None:
        """An output file made with other settings (method, α, model, steerer digest, positions, generation
        settings: :meth:`SteeredGenerationModule.settings`) is never appended to. A setting a file's rows do
        not record (files of earlier versions) is not compared."""
        for path in self.existing_files():
            for row in read_jsonl(path)[:1]:
                for key, value in settings.items():
                    if key in row and not same_setting(key, row[key], value):
                        raise L2SInputError(
                            f"{path} holds predictions with {key}={row[key]!r}, this run has {key}={value!r}"
                            f"{_HINTS.get(key, '')}: choose another output path or delete the file "
                            "(nothing was overwritten)"
                        )

    def _open(self, path: Path):
        return path.open("a")

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Sequence[Mapping[str, Any]],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        part = self.part(trainer)
        try:
            part.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in prediction))
            part.flush()
            os.fsync(part.fileno())
        except OSError as err:
            raise naming_file(err, Path(part.name)) from None

    def merge(self) -> int:
        """Merge the final file and all parts into ``output`` (atomically); returns the row count."""
        rows: dict[str, dict[str, Any]] = {}
        for path in self.existing_files():
            for row in read_jsonl(path):
                rows.setdefault(row["id"], row)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(rows[key], ensure_ascii=False) + "\n" for key in sorted(rows))
        write_atomically(self.output, text.encode())
        return len(rows)
