"""Reading prediction JSONL files (the format in docs/DESIGN.md) into validated rows, grouped into runs.

A *run* is every row of one benchmark with the same ``method``, ``alpha``, ``model`` and ``layer_steer``; a run
may span files (e.g. a sweep that wrote one file per shard), a file must hold one benchmark only. Runs that
share a method and α but differ in model or layer stay apart, and their labels say what differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l2s_lightning.errors import L2SInputError
from l2s_lightning.jsonl import iter_jsonl
from l2s_lightning.models.names import model_key

BENCHMARKS = ("mm_safetybench", "pope", "chair", "jsonl")

_COMMON_FIELDS = ("id", "benchmark", "method", "alpha", "response")
_BENCHMARK_FIELDS = {
    "mm_safetybench": ("category", "prompt"),
    "pope": ("label",),
    "chair": (),
    "jsonl": ("prompt",),
}


class PredictionFormatError(L2SInputError):
    """A prediction file that cannot be evaluated; the message names the file and line."""


@dataclass(frozen=True)
class Prediction:
    """One generated answer. ``source`` is ``file:line`` for error messages."""

    id: str
    benchmark: str
    method: str
    alpha: float | None
    response: str
    prompt: str = ""
    question: str = ""  # the question alone (predict writes it; ``prompt`` is the rendered chat text)
    category: str = ""
    behaviour: str = ""  # the behaviour the row was steered toward (predict writes it; "" when absent)
    label: str = ""
    subset: str = ""
    image: str = ""
    model: str = ""
    layer_steer: int | None = None
    answer_nll: float | None = None  # nats per answer token under the unsteered model (None: not scored, or empty)
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_empty(self) -> bool:
        return not self.response.strip()

    @property
    def judged_prompt(self) -> str:
        """What a judge sees as the request: the question alone when the row has it, else ``prompt``. Without
        the generating model's chat markup or the prompt baseline's instruction, every method's answer to a
        question is judged against the same request."""
        return self.question or self.prompt


@dataclass
class Run:
    """All rows of one (benchmark, method, alpha, model, layer_steer)."""

    benchmark: str
    method: str
    alpha: float | None
    rows: list[Prediction]
    files: list[str]
    model: str = ""
    layer_steer: int | None = None
    detail: str = ""  # set by group_runs when another run has the same method and α: "model=…, L*=…"

    @property
    def label(self) -> str:
        base = self.method if self.alpha is None else f"{self.method} α={self.alpha:g}"
        return f"{base} [{self.detail}]" if self.detail else base

    @property
    def series(self) -> str:
        """The method, plus what tells it apart from a same-named method of another model or layer (plots)."""
        return f"{self.method} [{self.detail}]" if self.detail else self.method


def _alpha(value: Any, where: str) -> float | None:
    if value is None:
        return None
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        raise PredictionFormatError(f"{where}: alpha {value!r} is not a number") from None
    if not math.isfinite(alpha):
        raise PredictionFormatError(f"{where}: alpha {value!r} is not finite")
    return alpha


def _answer_nll(value: Any, where: str) -> float | None:
    """The row's ``answer_nll``: None when absent or null, else a finite number >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise PredictionFormatError(f"{where}: answer_nll {value!r} is not a finite number >= 0 (or null)")
    return float(value)


def _parse_row(item: Any, where: str) -> Prediction:
    if not isinstance(item, dict):
        raise PredictionFormatError(f"{where}: a line must be a JSON object, got {type(item).__name__}")
    benchmark = item.get("benchmark")
    if benchmark not in BENCHMARKS:
        if "benchmark" not in item:
            raise PredictionFormatError(f"{where}: missing field 'benchmark'")
        raise PredictionFormatError(f"{where}: unknown benchmark {benchmark!r} (one of {list(BENCHMARKS)})")
    missing = [
        key
        for key in _COMMON_FIELDS + _BENCHMARK_FIELDS[benchmark]
        if key not in item or (item[key] is None and key != "alpha")
    ]
    if missing:
        raise PredictionFormatError(
            f"{where}: missing field{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}"
        )
    if not isinstance(item["response"], str):
        raise PredictionFormatError(f"{where}: 'response' must be a string, got {type(item['response']).__name__}")
    label = str(item.get("label") or "").strip().lower()
    if benchmark == "pope" and label not in {"yes", "no"}:
        raise PredictionFormatError(f"{where}: POPE label {item.get('label')!r} is not 'yes' or 'no'")
    layer = item.get("layer_steer")
    known = {
        "id",
        "benchmark",
        "method",
        "alpha",
        "response",
        "prompt",
        "question",
        "category",
        "behaviour",
        "label",
        "subset",
        "image",
        "model",
        "layer_steer",
        "answer_nll",
    }
    return Prediction(
        id=str(item["id"]),
        benchmark=benchmark,
        method=str(item["method"]),
        alpha=_alpha(item["alpha"], where),
        response=item["response"],
        prompt=str(item.get("prompt") or ""),
        question=str(item.get("question") or ""),
        category=str(item.get("category") or ""),
        behaviour=str(item.get("behaviour") or ""),
        label=label,
        subset=str(item.get("subset") or ""),
        image=str(item.get("image") or ""),
        model=str(item.get("model") or ""),
        layer_steer=int(layer) if isinstance(layer, (int, float)) and not isinstance(layer, bool) else None,
        answer_nll=_answer_nll(item.get("answer_nll"), where),
        source=where,
        extra={k: v for k, v in item.items() if k not in known},
    )


