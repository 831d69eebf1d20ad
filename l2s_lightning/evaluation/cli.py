"""`l2s evaluate`: metrics, tables and plots of prediction JSONL files (``l2s predict``'s; MM-SafetyBench, POPE,
CHAIR; several methods and α values). A judge scores each answer; the metrics go to ``--out`` (metrics.json,
metrics.md, scores.jsonl, plots) and the table is printed. Command-line options override the YAML config.

    l2s evaluate preds/*.jsonl --out results/ [--config eval.yaml] [--judge http --judge-arg base_url=... ...]

The YAML format is in :mod:`l2s_lightning.evaluation.config`.
Exit codes: 0 success, 2 bad input or config (or a file that cannot be read or written), 3 judge failure
(unreachable, unparseable answers).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from l2s_lightning.cli_help import describe
from l2s_lightning.errors import L2SInputError, run_reporting_errors
from l2s_lightning.evaluation.config import EvalConfig, merge_judge
from l2s_lightning.evaluation.judges.registry import JUDGES

# The word that sets a list option back to its default (None) on the command line.
_RESET = {"unsafe_scenarios": "all", "ed_scenarios": "default"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="l2s evaluate",
        usage="%(prog)s [-h] PREDICTIONS.jsonl [...] --out DIR [--config FILE] [--OPTION VALUE ...]",
        description=describe(__doc__),
        epilog="Exit status: 0 success, 2 bad input or config, 3 a judge that could not score.",
    )
    parser.add_argument("predictions", nargs="+", help="prediction JSONL files")
    parser.add_argument(
        "--out", "-o", required=True, help="output folder (metrics.json, metrics.md, scores.jsonl, *.png)"
    )
    parser.add_argument("--config", "-c", help="evaluation config YAML (judge, safety, pope, chair sections)")
    parser.add_argument("--judge", help=f"judge name: {', '.join(sorted(JUDGES))} or module:Class (default: keyword)")
    parser.add_argument(
        "--judge-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="judge constructor argument (YAML value), repeatable: --judge-arg base_url=http://127.0.0.1:8000/v1",
    )
    parser.add_argument("--thresholds", type=float, nargs="+", help="t of each unsafe@t (default 0.5 0.7 0.9)")
    parser.add_argument(
        "--unsafe-scenarios",
        nargs="+",
        metavar="NAME",
        help="MM-SafetyBench scenarios (01, 10-Legal_Opinion, Legal_Opinion) or categories of the predictions "
        "pooled into the overall unsafe@t, or 'all' alone (default: every category present; the L2S release: "
        "01..12); 'all' among other names is the category of rows that have none",
    )
    parser.add_argument(
        "--ed-scenarios",
        nargs="+",
        metavar="NAME",
        help="scenarios or categories scored for the ED score, or 'default': 10 11 12, and the categories whose "
        "rows all carry an --ed-behaviours behaviour (what a config's list replaces)",
    )
    parser.add_argument(
        "--ed-behaviours",
        nargs="+",
        metavar="BEHAVIOUR",
        help="behaviours that steer toward expert deferral, for the default ED categories (default consult_expert)",
    )
    parser.add_argument("--no-quality", action="store_true", help="skip the judge's quality ratings")
    parser.add_argument("--pope-empty-as", choices=["yes", "no", "wrong"], help="how an empty POPE answer is read")
    parser.add_argument("--chair-instances", nargs="+", help="COCO instances_*.json files (CHAIR ground truth)")
    parser.add_argument("--chair-captions", nargs="+", help="COCO captions_*.json files (CHAIR ground truth)")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    parser.add_argument("--quiet", "-q", action="store_true", help="print no table")
    return parser


def _judge_kwargs(pairs: list[str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise L2SInputError(f"--judge-arg {pair!r}: expected KEY=VALUE")
        kwargs[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return kwargs


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """The YAML config (if any) with the command-line options applied on top."""
    data: dict[str, Any] = {}
    if args.config:
        data = EvalConfig.from_yaml(args.config).to_dict()
    judge = dict(data.get("judge") or {"name": "keyword", "kwargs": {}})
    data["judge"] = merge_judge(judge, {"name": args.judge or judge["name"], "kwargs": _judge_kwargs(args.judge_arg)})
    safety = data.setdefault("safety", {})
    options = {
        "thresholds": args.thresholds,
        "unsafe_scenarios": args.unsafe_scenarios,
        "ed_scenarios": args.ed_scenarios,
        "ed_behaviours": args.ed_behaviours,
    }
    for key, value in options.items():
        if value:
            safety[key] = None if [str(v).lower() for v in value] == [_RESET.get(key)] else value
    if args.no_quality:
        safety["quality"] = False
    if args.pope_empty_as:
        data.setdefault("pope", {})["empty_as"] = args.pope_empty_as
    chair = data.setdefault("chair", {})
    if args.chair_instances:
        chair["instances"] = args.chair_instances
    if args.chair_captions:
        chair["captions"] = args.chair_captions
    if args.no_plots:
        data["plots"] = False
    return EvalConfig.from_dict(data)


def evaluate_main(argv: list[str] | None = None) -> int:
    """Entry point of ``l2s evaluate``; returns the exit code."""
    from rich.console import Console

    from l2s_lightning.evaluation.report import print_report
    from l2s_lightning.stages import evaluate as evaluate_stage

    args = build_parser().parse_args(argv)

    def evaluate() -> int:
        results = evaluate_stage.run(args.predictions, args.out, config_from_args(args))
        if not args.quiet:
            console = Console()
            print_report(results, console)
            console.print(f"written to {args.out}/ (metrics.json, metrics.md, plots)", highlight=False)
        return 0

    return run_reporting_errors("l2s evaluate", evaluate)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(evaluate_main())
