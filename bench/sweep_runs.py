"""Several predict runs in one process, as ``l2s sweep`` (no steering, then an α grid) and ``l2s run`` (one
run per method) make them: each run loading its model vs one :class:`~l2s_lightning.models.loading.ModelCache`
shared by the runs.

Each run is ``l2s predict`` itself (``predict_main``: LightningCLI, ``PromptDataModule`` on MM-SafetyBench test
questions with TYPO images, ``SteeredGenerationModule`` steered by a random ``mean`` vector, the JSONL writer)
on a random-weight model of ``--shape`` saved to a folder (weights included, so that loading costs what it
costs). ``separate``: every run loads the model (and, with ``--compile``, compiles its decode step anew);
``shared``: the runs share one ``ModelCache``, so the model loads once and a compiled graph is reused by every
run of the same hook state (no steering / steering: α only scales a tensor). Figures per mode: seconds of each
run and of all, models loaded and the seconds spent loading them, decode graphs compiled; then the ratio of the totals and whether the two modes
wrote the same responses. Each mode compiles with inductor's caches empty.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import product  # noqa: E402
from generation_predict import cold_compiler_caches, random_mean_steerer, warm_up_compiler  # noqa: E402

MODES = ("separate", "shared")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    product.add_shape_arguments(parser)
    parser.add_argument("--alphas", default="1,2,4", help="comma list: the steered runs after the unsteered one")
    parser.add_argument(
        "--n-samples", type=int, default=None, help="about this many test questions (default 128 on CUDA, 26 on CPU)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="rows per batch (default 64 on CUDA, 8 on CPU)")
    parser.add_argument(
        "--new-tokens", type=int, default=None, help="tokens generated per row (default 64 on CUDA, 8 on CPU)"
    )
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=True, help="the compiled decode path"
    )
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (eager: dynamo only)")
    parser.add_argument("--vector-norm", type=float, default=100.0, help="norm of the random steering vector")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    return parser.parse_args(argv)


def predict_args(
    folder: Path, steerer: Path, work: Path, output: Path, alpha: float | None, args, cuda: bool
) -> list[str]:
    """The ``l2s predict`` arguments of one run (``alpha`` None: no steering)."""
    per_category = max(1, -(-args.n_samples // 13))
    argv = [
        f"--model.model.name_or_path={folder}",
        f"--model.model.dtype={args.dtype_name}",
        f"--model.max_new_tokens={args.new_tokens}",
        "--data.source=l2s_lightning.data.sources.MMSafetyBenchSource",
        f"--data.source.root={common.REPO / 'data' / 'mm_safetybench'}",
        "--data.source.question_field=Rephrased Question",
        "--data.templates=safety_paper",
        f"--data.split_file={work / 'split.json'}",
        f"--data.limit_per_category={json.dumps({'test': per_category})}",
        f"--data.batch_size={args.batch_size}",
        f"--writer.output={output}",
        "--trainer.enable_progress_bar=false",
        f"--trainer.accelerator={'gpu' if cuda else 'cpu'}",
        "--trainer.devices=1",
    ]
    if args.compile:
        argv += ["--model.compile=true", f"--model.compile_backend={args.backend}"]
    if alpha is None:
        return [*argv, "--model.method=none"]
    return [*argv, "--model.method=mean", f"--model.steerer={steerer}", f"--model.alpha={alpha}"]


def run_mode(
    mode: str, runs: list[float | None], folder: Path, steerer: Path, work: Path, args, cuda: bool
) -> tuple[dict, dict]:
    """The runs one after the other under ``mode``: (figures, {run name: {id: response}})."""
    from torch._dynamo.utils import counters

    from l2s_lightning.generation import module as generation_module
    from l2s_lightning.generation.cli import predict_main
    from l2s_lightning.generation.writer import read_jsonl
    from l2s_lightning.models import loading

    torch._dynamo.reset()
    counters.clear()
    loads, load_s = 0, 0.0
    load_model = loading.load_model

    def counted(spec):  # every load, by the module itself (separate) or by the cache (shared), timed
        nonlocal loads, load_s
        began = time.perf_counter()
        loaded = load_model(spec)
        loads, load_s = loads + 1, load_s + time.perf_counter() - began
        return loaded

    models = loading.ModelCache() if mode == "shared" else None
    seconds, responses = {}, {}
    loading.load_model = generation_module.load_model = counted
    try:
        start = time.perf_counter()
        for alpha in runs:
            name = "none" if alpha is None else f"alpha{alpha:g}"
            output = work / mode / f"{name}.jsonl"
            began = time.perf_counter()
            predict_main(predict_args(folder, steerer, work, output, alpha, args, cuda), models=models)
            seconds[name] = round(time.perf_counter() - began, 2)
            responses[name] = {row["id"]: row["response"] for row in read_jsonl(output)}
        total = time.perf_counter() - start
    finally:
        loading.load_model = generation_module.load_model = load_model
    figures = {
        "total_s": round(total, 2),
        "run_s": seconds,
        "loads": loads,
        "load_s": round(load_s, 2),
        "graphs": counters["stats"]["unique_graphs"],
        "rows": len(responses[next(iter(responses))]),
    }
    return figures, responses


def main(argv=None) -> int:
    args = parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if sorted(set(modes) - set(MODES)) or not modes:
        raise SystemExit(f"--modes {args.modes!r}: choose from {MODES}")
    bench = common.build(args)  # also sets --threads
    cuda = bench.device.type == "cuda"
    args.n_samples = args.n_samples or (128 if cuda else 26)
    args.batch_size = args.batch_size or (64 if cuda else 8)
    args.new_tokens = args.new_tokens or (64 if cuda else 8)
    args.dtype_name = str(bench.dtype).removeprefix("torch.")
    runs: list[float | None] = [None, *(float(a) for a in args.alphas.split(","))]
    work = Path(tempfile.mkdtemp(prefix="l2s-bench-sweep-"))
    folder = work / "model"
    spec, loaded = product.model_folder(bench, folder)
    started = time.perf_counter()
    loaded.model.save_pretrained(folder)  # the weights too: each separate run loads them
    save_s = time.perf_counter() - started
    steerer = random_mean_steerer(work / "steerer", spec, bench, min(15, bench.num_layers // 2), args.vector_norm)
    bench.model = loaded = None  # the runs load their own copies
    if cuda:
        torch.cuda.empty_cache()
    base = {
        "bench": "sweep_runs",
        "shape": bench.name,
        "device": str(bench.device),
        "dtype": args.dtype_name,
        "runs": ["none" if a is None else f"alpha{a:g}" for a in runs],
        "batch_size": args.batch_size,
        "new_tokens": args.new_tokens,
        "compile": args.compile,
        "backend": args.backend if args.compile else None,
        "threads": torch.get_num_threads(),
        "weights_save_s": round(save_s, 2),
    }
    if args.compile:
        warm_up_compiler(args.backend, bench.device)
    records, responses = [], {}
    for mode in modes:
        with cold_compiler_caches() if args.compile else contextlib.nullcontext():
            figures, responses[mode] = run_mode(mode, runs, folder, steerer, work, args, cuda)
        records.append(
            base
            | {
                "key": f"sweep_runs/{bench.name}/{'compiled' if args.compile else 'eager'}/{mode}",
                "figure": "total_s",
                "value": figures["total_s"],
                "unit": "s",
                "mode": mode,
            }
            | figures
        )
        common.emit(records[-1])
    if len(modes) == 2:
        separate, shared = (r for r in records if r["mode"] in MODES)
        same = all(responses["separate"][run] == responses["shared"][run] for run in responses["separate"])
        records.append(
            base
            | {
                "key": f"sweep_runs/{bench.name}/{'compiled' if args.compile else 'eager'}/shared_over_separate",
                "figure": "separate_over_shared_total",
                "value": round(separate["total_s"] / shared["total_s"], 3),
                "unit": "ratio (above 1: shared faster)",
                "same_responses": same,
                **{name: [shared[name], separate[name]] for name in ("loads", "load_s", "graphs")},
            }
        )
        common.emit(records[-1])
    return product.save_and_summarise(records, bench, args)


if __name__ == "__main__":
    sys.exit(main())