def read_predictions(path: str | Path) -> list[Prediction]:
    """Validated rows of one prediction JSONL file (blank lines skipped).

    Raises :class:`PredictionFormatError` (naming file and line) for invalid JSON, missing fields, an
    unknown benchmark, or a file that mixes benchmarks; :class:`FileNotFoundError` for a missing file.
    """
    path = Path(path)
    if path.is_dir():
        raise PredictionFormatError(f"{path}: is a folder, not a prediction JSONL file")
    if not path.is_file():
        raise FileNotFoundError(f"prediction file not found: {path}")
    rows: list[Prediction] = []
    for where, item in iter_jsonl(path, error=PredictionFormatError):
        row = _parse_row(item, where)
        if rows and row.benchmark != rows[0].benchmark:
            raise PredictionFormatError(
                f"{where}: benchmark {row.benchmark!r} differs from {rows[0].benchmark!r} at {rows[0].source}; "
                "one prediction file holds one benchmark"
            )
        rows.append(row)
    if not rows:
        raise PredictionFormatError(f"{path}: no prediction rows")
    return rows


def group_runs(paths: list[str | Path]) -> list[Run]:
    """Read every file and group rows into runs, ordered by benchmark, method, alpha (None first), model, layer.

    The run key is (benchmark, method, alpha, model, layer_steer): predictions of two models (or two steering
    layers) with the same method and α are two runs, never merged; one model spelt two ways (a local folder
    as ``m/`` and ``m``: a file resumed by another version or with the path written otherwise) is one model
    (:func:`~l2s_lightning.models.names.model_key`), named as its first row spells it. A sample id repeated within a
    run is an error (it would be counted twice).
    """
    if not paths:
        raise L2SInputError("no prediction files given")
    runs: dict[tuple, Run] = {}
    seen: dict[tuple, dict[str, str]] = {}
    for path in paths:
        for row in read_predictions(path):
            key = (row.benchmark, row.method, row.alpha, model_key(row.model), row.layer_steer)
            run = runs.setdefault(key, Run(row.benchmark, row.method, row.alpha, [], [], row.model, row.layer_steer))
            ids = seen.setdefault(key, {})
            if row.id in ids:
                raise PredictionFormatError(
                    f"{row.source}: sample id {row.id!r} repeats {ids[row.id]} in run {run.label}"
                )
            ids[row.id] = row.source
            run.rows.append(row)
            if str(path) not in run.files:
                run.files.append(str(path))
    _set_details(list(runs.values()))
    order = {name: i for i, name in enumerate(BENCHMARKS)}
    return sorted(
        runs.values(),
        key=lambda r: (
            order[r.benchmark],
            r.method,
            r.alpha is not None,
            r.alpha or 0.0,
            r.model,
            r.layer_steer is not None,
            r.layer_steer or 0,
        ),
    )


def _set_details(runs: list[Run]) -> None:
    """Give runs that share (benchmark, method) a ``detail`` naming the model and/or layer where those differ."""
    by_method: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        by_method.setdefault((run.benchmark, run.method), []).append(run)
    for group in by_method.values():
        parts = []
        if len({model_key(r.model) for r in group}) > 1:
            parts.append(lambda r: f"model={r.model or '?'}")
        if len({r.layer_steer for r in group}) > 1:
            parts.append(lambda r: f"L*={'?' if r.layer_steer is None else r.layer_steer}")
        for run in group:
            run.detail = ", ".join(part(run) for part in parts)
