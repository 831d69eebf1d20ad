"""Compiled generation end to end, as ``l2s predict --model.compile true`` runs it.

``bench/generation.py`` times ``generate`` on prompts of one width made up front, with one graph per batch
size. A predict run meets prompts of many widths (MM-SafetyBench questions sorted by length, with TYPO
images) and a last batch that is smaller than the others. This script runs ``Trainer.predict`` with
``SteeredGenerationModule(compile=True)``, ``PromptDataModule`` and the JSONL writer over the MM-SafetyBench
questions, once per ``--policies`` entry:

- ``ours``: the product's compiled path: the static cache sized before the first batch for the run's longest
  row (rounded up to ``static_cache_multiple``; grown for a wider batch, never shrunk) and kept between
  batches, graphs specialised to their shapes (``CompileConfig(dynamic=False)``), the last batch filled with
  copies of its last row (their outputs dropped);
- ``per-batch``: the same without sizing for the longest row (``static_cache_for_longest=False``): each batch
  grows the cache as far as its own width needs, a graph per size;
- ``per-call``: the earlier path (transformers' defaults): a static cache sized to each call, torch's
  automatic dynamic shapes, the last batch as it comes.

Figures per policy: decode graphs compiled (dynamo's count) and the batches that compiled one; tok/s over the
batches after the first that compiled nothing (``uncompiled_tok_per_s``: the graphs' own speed) and after
``--warmup`` batches (``steady_tok_per_s``: compilations in that span included); the first batch's seconds (it
compiles); the whole run's seconds; rows written (checked: one per question). A small function is compiled
before the first policy, so that the compiler's start-up in the process is in neither, and each policy
compiles with inductor's caches empty. Every row generates exactly ``--new-tokens`` tokens
(``min_new_tokens``), so the policies do the same work.
Greedy responses are compared between the policies (``same_responses``: the share that are equal).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import product  # noqa: E402

from l2s_lightning.generation.module import SteeredGenerationModule, decode_compile_config  # noqa: E402

POLICIES = ("ours", "per-batch", "per-call")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    product.add_shape_arguments(parser)
    parser.add_argument(
        "--n-samples", type=int, default=None, help="about this many questions (default 256 on CUDA, 40 on CPU)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="rows per batch (default 64 on CUDA, 8 on CPU)")
    parser.add_argument(
        "--new-tokens", type=int, default=None, help="tokens generated per row (default 128 on CUDA, 16 on CPU)"
    )
    parser.add_argument("--policies", default="ours,per-call", help=f"comma list of {', '.join(POLICIES)}")
    parser.add_argument(
        "--steer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="steer with a mean steerer holding a random vector (default) or generate plainly",
    )
    parser.add_argument("--vector-norm", type=float, default=100.0, help="norm of the random steering vector")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (eager: dynamo only)")
    parser.add_argument("--static-cache-multiple", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default 8 on CUDA, 1 on CPU)")
    parser.add_argument("--warmup", type=int, default=2, help="batches excluded from the steady rate")
    return parser.parse_args(argv)


class PerCallCompiled(SteeredGenerationModule):
    """The earlier compiled path: transformers' defaults (a static cache sized to each call, torch's automatic
    dynamic shapes, no filled last batch)."""

    @property
    def full_batches(self) -> bool:
        return False

    def _compiled_path_kwargs(self, batch_size: int, width: int) -> dict[str, Any]:
        return {
            "cache_implementation": "static",
            "compile_config": decode_compile_config(self.compile_backend, dynamic=None),
        }


class TokenClock(Callback):
    """Wall-clock time and generated tokens at the end of every predict batch (the responses are decoded on
    the host, so the batch is finished)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.tokens: list[int] = []
        self.graphs: list[int] = []  # graphs compiled so far, at the end of each batch

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not self.stamps:
            self.stamps.append(time.perf_counter())  # the first batch's start: its time includes compiling

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        from torch._dynamo.utils import counters

        self.stamps.append(time.perf_counter())
        self.tokens.append(sum(row["new_tokens"] for row in outputs))
        self.graphs.append(counters["stats"]["unique_graphs"])

    def rates(self, warmup: int) -> dict[str, float]:
        """tok/s after the first ``warmup`` batches (``steady``: compilations in that span included) and over
        the batches after the first that compiled nothing (``uncompiled``: the speed of the graphs themselves)."""
        warm = min(warmup, len(self.tokens) - 2) + 1  # stamps[warm] ends batch `warm - 1`
        steady = sum(self.tokens[warm:]) / (self.stamps[-1] - self.stamps[warm])
        quiet = [i for i in range(1, len(self.tokens)) if self.graphs[i] == self.graphs[i - 1]]
        seconds = sum(self.stamps[i + 1] - self.stamps[i] for i in quiet)
        uncompiled = sum(self.tokens[i] for i in quiet) / seconds if quiet else float("nan")
        return {
            "steady_tok_per_s": round(steady, 1),
            "uncompiled_tok_per_s": round(uncompiled, 1),
            "batches_compiling": len(self.tokens) - len(quiet),
        }


def random_mean_steerer(folder: Path, spec, bench: common.Bench, layer: int, norm: float) -> Path:
    """A ``mean`` steerer holding one seeded random vector of ``norm`` (the same compute as a fitted one)."""
    from l2s_lightning.steerer import Steerer

    vector = torch.randn(bench.hidden_size, generator=torch.Generator().manual_seed(0))
    return Steerer(
        method="mean",
        model=spec.display_name,
        layer_steer=layer,
        layer_context=layer,
        hidden_size=bench.hidden_size,
        tensors={"mean": norm * vector / vector.norm()},
    ).save(folder)


