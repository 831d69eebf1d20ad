"""Extraction speed: prefix-shared truncated batches (ours) vs the reference style (batch 1, three full
forwards with all hidden states), on the same inputs, with the outputs checked equal.

    python bench/extraction.py --model smollm2 --n-samples 64          # CPU, real weights
    python bench/extraction.py --shape llava-1.5-7b --batch-size auto   # GPU, LLaVA-1.5-7B shape, bf16
    python bench/extraction.py --model smollm2 --suffix-tokens 20 --layer-context 29   # a template suffix

With ``--suffix-tokens N`` every prompt X+ / X- gets an N-token template suffix before the assistant turn
while h is read from the plain prompt (as the ``safety_paper`` templates do): ours encodes the tokens the
two prompts share once, and is also timed against the earlier way, a separate context pass over the whole
plain prompt (``ours/separate-context``).

One JSON line per figure on stdout; the figures are merged into bench/results/<machine>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import Bench, Timer  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_arguments(parser)
    parser.add_argument("--batch-size", default="auto", help="'auto', N, or a comma list of them (e.g. auto,16,32)")
    parser.add_argument("--layer-steer", type=int, default=None, help="L* (default 15, or half the layers if fewer)")
    parser.add_argument("--layer-context", type=int, default=None, help="L' (default: as L*)")
    parser.add_argument("--n-samples", type=int, default=None, help="samples timed for ours (default 256 GPU / 32 CPU)")
    parser.add_argument(
        "--n-reference", type=int, default=None, help="samples timed for the reference (default 32 GPU / 8 CPU)"
    )
    parser.add_argument("--completion-tokens", type=int, default=20, help="tokens of each completion (±3)")
    parser.add_argument(
        "--suffix-tokens",
        type=int,
        default=0,
        help="template suffix tokens after the question of X+ / X- (h read from the plain prompt)",
    )
    parser.add_argument(
        "--turn-tokens",
        type=int,
        default=5,
        help="with --suffix-tokens: tokens of the assistant-turn opening after question or suffix",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches (ours) / samples (reference) first")
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--no-reference", action="store_true", help="time ours only (no ratio, no check)")
    parser.add_argument(
        "--phases", action="store_true", help="time the phases of one batch of ours (vision, prompt, completions)"
    )
    parser.add_argument("--profile", action="store_true", help="torch.profiler table of one batch of ours (stderr)")
    parser.add_argument(
        "--compile-layers",
        action="store_true",
        help="torch.compile(dynamic=True) each block run, as ExtractionModule(compile=True) does",
    )
    parser.add_argument(
        "--no-compile-vision", action="store_true", help="with --compile-layers: leave the vision tower eager"
    )
    parser.add_argument(
        "--no-float32-check",
        action="store_true",
        help="skip the float32 truth (by default a bf16 model is also checked against itself in float32)",
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="for the FLOP floor (default 800 on CUDA)")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------- inputs


def make_samples(
    bench: Bench,
    n: int,
    text_tokens: int,
    completion_tokens: int,
    seed: int,
    suffix_tokens: int = 0,
    turn_tokens: int = 5,
) -> list[dict]:
    """Samples of ``prompt`` (image and question), ``positive`` / ``negative`` completions, and, with a
    suffix, ``steer_tail`` (suffix + assistant turn: the rest of X+ / X- before the completions) and
    ``context_tail`` (the assistant turn: the rest of the plain prompt h is read from)."""
    g = torch.Generator().manual_seed(seed)
    pool = common.pixel_values(bench, min(n, 16), g)
    turn = common.completion_ids(bench, turn_tokens, g)[:turn_tokens] if suffix_tokens else None
    suffix = common.completion_ids(bench, suffix_tokens, g)[:suffix_tokens] if suffix_tokens else None
    samples = []
    for i in range(n):
        sample = {
            "prompt": common.prompt_ids(bench, text_tokens, g),
            "positive": common.completion_ids(bench, completion_tokens, g),
            "negative": common.completion_ids(bench, completion_tokens, g),
            "pixels": None if pool is None else pool[i % pool.shape[0]],
        }
        if suffix is not None:
            sample |= {"steer_tail": torch.cat([suffix, turn]), "context_tail": turn}
        samples.append(sample)
    return samples


def steering_prompt(sample: dict) -> torch.Tensor:
    """X: the prompt, then the template suffix and assistant turn when there is a suffix."""
    return torch.cat([sample["prompt"], sample["steer_tail"]]) if "steer_tail" in sample else sample["prompt"]


def prompt_inputs(bench: Bench, rows: list[torch.Tensor], samples: list[dict]) -> dict[str, torch.Tensor]:
    """Left-padded prompt ``rows`` of a batch with the samples' pixels (CPU tensors)."""
    from l2s_lightning.prompts import left_pad

    ids, mask = left_pad(rows, bench.pad_token_id)
    prefix = {"input_ids": ids, "attention_mask": mask}
    if samples[0]["pixels"] is not None:
        prefix["pixel_values"] = torch.stack([s["pixels"] for s in samples])
    return prefix


