"""The product's pieces on a bench shape, shared by the end-to-end benchmarks (``extraction_pipeline.py``,
``generation_predict.py``): a model folder with a real LLaVA-1.5 processor around the random model, the
MM-SafetyBench data module, and steady rates from per-batch time stamps."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import common


def add_shape_arguments(parser) -> None:
    """The arguments of a random-weight LLaVA shape run through the product, and of its results file."""
    parser.add_argument("--shape", choices=common.SHAPES, default="tiny")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--attn", default=None, help="attention implementation (sdpa, eager, ...)")
    parser.add_argument(
        "--text-layers", type=int, default=None, help="the shape's widths with this many decoder layers"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the main process (CPU)")
    parser.add_argument("--machine", default=None, help="results file name (default: from the device)")
    parser.add_argument("--results", default=None, help="results JSON path (default bench/results/<machine>.json)")
    parser.add_argument("--no-save", action="store_true", help="print the figures only")


def llava15_processor(image_size: int):
    """(tokenizer, processor): a locally trained tokenizer inside LLaVA-1.5's processor at ``image_size``."""
    from l2s_lightning.testing.tiny_models import LLAVA_TEMPLATE, build_tokenizer, llava_processor

    tokenizer = build_tokenizer(LLAVA_TEMPLATE, eos="</s>")
    return tokenizer, llava_processor(tokenizer, image_size=image_size)


def steady_rate(stamps: list[float], sizes: list[int], warmup: int) -> dict:
    """Samples/s between the end of batch ``warmup`` and the end of the last batch (earlier batches pay
    compilation and warm-up)."""
    warm = min(warmup, len(stamps) - 2)
    timed = sum(sizes[warm + 1 :])
    return {
        "samples_per_s": round(timed / (stamps[-1] - stamps[warm]), 2),
        "timed_samples": timed,
        "batches": len(stamps),
    }


def model_folder(bench: common.Bench, folder: Path):
    """Save the shape's config with a real LLaVA-1.5 processor (no weights) so that ``ModelSpec(folder)``
    resolves; point the random model's image token at the tokenizer's ``<image>``. Returns (spec, loaded)."""
    from l2s_lightning.models.loading import LoadedModel, ModelSpec

    tokenizer, processor = llava15_processor(bench.image_size)
    config = bench.model.config
    config.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config.save_pretrained(folder)
    processor.save_pretrained(folder)
    spec = ModelSpec(str(folder), dtype=str(bench.dtype).removeprefix("torch."))
    return spec, LoadedModel(model=bench.model, processor=processor, tokenizer=tokenizer, spec=spec, is_multimodal=True)


def make_datamodule(work: Path, n_samples: int, batch_size, workers: int, splits: tuple[str, ...] = ("train", "test")):
    """About ``n_samples`` MM-SafetyBench questions (rephrased, TYPO images, ``safety_paper`` templates) of
    ``splits``, the same number from each of the 13 files and each split."""
    from l2s_lightning.data.datamodule import PromptDataModule
    from l2s_lightning.data.sources import MMSafetyBenchSource

    per_split = max(1, math.ceil(n_samples / (13 * len(splits))))
    return PromptDataModule(
        source=MMSafetyBenchSource(
            root=str(common.REPO / "data" / "mm_safetybench"), question_field="Rephrased Question"
        ),
        templates="safety_paper",
        split_file=str(work / "split.json"),
        splits=list(splits),
        limit_per_category=per_split,
        batch_size=batch_size,
        num_workers=workers,
    )


def save_and_summarise(records: list[dict], bench: common.Bench, args) -> int:
    """Merge the records into the results file (unless ``--no-save``), print ``{key: value}`` of each on
    stderr, and return the script's exit status (0)."""
    common.save(records, bench, args)
    print(json.dumps({r["key"]: r["value"] for r in records}), file=sys.stderr)
    return 0