def run_policy(
    policy: str, loaded, spec, steerer: Path | None, work: Path, args, device: torch.device
) -> tuple[dict, list[dict]]:
    """One predict run under ``policy``: its figures and its rows."""
    from torch._dynamo.utils import counters

    from l2s_lightning.generation.writer import JsonlPredictionWriter, read_jsonl

    torch._dynamo.reset()
    counters.clear()
    if hasattr(loaded.model, "_previous_max_cache_length"):  # transformers' cache size memory of the last call
        del loaded.model._previous_max_cache_length
    cls = PerCallCompiled if policy == "per-call" else SteeredGenerationModule
    module = cls(
        spec,
        method="mean" if steerer else "none",
        steerer=str(steerer) if steerer else None,
        alpha=args.alpha,
        max_new_tokens=args.new_tokens,
        compile=True,
        compile_backend=args.backend,
        static_cache_multiple=args.static_cache_multiple,
        static_cache_for_longest=policy != "per-batch",
    )
    module.generation_kwargs["min_new_tokens"] = args.new_tokens
    module.loaded = loaded  # the random model built on the device
    data = product.make_datamodule(work, args.n_samples, args.batch_size, args.workers, splits=("test",))
    output = work / f"{policy}.jsonl"
    clock = TokenClock()
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[JsonlPredictionWriter(str(output)), clock],
    )
    start = time.perf_counter()
    trainer.predict(module, datamodule=data, return_predictions=False)
    total = time.perf_counter() - start
    rows = read_jsonl(output)
    expected = len(data.rows())
    if len(rows) != expected or len({row["id"] for row in rows}) != expected:
        raise SystemExit(f"{policy}: {output} holds {len(rows)} rows, expected {expected} distinct ones")
    figures = {
        "graphs": counters["stats"]["unique_graphs"],
        "first_batch_s": round(clock.stamps[1] - clock.stamps[0], 2),
        **clock.rates(args.warmup),
        "total_s": round(total, 2),
        "rows": len(rows),
        "batches": len(clock.tokens),
        "prompt_tokens": [min(r["prompt_tokens"] for r in rows), max(r["prompt_tokens"] for r in rows)],
        "static_cache_length": module.static_cache_length or None,
    }
    return figures, rows


def warm_up_compiler(backend: str, device: torch.device) -> None:
    """Compile a small function first: the compiler's one-time start-up in this process is then paid by no
    policy's first batch."""
    torch._dynamo.reset()
    torch.compile(lambda x: torch.nn.functional.silu(x) * 2 + 1, backend=backend)(torch.ones(64, device=device))
    common.sync(device)


def cold_compiler_caches():
    """Inductor's caches, on disk and in memory, empty for the block and dropped after it: each policy compiles
    from scratch, neither reusing the kernels of the policy before it nor those of an earlier run."""
    from torch._inductor import utils

    fresh = getattr(utils, "fresh_cache", None) or utils.fresh_inductor_cache
    return fresh()


def main(argv=None) -> int:
    args = parse_args(argv)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = sorted(set(policies) - set(POLICIES))
    if unknown or not policies:
        raise SystemExit(f"unknown policies {unknown}: choose from {POLICIES}")
    bench = common.build(args)  # also sets --threads
    device = bench.device
    cuda = device.type == "cuda"
    args.n_samples = args.n_samples or (256 if cuda else 40)
    args.batch_size = args.batch_size or (64 if cuda else 8)
    args.new_tokens = args.new_tokens or (128 if cuda else 16)
    args.workers = (8 if cuda else 1) if args.workers is None else args.workers
    layer = min(15, bench.num_layers // 2)
    work = Path(tempfile.mkdtemp(prefix="l2s-bench-"))
    spec, loaded = product.model_folder(bench, work / "model")
    steerer = random_mean_steerer(work / "steerer", spec, bench, layer, args.vector_norm) if args.steer else None
    base = {
        "bench": "generation_predict",
        "shape": bench.name,
        "device": str(device),
        "dtype": str(bench.dtype).removeprefix("torch."),
        "batch_size": args.batch_size,
        "new_tokens": args.new_tokens,
        "steered": bool(steerer),
        "layer_steer": layer,
        "backend": args.backend,
        "static_cache_multiple": args.static_cache_multiple,
        "workers": args.workers,
        "threads": torch.get_num_threads(),
    }
    warm_up_compiler(args.backend, device)
    records, responses = [], {}
    for policy in policies:
        with cold_compiler_caches():
            figures, rows = run_policy(policy, loaded, spec, steerer, work, args, device)
        responses[policy] = {row["id"]: row["response"] for row in rows}
        records.append(
            base
            | {
                "key": f"generation_predict/{bench.name}/{policy}",
                "figure": "steady_tok_per_s",
                "value": figures["steady_tok_per_s"],
                "unit": "tok/s",
                "policy": policy,
            }
            | figures
        )
        common.emit(records[-1])
    by_policy = {r["policy"]: r for r in records}
    for other in [p for p in policies if p != "ours" and "ours" in by_policy]:
        ours, them = by_policy["ours"], by_policy[other]
        same = sum(responses["ours"][i] == responses[other][i] for i in responses["ours"]) / len(responses["ours"])
        records.append(
            base
            | {
                "key": f"generation_predict/{bench.name}/ours_over_{other}",
                "figure": f"ours_over_{other}",
                "value": {
                    "total_s": round(them["total_s"] / ours["total_s"], 3),
                    **{
                        name: round(ours[name] / them[name], 3) for name in ("steady_tok_per_s", "uncompiled_tok_per_s")
                    },
                    "graphs": [ours["graphs"], them["graphs"]],
                },
                "unit": "ratio (above 1: ours faster)",
                "same_responses": round(same, 3),
            }
        )
        common.emit(records[-1])
    return product.save_and_summarise(records, bench, args)


if __name__ == "__main__":
    sys.exit(main())