def collate(bench: Bench, samples: list[dict], with_context: bool = True):
    """ContrastInputs of a batch (CPU tensors): left-padded prompts X, right-padded completions, and with a
    suffix the plain prompt's tail after the tokens it shares with X."""
    from l2s_lightning.extraction.forward import ContextTail, ContrastInputs
    from l2s_lightning.extraction.prompt_split import shared_positions_mask
    from l2s_lightning.prompts import right_pad

    prefix = prompt_inputs(bench, [steering_prompt(s) for s in samples], samples)
    completions, lengths = right_pad(
        [row for s in samples for row in (s["positive"], s["negative"])], bench.pad_token_id
    )
    inputs = ContrastInputs(prefix=prefix, completions=completions, completion_lengths=lengths)
    if with_context and "context_tail" in samples[0]:
        ids, tail_lengths = right_pad([s["context_tail"] for s in samples], bench.pad_token_id)
        shared = shared_positions_mask(prefix["attention_mask"], [s["prompt"].numel() for s in samples])
        inputs.context = ContextTail(ids, tail_lengths, shared)
    return inputs


def plain_prompt(sample: dict) -> torch.Tensor | None:
    """The prompt h is read from when it differs from X: the prompt, then the assistant turn."""
    return torch.cat([sample["prompt"], sample["context_tail"]]) if "context_tail" in sample else None


def on_device(bench: Bench, inputs):
    """``inputs`` with the prompt tensors on the bench's device in its dtype (the rest is moved by the forward)."""
    return dataclasses.replace(inputs, prefix=common.to_device(inputs.prefix, bench))


