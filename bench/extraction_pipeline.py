"""Extraction end to end, as ``l2s extract`` runs it, against the forward alone on the same batches.

``bench/extraction.py`` times ``prefix_shared_features`` on token ids made up front. The product also
renders each MM-SafetyBench TYPO image (1024 px wide), runs the chat template, the tokenizer and the CLIP
image processor (resize + crop + normalise to 336 px at the LLaVA-1.5 shape), moves the batch to the
device and writes an HDF5 part file per batch. This script runs the real pipeline (``Trainer.predict`` with
``ExtractionModule``, ``PromptDataModule`` and ``HDF5FeatureWriter``) on the MM-SafetyBench questions in
``data/`` for each ``--workers`` setting, and times the forward alone over the same encoded batches:

- ``pipeline/workers<N>``: samples/s after the first ``--warmup`` batches; with N = 0 every batch is
  rendered and encoded in the main process, in series with the forward (as before batches were encoded
  by the loader); with N > 0 the loader's workers render and encode while the device computes.
- ``forward_only``: ``ExtractionModule.features`` over the pre-encoded batches, the ceiling of the pipeline.
- ``pipeline_over_forward``: the pipeline's share of that ceiling (1.0: preparing and writing cost nothing).

The model is a random-weight LLaVA of ``--shape`` (as in ``common.build_shape``) with a real LLaVA-1.5
processor at its image size and a locally trained tokenizer; features.h5 is checked to hold every sample.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import product  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    product.add_shape_arguments(parser)
    parser.add_argument(
        "--n-samples", type=int, default=None, help="about this many questions (default 512 on CUDA, 64 on CPU)"
    )
    parser.add_argument("--batch-size", default="auto", help="an int or auto (from free accelerator memory)")
    parser.add_argument("--workers", default="0,4", help="comma list of DataLoader worker counts")
    parser.add_argument(
        "--encode-in-step-workers",
        type=int,
        default=None,
        help="also run the earlier path: images loaded by N workers, batches encoded inside predict_step "
        "(default: the largest of --workers; -1: skip)",
    )
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="time rendering + encoding alone (no model is built: any shape runs on a CPU)",
    )
    parser.add_argument("--warmup", type=int, default=2, help="batches excluded from the timing")
    parser.add_argument("--layer-steer", type=int, default=None)
    parser.add_argument("--layer-context", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="ExtractionModule(compile=True)")
    return parser.parse_args(argv)


class BatchClock(Callback):
    """Wall-clock time at the end of every predict batch (no device sync: the writer's copy of the
    features to the host already waits for the batch)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.sizes: list[int] = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.stamps.append(time.perf_counter())
        self.sizes.append(len(outputs["sample_id"]))


def run_pipeline(module, work: Path, args, workers: int, device: torch.device, encode_in_step: bool = False) -> dict:
    from l2s_lightning.data.datamodule import collate_items
    from l2s_lightning.extraction.writer import HDF5FeatureWriter, read_rows

    data = product.make_datamodule(work, args.n_samples, args.batch_size, workers)
    if encode_in_step:  # the loader hands over lists of rows; ExtractionModule.predict_step encodes them
        data.collate_fn = lambda: collate_items
    output = work / f"features-w{workers}{'-step' if encode_in_step else ''}.h5"
    writer = HDF5FeatureWriter(str(output))
    clock = BatchClock()
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[writer, clock],
    )
    trainer.predict(module, datamodule=data, return_predictions=False)
    common.sync(device)
    rows = read_rows(output)
    expected = len(data.rows())
    if len(rows["sample_id"]) != expected:
        raise SystemExit(f"features.h5 holds {len(rows['sample_id'])} rows, expected {expected}")
    return product.steady_rate(clock.stamps, clock.sizes, args.warmup) | {
        "batch_size": max(clock.sizes),
        "samples": expected,
    }


def prepare(encoder, args, trainer=None) -> tuple[list, dict]:
    """The encoded batches of the data (rendered and encoded in this process, one thread) and the time
    that took per sample."""
    data = product.make_datamodule(Path(tempfile.mkdtemp()), args.n_samples, args.batch_size, 0)
    data.trainer = trainer  # for the auto batch size (the module's memory estimate)
    data.collate_fn = lambda: encoder
    data.rows()  # read the question files, split and templates outside the timing
    start = time.perf_counter()
    batches = list(data.predict_dataloader())
    seconds = time.perf_counter() - start
    samples = sum(len(b.items) for b in batches)
    return batches, {
        "prepare_ms_per_sample": round(1000 * seconds / samples, 2),
        "samples": samples,
        "cores_needed_per_100_samples_per_s": round(seconds / samples * 100, 2),
    }


def run_forward_only(module, args, device: torch.device) -> tuple[dict, dict]:
    """``module.features`` over the batches of the same data, encoded up front (uploaded in the step, as in
    the pipeline); and the encoding cost."""
    batches, cost = prepare(module.encoder, args, module.trainer)
    stamps = []
    for batch in batches:
        module.features(batch)
        common.sync(device)
        stamps.append(time.perf_counter())
    return product.steady_rate(stamps, [len(b.items) for b in batches], args.warmup), cost