def single(bench: Bench, sample: dict, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """One un-padded prompt ``ids`` of ``sample`` with its pixels, on the bench's device."""
    prefix = {"input_ids": ids[None], "attention_mask": torch.ones_like(ids)[None]}
    if sample["pixels"] is not None:
        prefix["pixel_values"] = sample["pixels"][None]
    return common.to_device(prefix, bench)


# ----------------------------------------------------------------------------------------------- runs


def run_ours(bench: Bench, batches: list, warmup: int, layer_steer: int, layer_context: int):
    from l2s_lightning.extraction.forward import prefix_shared_features

    def step(inputs):
        return prefix_shared_features(bench.model, on_device(bench, inputs), layer_steer, layer_context)

    seconds, memory, outputs = timed(bench, batches, warmup, step)
    return seconds, memory, torch.cat([o[0] for o in outputs]).cpu(), torch.cat([o[1] for o in outputs]).cpu()


def collate_separate(bench: Bench, samples: list[dict]):
    """The earlier way's inputs of a batch: X with its completions, and the whole plain prompt (image
    included) for h."""
    return collate(bench, samples, with_context=False), prompt_inputs(
        bench, [plain_prompt(s) for s in samples], samples
    )


def run_separate_context(bench: Bench, batches: list, warmup: int, layer_steer: int, layer_context: int):
    """The earlier way with a template suffix: the suffixed prompt through blocks 0..L* (completions on its
    cache), and a second pass over the whole plain prompt, image included, through blocks 0..L' for h."""
    from l2s_lightning.extraction.forward import capture_layer_outputs, prefix_position_ids, prefix_shared_features
    from l2s_lightning.models.layers import truncated_decoder

    def step(batch):
        inputs, plain = batch
        _, steer = prefix_shared_features(bench.model, on_device(bench, inputs), layer_steer, layer_steer)
        plain = common.to_device(plain, bench)
        with torch.no_grad(), capture_layer_outputs(bench.model, [layer_context]) as captured:
            with truncated_decoder(bench.model, layer_context + 1):
                bench.model.base_model(**plain, position_ids=prefix_position_ids(bench.model, plain), use_cache=False)
        return captured[layer_context][:, -1].float(), steer

    seconds, memory, outputs = timed(bench, batches, warmup, step)
    return seconds, memory, torch.cat([o[0] for o in outputs]).cpu(), torch.cat([o[1] for o in outputs]).cpu()


def timed(bench: Bench, items: list, warmup: int, step) -> tuple[float, Any, list]:
    """Run ``step`` on the first ``warmup`` items untimed, then time it over all items; peak memory too."""
    for item in items[:warmup] or items[:1]:
        step(item)
    common.reset_peak(bench.device)
    with Timer(bench.device) as timer:
        outputs = [step(item) for item in items]
    return timer.seconds, common.peak_memory(bench.device), outputs


def run_reference(bench: Bench, samples: list[dict], warmup: int, layer_steer: int, layer_context: int):
    from l2s_lightning.extraction.forward import reference_features

    def step(sample):
        plain = plain_prompt(sample)
        return reference_features(
            bench.model,
            single(bench, sample, steering_prompt(sample)),
            sample["positive"].to(bench.device),
            sample["negative"].to(bench.device),
            layer_steer,
            layer_context,
            None if plain is None else single(bench, sample, plain),
        )

    seconds, memory, outputs = timed(bench, samples, warmup, step)
    return seconds, memory, torch.stack([o[0] for o in outputs]).cpu(), torch.stack([o[1] for o in outputs]).cpu()


def phases(bench: Bench, inputs, layer_steer: int, layer_context: int) -> dict[str, float]:
    """Milliseconds of one batch of ours, split with CUDA events (or wall clock) on module hooks: the
    vision tower + projector, the prompt through the truncated decoder, what lies between (the context
    tail's pass with a suffix, the cache repeat, masks), and the completions through the truncated decoder."""
    from l2s_lightning.extraction.forward import prefix_shared_features
    from l2s_lightning.models.layers import decoder_layers

    depth = max(layer_steer, layer_context) + 1
    layers = decoder_layers(bench.model)
    stamps: list[tuple[str, object]] = []

    def mark(name):
        if bench.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        else:
            import time

            event = time.perf_counter()
        stamps.append((name, event))

    handles = [
        layers[0].register_forward_pre_hook(lambda *_: mark("decoder_start")),
        layers[depth - 1].register_forward_hook(lambda *_: mark("decoder_end")),
    ]
    vision = getattr(getattr(bench.model, "model", None), "vision_tower", None)
    if vision is not None:
        handles.append(vision.register_forward_pre_hook(lambda *_: mark("vision_start")))
        projector = bench.model.model.multi_modal_projector
        handles.append(projector.register_forward_hook(lambda *_: mark("vision_end")))
    inputs = on_device(bench, inputs)
    common.sync(bench.device)
    try:
        mark("start")
        prefix_shared_features(bench.model, inputs, layer_steer, layer_context)
        mark("end")
    finally:
        for handle in handles:
            handle.remove()
    common.sync(bench.device)

    def ms(a, b):
        if bench.device.type == "cuda":
            return a.elapsed_time(b)
        return 1000 * (b - a)

    names = [n for n, _ in stamps]
    events = [e for _, e in stamps]
    find = lambda name, k=0: events[[i for i, n in enumerate(names) if n == name][k]]  # noqa: E731
    out = {"total_ms": ms(find("start"), find("end"))}
    if "vision_start" in names:
        out["vision_tower_and_projector_ms"] = ms(find("vision_start"), find("vision_end"))
    out["prompt_decoder_ms"] = ms(find("decoder_start", 0), find("decoder_end", 0))
    out["between_ms"] = ms(find("decoder_end", 0), find("decoder_start", -1))
    out["completions_decoder_ms"] = ms(find("decoder_start", -1), find("end"))
    out["other_ms"] = out["total_ms"] - sum(v for k, v in out.items() if k != "total_ms")
    return {k: round(v, 2) for k, v in out.items()}


def profile(bench: Bench, inputs, layer_steer: int, layer_context: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from l2s_lightning.extraction.forward import prefix_shared_features

    inputs = on_device(bench, inputs)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        prefix_shared_features(bench.model, inputs, layer_steer, layer_context)
        common.sync(bench.device)
    key = "cuda_time_total" if bench.device.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=25), file=sys.stderr)


def relative_error(x: torch.Tensor, truth: torch.Tensor) -> float:
    """||x - truth|| / ||truth|| over all rows (the norm-wise error of METHOD.md)."""
    return float(f"{((x.float() - truth.float()).norm() / truth.float().norm().clamp_min(1e-30)).item():.3g}")


def float32_truth(bench: Bench, samples: list[dict], layer_steer: int, layer_context: int):
    """(h, z) of the reference style with the model cast to float32 in place (bf16 weights are exact in
    float32, so this is the same function at higher precision), compiled blocks run eagerly. Leaves the
    model in float32: call it last."""
    bench.model.float()
    bench.dtype = torch.float32
    stance = (
        torch.compiler.set_stance("force_eager") if hasattr(torch.compiler, "set_stance") else contextlib.nullcontext()
    )
    with stance:
        _, _, h, z = run_reference(bench, samples, 0, layer_steer, layer_context)
    return h, z


def flops_per_sample(
    bench: Bench, prompt: float, completion: float, layer_steer: int, layer_context: int, context_tail: float = 0.0
) -> float:
    """Matrix FLOPs of ours for one sample: vision tower + projector over its tokens, blocks 0..max(L*, L')
    over the prompt X, 0..L' over the plain prompt's tail (if any), 0..L* over both completions; weights
    2·params·tokens, attention 4·D·q·k."""
    from l2s_lightning.models.layers import decoder_layers, hidden_size

    block_params = sum(p.numel() for p in decoder_layers(bench.model)[0].parameters())
    width = hidden_size(bench.model)
    passes = [  # (blocks, rows per sample, tokens per row, cached keys before them)
        (max(layer_steer, layer_context) + 1, 1, prompt, 0.0),
        (layer_context + 1, 1, context_tail, prompt),
        (layer_steer + 1, 2, completion, prompt),
    ]
    total = 0.0
    for blocks, rows, tokens, before in passes:
        queries = rows * tokens
        total += blocks * (2 * block_params * queries + 4 * width * queries * (before + tokens / 2))  # causal
    base = getattr(bench.model, "model", None)
    for name in ("vision_tower", "multi_modal_projector"):
        module = getattr(base, name, None)
        if module is not None:
            n_tokens = bench.image_tokens + 1
            total += 2 * sum(p.numel() for p in module.parameters()) * n_tokens
    return total


def agreement(bench: Bench, h: torch.Tensor, z: torch.Tensor, h_ref: torch.Tensor, z_ref: torch.Tensor) -> dict:
    """Largest absolute and relative (to the largest reference entry) differences, and whether they are
    within float32 (1e-3) or low-precision (6e-2) rounding."""
    diff_h, diff_z = (h - h_ref).abs().max().item(), (z - z_ref).abs().max().item()
    rel_h = diff_h / max(h_ref.abs().max().item(), 1e-12)
    rel_z = diff_z / max(z_ref.abs().max().item(), 1e-12)
    tolerance = 1e-3 if bench.dtype == torch.float32 else 6e-2
    return {
        "max_abs_diff_h": diff_h,
        "max_abs_diff_z": diff_z,
        "max_rel_diff_h": float(f"{rel_h:.3g}"),
        "max_rel_diff_z": float(f"{rel_z:.3g}"),
        "equal_within": tolerance,
        "equal": bool(max(rel_h, rel_z) <= tolerance),
    }