def prepare_only(args) -> int:
    """Rendering + encoding cost per sample at the shape's image size, no model."""
    from l2s_lightning.extraction.encoding import ContrastEncoder
    from l2s_lightning.models.loading import ModelSpec

    vision = common.llava_config(args.shape).vision_config
    tokenizer, processor = product.llava15_processor(vision.image_size)
    encoder = ContrastEncoder(processor, tokenizer, ModelSpec("bench"))
    args.batch_size = 16 if args.batch_size == "auto" else args.batch_size
    _, cost = prepare(encoder, args)
    record = {
        "bench": "extraction_pipeline",
        "shape": args.shape,
        "image_size": vision.image_size,
        "device": "cpu",
        "key": f"extraction_pipeline/{args.shape}/prepare_cost",
        "figure": "prepare_ms_per_sample",
        "value": cost["prepare_ms_per_sample"],
        "unit": "ms/sample (one core)",
    } | cost
    common.emit(record)
    machine = args.machine or common.machine_name(torch.device("cpu"))
    bench = argparse.Namespace(device=torch.device("cpu"))
    common.save([record], bench, argparse.Namespace(no_save=args.no_save, machine=machine, results=args.results))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size != "auto":
        args.batch_size = int(args.batch_size)
    if args.prepare_only:
        args.n_samples = args.n_samples or 64
        return prepare_only(args)
    bench = common.build(args)
    device = bench.device
    args.n_samples = args.n_samples or (512 if device.type == "cuda" else 64)
    layer_steer = args.layer_steer if args.layer_steer is not None else min(15, bench.num_layers // 2)
    layer_context = args.layer_context if args.layer_context is not None else layer_steer

    from l2s_lightning.extraction.module import ExtractionModule

    work = Path(tempfile.mkdtemp(prefix="l2s-bench-"))
    spec, loaded = product.model_folder(bench, work / "model")
    module = ExtractionModule(spec, layer_steer=layer_steer, layer_context=layer_context, compile=args.compile)
    module.loaded = loaded  # the random model built on the device (configure_model keeps a loaded model)
    variant = "+compile" if args.compile else ""
    base = {
        "bench": "extraction_pipeline",
        "shape": bench.name,
        "device": str(device),
        "dtype": str(bench.dtype).removeprefix("torch."),
        "layer_steer": layer_steer,
        "layer_context": layer_context,
        "image_tokens": bench.image_tokens,
        "image_size": bench.image_size,
        "variant": variant or None,
        "threads": torch.get_num_threads(),
    }
    records = []
    pipeline = {}
    for workers in [int(w) for w in args.workers.split(",") if w.strip()]:
        figures = run_pipeline(module, work, args, workers, device)
        pipeline[workers] = figures["samples_per_s"]
        records.append(
            base
            | {
                "key": f"extraction_pipeline/{bench.name}{variant}/workers{workers}",
                "figure": "pipeline_samples_per_s",
                "value": figures["samples_per_s"],
                "unit": "samples/s",
                "workers": workers,
            }
            | figures
        )
        common.emit(records[-1])
    step_workers = max(pipeline) if args.encode_in_step_workers is None else args.encode_in_step_workers
    if step_workers >= 0:
        figures = run_pipeline(module, work, args, step_workers, device, encode_in_step=True)
        pipeline[f"encode_in_step_workers{step_workers}"] = figures["samples_per_s"]
        records.append(
            base
            | {
                "key": f"extraction_pipeline/{bench.name}{variant}/encode_in_step_workers{step_workers}",
                "figure": "pipeline_samples_per_s",
                "value": figures["samples_per_s"],
                "unit": "samples/s",
                "workers": step_workers,
                "encode": "in predict_step (the earlier path)",
            }
            | figures
        )
        common.emit(records[-1])
    forward, cost = run_forward_only(module, args, device)
    records.append(
        base
        | {
            "key": f"extraction_pipeline/{bench.name}{variant}/forward_only",
            "figure": "forward_only_samples_per_s",
            "value": forward["samples_per_s"],
            "unit": "samples/s",
        }
        | forward
    )
    common.emit(records[-1])
    records.append(
        base
        | {
            "key": f"extraction_pipeline/{bench.name}/prepare_cost",
            "figure": "prepare_ms_per_sample",
            "value": cost["prepare_ms_per_sample"],
            "unit": "ms/sample (one core)",
        }
        | cost
    )
    common.emit(records[-1])
    ratios = {
        (f"workers{w}" if isinstance(w, int) else w): round(v / forward["samples_per_s"], 3)
        for w, v in pipeline.items()
    }
    records.append(
        base
        | {
            "key": f"extraction_pipeline/{bench.name}{variant}/pipeline_over_forward",
            "figure": "pipeline_over_forward",
            "value": ratios,
            "unit": "ratio",
        }
    )
    common.emit(records[-1])
    common.save(records, bench, args)
    print(
        json.dumps({"pipeline_samples_per_s": pipeline, "forward_only": forward["samples_per_s"], "ratios": ratios}),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