def check_against_float32(bench, samples, layer_steer, layer_context, h_ref, z_ref, ours_outputs, records) -> None:
    """Low-precision runs: 'equal' becomes 'ours is no further from the float32 truth than 2x the error of
    the reference style in the same dtype (+1e-3)', with the norm-wise errors recorded."""
    h32, z32 = float32_truth(bench, samples, layer_steer, layer_context)
    ref_h, ref_z = relative_error(h_ref, h32), relative_error(z_ref, z32)
    for record in records:
        if record.get("key") not in ours_outputs:
            continue
        h, z = ours_outputs[record["key"]]
        err_h, err_z = relative_error(h, h32), relative_error(z, z32)
        record |= {
            "float32_rel_err_h": err_h,
            "float32_rel_err_z": err_z,
            "reference_float32_rel_err_h": ref_h,
            "reference_float32_rel_err_z": ref_z,
            "equal_rule": "float32 error <= 2 x reference's + 1e-3",
            "equal": bool(err_h <= 2 * ref_h + 1e-3 and err_z <= 2 * ref_z + 1e-3),
        }
        common.emit(record | {"figure": "float32_check"})


# ----------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    bench = common.build(args)
    cuda = bench.device.type == "cuda"
    n_layers = bench.num_layers
    layer_steer = args.layer_steer if args.layer_steer is not None else min(15, n_layers // 2)
    layer_context = args.layer_context if args.layer_context is not None else layer_steer
    depth = max(layer_steer, layer_context) + 1
    n_samples = args.n_samples or (256 if cuda else 32)
    n_reference = 0 if args.no_reference else min(args.n_reference or (32 if cuda else 8), n_samples)
    samples = make_samples(
        bench, n_samples, args.text_tokens, args.completion_tokens, args.seed, args.suffix_tokens, args.turn_tokens
    )
    prompt_mean = sum(steering_prompt(s).numel() for s in samples) / n_samples
    completion_mean = sum(s["positive"].numel() + s["negative"].numel() for s in samples) / (2 * n_samples)
    tail_mean = sum(s["context_tail"].numel() for s in samples) / n_samples if args.suffix_tokens else 0.0
    prompt_max = max(steering_prompt(s).numel() for s in samples)
    completion_max = max(max(s["positive"].numel(), s["negative"].numel()) for s in samples)
    variant = ("+compiled-layers" + ("-text-only" if args.no_compile_vision else "")) if args.compile_layers else ""
    setting = f"+suffix{args.suffix_tokens}" if args.suffix_tokens else ""  # keys of suffixed runs stay apart
    base = {
        "bench": "extraction",
        "variant": variant or None,
        "shape": bench.name,
        "device": str(bench.device),
        "dtype": str(bench.dtype).removeprefix("torch."),
        "layer_steer": layer_steer,
        "layer_context": layer_context,
        "num_layers": n_layers,
        "prompt_tokens_mean": round(prompt_mean, 1),
        "image_tokens": bench.image_tokens,
        "completion_tokens_mean": round(completion_mean, 1),
    }
    if args.suffix_tokens:  # prompt tokens then include the suffix and the assistant turn after the question
        base |= {"suffix_tokens": args.suffix_tokens, "context_tail_tokens_mean": round(tail_mean, 1)}
    if not cuda:
        base["threads"] = torch.get_num_threads()
    records = []
    flops = flops_per_sample(bench, prompt_mean, completion_mean, layer_steer, layer_context, tail_mean)
    peak = args.peak_tflops if args.peak_tflops is not None else (800.0 if cuda else None)
    if peak:
        records.append(
            base
            | {
                "key": f"extraction/{bench.name}/flop_floor{setting}",
                "figure": "flop_floor_samples_per_s",
                "value": round(peak * 1e12 / flops, 1),
                "unit": "samples/s",
                "peak_tflops": peak,
                "gflop_per_sample": round(flops / 1e9, 1),
            }
        )
        common.emit(records[-1])

    reference = None
    ours_outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if n_reference:
        seconds, memory, h_ref, z_ref = run_reference(
            bench, samples[:n_reference], args.warmup, layer_steer, layer_context
        )
        reference = n_reference / seconds
        records.append(
            base
            | {
                "key": f"extraction/{bench.name}/reference{setting}",
                "variant": None,
                "figure": "reference_samples_per_s",
                "value": round(reference, 2),
                "unit": "samples/s",
                "batch_size": 1,
                "n_samples": n_reference,
                "seconds": round(seconds, 3),
            }
            | memory
        )
        common.emit(records[-1])

    from l2s_lightning.extraction.batch_size import auto_batch_size

    if args.compile_layers:  # after the reference, which stays the plain eager model
        from l2s_lightning.models.compile import compile_blocks

        compile_blocks(bench.model, depth, vision=not args.no_compile_vision)

    for request in [r.strip() for r in str(args.batch_size).split(",") if r.strip()]:
        if request == "auto":
            common.reset_peak(bench.device)
            batch = auto_batch_size(bench.model, prompt_max, completion_max, depth, max_batch=args.max_batch)
        else:
            batch = int(request)
        batch = max(1, min(batch, n_samples))
        batches = [collate(bench, samples[i : i + batch]) for i in range(0, n_samples, batch)]
        try:
            seconds, memory, h, z = run_ours(bench, batches, args.warmup, layer_steer, layer_context)
        except torch.OutOfMemoryError as err:
            common.emit(
                base
                | {
                    "key": f"extraction/{bench.name}/ours/bs{batch}{setting}{variant}",
                    "figure": "ours_samples_per_s",
                    "value": None,
                    "batch_size": batch,
                    "error": f"out of memory: {str(err)[:120]}",
                }
            )
            torch.cuda.empty_cache()
            continue
        ours = n_samples / seconds
        size = "auto" if request == "auto" else f"bs{batch}"
        key = f"extraction/{bench.name}/ours/{size}{setting}{variant}"
        record = (
            base
            | {
                "key": key,
                "figure": "ours_samples_per_s",
                "value": round(ours, 2),
                "unit": "samples/s",
                "batch_size": batch,
                "batch_size_request": request,
                "n_samples": n_samples,
                "seconds": round(seconds, 3),
            }
            | memory
        )
        if peak:
            record["fraction_of_flop_floor"] = round(ours * flops / (peak * 1e12), 3)
        if reference:
            ours_outputs[key] = (h[:n_reference], z[:n_reference])
            record |= {"ratio_vs_reference": round(ours / reference, 2)} | agreement(
                bench, h[:n_reference], z[:n_reference], h_ref, z_ref
            )
        records.append(record)
        common.emit(record)
        if args.suffix_tokens:
            separate = [collate_separate(bench, samples[i : i + batch]) for i in range(0, n_samples, batch)]
            seconds, memory, h_sep, z_sep = run_separate_context(
                bench, separate, args.warmup, layer_steer, layer_context
            )
            records.append(
                base
                | {
                    "key": f"extraction/{bench.name}/ours/separate-context/{size}{setting}{variant}",
                    "figure": "separate_context_samples_per_s",
                    "value": round(n_samples / seconds, 2),
                    "unit": "samples/s",
                    "batch_size": batch,
                    "n_samples": n_samples,
                    "seconds": round(seconds, 3),
                    "shared_prefix_speedup": round(ours * seconds / n_samples, 3),
                }
                | memory
                | agreement(bench, h, z, h_sep, z_sep)
            )
            common.emit(records[-1])
        if args.phases:
            phases(bench, batches[0], layer_steer, layer_context)  # warm
            common.emit(
                base
                | {"figure": "phases_of_one_batch", "batch_size": batch}
                | phases(bench, batches[0], layer_steer, layer_context)
            )
        if args.profile:
            profile(bench, batches[0], layer_steer, layer_context)
    if reference and bench.dtype != torch.float32 and not args.no_float32_check:
        check_against_float32(
            bench, samples[:n_reference], layer_steer, layer_context, h_ref, z_ref, ours_outputs, records
        )
    common.save(records, bench, args)
    failed = [r for r in records if r.get("equal") is False]
    if failed:
        print(f"# WARNING: ours and the reference differ beyond tolerance in {len(failed)} run(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
