"""Generation speed, plain vs steered (`add_steering`, per-row additive hook on block L*), for the dynamic
cache and for the static cache (+ torch.compile of the decode step, on GPU by default).

    python bench/generation.py --model smollm2 --batch-sizes 1,8 --new-tokens 32    # CPU, real weights
    python bench/generation.py --shape llava-1.5-7b --batch-sizes 1,16,64             # GPU

Every run generates exactly ``--new-tokens`` tokens per row (``min_new_tokens = max_new_tokens``, greedy);
tok/s = batch × new tokens / median wall time of one ``generate`` call (prefill included). Warm-up calls
(compilation included) are excluded; plain and steered calls alternate so that drift hits both alike. The
steering overhead is steered / plain − 1 of the same path and batch size; ``steered_changed_tokens`` (the
share of generated tokens that differ from the plain run) shows that the hook really acted.

On CPU (``--control``) each repeat also times a second plain call, and ``control_pct`` (plain again /
plain, summarised the same way) shows how far the paired estimator strays when nothing differs.

On the eager paths a second overhead figure, ``decode_step_overhead``, times single decode steps (one token
on the KV cache of the prompt, the cache rewound after each step) with and without the hook registered,
alternated step by step (``--step-pairs`` pairs). It measures exactly what steering adds per generated token
(the hook's dispatch, its Python and the add) with far less noise than whole ``generate`` calls, whose time
on a shared CPU moves by ±10 % from call to call.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import Bench, Timer  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_arguments(parser)
    parser.add_argument("--batch-sizes", default=None, help="comma list (default 1,16,64 on GPU, 1,8 on CPU)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--paths", default="dynamic,static", help="comma list of dynamic, static")
    parser.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="torch.compile of the static-cache decode step (auto: on GPU only)",
    )
    parser.add_argument(
        "--compile-dynamic",
        choices=("auto", "off"),
        default="auto",
        help="off: CompileConfig(dynamic=False), one graph specialised to each batch size (auto: torch's "
        "automatic dynamic shapes, which turn the second batch size's graph into a dynamic one)",
    )
    parser.add_argument("--compile-mode", default="reduce-overhead", help="torch.compile mode (CUDA graphs by default)")
    parser.add_argument(
        "--keep-hook-guard-skip",
        action="store_true",
        help="leave torch._dynamo.config.skip_nnmodule_hook_guards at its default (True): a hook added "
        "after a plain compiled run is then silently ignored",
    )
    parser.add_argument(
        "--prime-delta",
        choices=("auto", "on", "off"),
        default="auto",
        help="compute the hook's α·v eagerly before generate (auto: on for compiled runs, where computing "
        "it inside the CUDA-graph decode step fails: 'accessing tensor output of CUDAGraphs that has "
        "been overwritten')",
    )
    parser.add_argument("--layer", type=int, default=None, help="L* (default 15, or half the layers if fewer)")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--vector-norm", type=float, default=100.0, help="norm of the random steering vectors")
    parser.add_argument("--mode", default="generated", help="steered positions (add_steering mode)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls of each kind (default 5 GPU / 3 CPU)")
    parser.add_argument(
        "--dynamic-repeats", type=int, default=None, help="timed calls on the dynamic path (default: --repeats)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed calls of each kind first (default 2 compiled, else 1)"
    )
    parser.add_argument(
        "--control",
        choices=("auto", "on", "off"),
        default="auto",
        help="also time a second plain call in each repeat (A/A control: the estimator's noise floor; auto: on CPU)",
    )
    parser.add_argument(
        "--step-pairs",
        type=int,
        default=None,
        help="(plain, steered) decode-step pairs of the step-level overhead on eager paths (default 200 "
        "CPU / 100 GPU; 0: skip)",
    )
    return parser.parse_args(argv)


def make_inputs(bench: Bench, batch: int, text_tokens: int, seed: int) -> dict[str, torch.Tensor]:
    from l2s_lightning.prompts import left_pad

    g = torch.Generator().manual_seed(seed + batch)
    ids, mask = left_pad([common.prompt_ids(bench, text_tokens, g) for _ in range(batch)], bench.pad_token_id)
    inputs = {"input_ids": ids, "attention_mask": mask}
    pixels = common.pixel_values(bench, batch, g)
    if pixels is not None:
        inputs["pixel_values"] = pixels
    return common.to_device(inputs, bench)


def make_vectors(bench: Bench, batch: int, norm: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1000 + batch)
    vectors = torch.randn(batch, bench.hidden_size, generator=g)
    vectors = norm * vectors / vectors.norm(dim=-1, keepdim=True)
    return vectors.to(bench.device)


def generate_kwargs(
    bench: Bench, path: str, new_tokens: int, compile_on: bool, compile_mode: str, dynamic: bool | None = None
) -> dict:
    kwargs = {
        "max_new_tokens": new_tokens,
        "min_new_tokens": new_tokens,
        "do_sample": False,
        "pad_token_id": bench.pad_token_id,
    }
    if path == "static":
        kwargs["cache_implementation"] = "static"
        if compile_on:
            from transformers import CompileConfig

            config = CompileConfig(mode=compile_mode, dynamic=dynamic)
            if bench.device.type == "cpu":
                config._compile_all_devices = True
            kwargs["compile_config"] = config
        else:
            kwargs["disable_compile"] = True
    elif path == "dynamic":
        kwargs["disable_compile"] = True
    else:
        raise SystemExit(f"unknown path {path!r}: choose dynamic or static")
    return kwargs


class _Cache:
    """Stands for the KV cache object a decode step passes to the block (the hook only compares identity)."""


def hook_call_seconds(
    bench: Bench, vectors: torch.Tensor, alpha: float, mode: str, rounds: int = 5, calls: int = 500
) -> float:
    """Seconds of one eager call of the steering hook on a decode step's (B, 1, D) block output: the add
    and the Python around it (prefill check, counters), the median of ``rounds`` rounds. A bound on what
    steering adds per generated token that machine noise cannot blur (compiled decoding traces the add
    into the step's graph)."""
    from torch import nn

    from l2s_lightning.steering.hook import SteeringHook

    hook = SteeringHook(vectors, alpha, mode)
    block, cache = nn.Identity(), _Cache()
    hidden = torch.randn(vectors.shape[0], 1, vectors.shape[1], device=bench.device, dtype=bench.dtype)
    hook(block, (), {"past_key_values": cache}, hidden.expand(-1, 4, -1))  # the prefill
    per_round = []
    for _ in range(rounds):
        with Timer(bench.device) as timer:
            for _ in range(calls):
                hook(block, (), {"past_key_values": cache}, hidden)
        per_round.append(timer.seconds / calls)
    return common.median(per_round)


def new_cache(bench: Bench, path: str, max_len: int):
    """An empty KV cache of the model: static (``max_len`` positions) or dynamic."""
    from transformers import DynamicCache, StaticCache

    config = bench.model.config
    return StaticCache(config=config, max_cache_len=max_len) if path == "static" else DynamicCache(config=config)


def rewind_one_position(cache) -> None:
    """Forget the last position of a KV cache (``crop(-1)`` per layer; a static layer of a transformers release
    without ``crop`` has its write counter moved back instead: the next step overwrites that slot)."""
    for layer in cache.layers:
        if hasattr(layer, "crop"):
            layer.crop(-1)
        else:
            layer.cumulative_length.sub_(1)


def prefilled_step(bench: Bench, inputs: dict[str, torch.Tensor], path: str):
    """Prefill the prompt into a fresh ``path`` cache; returns ``step``, which runs one decode step (the
    greedy next token) on that cache, rewinds the cache by one position so that every call does the same
    work, and returns the step's logits."""
    from l2s_lightning.extraction.forward import cache_kwarg, continuation_position_ids, prefix_position_ids

    model, mask = bench.model, inputs["attention_mask"]
    prompt = mask.shape[1]
    cache = new_cache(bench, path, prompt + 4)
    key = cache_kwarg(model)
    positions = prefix_position_ids(model, inputs)
    with torch.no_grad():
        logits = model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1, **{key: cache}).logits
    step_inputs = {
        "input_ids": logits[:, -1:].argmax(-1),
        "attention_mask": torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1),
        "position_ids": continuation_position_ids(positions, mask, 1, repeats=1),
        "use_cache": True,
        key: cache,
    }

    def step() -> torch.Tensor:
        with torch.no_grad():
            out = model(**step_inputs).logits
        rewind_one_position(cache)
        if int(cache.get_seq_length()) != prompt:
            raise RuntimeError(f"rewinding the {path} cache left {int(cache.get_seq_length())} positions, not {prompt}")
        return out

    return step


def decode_step_overhead(
    bench: Bench,
    inputs: dict[str, torch.Tensor],
    path: str,
    layer: int,
    vectors: torch.Tensor,
    alpha: float,
    pairs: int,
    warmup: int = 5,
) -> dict:
    """Steering's cost per generated token on an eager path: one decode step timed with and without the
    hook, alternated step by step, on :func:`prefilled_step` (every step does the same work). The same
    :class:`SteeringHook` object is registered before each steered step and removed after it (outside the
    timed region: ``generate`` registers once per call), so that the plain steps run the block's hook-free
    fast path as an unsteered ``generate`` does; its tracker sees one prefill, then only decode steps on the
    same cache, as in ``generate``. Returns the median of the steered / plain time ratios of the pairs (order
    alternating), their interquartile range, the median step times, how many steps the hook steered and
    whether it changed the step's logits."""
    from l2s_lightning.models.layers import decoder_layers
    from l2s_lightning.steering.hook import SteeringHook

    step = prefilled_step(bench, inputs, path)
    hook = SteeringHook(vectors, alpha, "generated")
    block = decoder_layers(bench.model)[layer]

    def timed(steer: bool) -> tuple[float, torch.Tensor]:
        handle = hook.register(block) if steer else None  # registered outside the timed region, as generate
        try:  # registers once per call, not per token
            with Timer(bench.device) as timer:
                out = step()
        finally:
            if handle is not None:
                handle.remove()
        return timer.seconds, out

    timed(True)  # the hook's first call counts as the prefill (not steered); every later one is a decode step
    hook.steered_calls = 0
    changed = bool((timed(True)[1] != timed(False)[1]).any())
    for _ in range(warmup):
        timed(False), timed(True)
    ratios, plain_s, steered_s = [], [], []
    for r in range(pairs):
        times = {steer: timed(steer)[0] for steer in ((False, True) if r % 2 == 0 else (True, False))}
        plain_s.append(times[False])
        steered_s.append(times[True])
        ratios.append(times[True] / times[False])
    paired, iqr = paired_summary(ratios)
    return {
        "value": round(100 * (paired - 1), 2),
        "unit": "%",
        "steered_over_plain_paired": round(paired, 4),
        "pair_ratio_iqr": iqr,
        "step_pairs": pairs,
        "plain_step_ms": round(1e3 * common.median(plain_s), 3),
        "steered_step_ms": round(1e3 * common.median(steered_s), 3),
        "steered_steps": hook.steered_calls,
        "expected_steered_steps": 1 + warmup + pairs,
        "step_logits_changed": changed,
        "steering_active": changed and hook.steered_calls == 1 + warmup + pairs,
    }


def paired_summary(ratios: list[float]) -> tuple[float, list[float]]:
    """The median of paired time ratios and their interquartile range [q1, q3], rounded."""
    paired = common.median(ratios)
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [paired] * 3
    return paired, [round(quartiles[0], 4), round(quartiles[2], 4)]


def call_order(names: list[str], repeat: int) -> list[str]:
    """The order of the timed calls in repeat ``repeat``: two kinds alternate; three cycle through the six
    permutations (a balanced design: each kind comes first, second and last equally often)."""
    if len(names) == 2:
        return names if repeat % 2 == 0 else names[::-1]
    return list(itertools.permutations(names))[repeat % 6]


def control_figures(times: dict[str, list[float]]) -> dict:
    """The noise floor of the paired estimator: a second plain call timed in the same repeats (an A/A
    comparison), summarised exactly as steered / plain is."""
    paired, iqr = paired_summary([c / p for p, c in zip(times["plain"], times["control"])])
    return {
        "control_over_plain_paired": round(paired, 4),
        "control_pct": round(100 * (paired - 1), 2),
        "control_pair_ratio_iqr": iqr,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    bench = common.build(args)
    cuda = bench.device.type == "cuda"
    compile_on = args.compile == "on" or (args.compile == "auto" and cuda)
    if compile_on and not args.keep_hook_guard_skip:
        from torch import _dynamo

        # With the default (True), dynamo does not guard on a module's hooks while they are empty: once a
        # plain generate has compiled the decode step, a steering hook added later is never run there.
        _dynamo.config.skip_nnmodule_hook_guards = False
    from l2s_lightning.steering.hook import add_steering

    layer = args.layer if args.layer is not None else min(15, bench.num_layers // 2)
    batch_sizes = [int(b) for b in (args.batch_sizes or ("1,16,64" if cuda else "1,8")).split(",") if b.strip()]
    default_repeats = args.repeats or (5 if cuda else 3)
    step_pairs = args.step_pairs if args.step_pairs is not None else (100 if cuda else 200)
    control = args.control == "on" or (args.control == "auto" and not cuda)
    records = []
    for path in [p.strip() for p in args.paths.split(",") if p.strip()]:
        compiled = path == "static" and compile_on
        warmup = args.warmup if args.warmup is not None else (2 if compiled else 1)
        dynamic = False if args.compile_dynamic == "off" else None
        kwargs = generate_kwargs(bench, path, args.new_tokens, compile_on, args.compile_mode, dynamic)
        label = f"{path}+compile" if compiled else path
        if compiled and dynamic is False:
            label += "-static-shapes"
        repeats = (args.dynamic_repeats or default_repeats) if path == "dynamic" else default_repeats
        for batch in batch_sizes:
            inputs = make_inputs(bench, batch, args.text_tokens, args.seed)
            vectors = make_vectors(bench, batch, args.vector_norm, args.seed)
            prompt = inputs["input_ids"].shape[1]

            def plain():
                return bench.model.generate(**inputs, **kwargs)

            prime = args.prime_delta == "on" or (args.prime_delta == "auto" and compiled)

            def steered():
                with add_steering(bench.model, layer, vectors, args.alpha, mode=args.mode) as hook:
                    if prime and hasattr(hook, "_delta_for"):
                        hook._delta_for(
                            torch.empty(batch, 1, bench.hidden_size, device=bench.device, dtype=bench.dtype)
                        )
                    return bench.model.generate(**inputs, **kwargs)

            common.reset_peak(bench.device)
            first = {}
            try:
                for name, call in (("steered", steered), ("plain", plain)) * warmup:
                    with Timer(bench.device) as timer:
                        call()
                    first.setdefault(name, timer.seconds)
                calls = {"plain": plain, "steered": steered} | ({"control": plain} if control else {})
                times: dict[str, list[float]] = {name: [] for name in calls}
                outputs = {}
                for r in range(repeats):
                    for name in call_order(list(calls), r):
                        with Timer(bench.device) as timer:
                            outputs[name] = calls[name]()
                        times[name].append(timer.seconds)
            except torch.OutOfMemoryError as err:
                common.emit(
                    {
                        "bench": "generation",
                        "shape": bench.name,
                        "path": label,
                        "batch_size": batch,
                        "error": f"out of memory: {str(err)[:120]}",
                    }
                )
                torch.cuda.empty_cache()
                continue
            memory = common.peak_memory(bench.device)
            for name, out in outputs.items():
                if out.shape[1] - prompt != args.new_tokens:
                    raise RuntimeError(f"{name} generated {out.shape[1] - prompt} tokens, expected {args.new_tokens}")
            changed = (outputs["plain"][:, prompt:] != outputs["steered"][:, prompt:]).float().mean().item()
            base = {
                "bench": "generation",
                "shape": bench.name,
                "device": str(bench.device),
                "dtype": str(bench.dtype).removeprefix("torch."),
                "path": label,
                "batch_size": batch,
                "new_tokens": args.new_tokens,
                "prompt_tokens": prompt,
                "layer_steer": layer,
                "repeats": repeats,
            }
            if not cuda:
                base["threads"] = torch.get_num_threads()
            medians = {name: common.median(values) for name, values in times.items()}
            for name in ("plain", "steered"):
                record = (
                    base
                    | {
                        "key": f"generation/{bench.name}/{label}/bs{batch}/{name}",
                        "figure": f"{name}_tokens_per_s",
                        "value": round(batch * args.new_tokens / medians[name], 1),
                        "unit": "tok/s",
                        "median_s": round(medians[name], 4),
                        "times_s": [round(t, 4) for t in times[name]],
                        "first_call_s": round(first.get(name, float("nan")), 2),
                    }
                    | memory
                )
                records.append(record)
                common.emit(record)
            # the figure: median of the ratios of back-to-back (plain, steered) pairs, which cancels the machine's
            # drift between pairs; the ratio of the medians and of the minima are kept beside it
            hook_s = hook_call_seconds(bench, vectors, args.alpha, args.mode)
            paired, iqr = paired_summary([s / p for p, s in zip(times["plain"], times["steered"])])
            record = base | {
                "key": f"generation/{bench.name}/{label}/bs{batch}/steering_overhead",
                "figure": "steering_overhead_pct",
                "value": round(100 * (paired - 1), 2),
                "unit": "%",
                "steered_over_plain_paired": round(paired, 4),
                "pair_ratio_iqr": iqr,
                "steered_over_plain": round(medians["steered"] / medians["plain"], 4),
                "steered_over_plain_min": round(min(times["steered"]) / min(times["plain"]), 4),
                "hook_us_per_decode_step": round(1e6 * hook_s, 1),
                "hook_share_of_plain_pct": round(100 * hook_s * args.new_tokens / medians["plain"], 3),
                **(control_figures(times) if control else {}),
                "steered_changed_tokens": round(changed, 3),
                "steering_active": changed > 0,
                "alpha": args.alpha,
                "vector_norm": args.vector_norm,
                "mode": args.mode,
                "delta_primed": prime,
            }
            records.append(record)
            common.emit(record)
            if step_pairs > 0 and not compiled:
                key = f"generation/{bench.name}/{label}/bs{batch}/decode_step_overhead"
                try:
                    step = decode_step_overhead(bench, inputs, path, layer, vectors, args.alpha, step_pairs)
                except (RuntimeError, TypeError, ValueError) as err:  # e.g. another transformers' cache API
                    common.emit(base | {"key": key, "error": f"{type(err).__name__}: {str(err)[:200]}"})
                else:
                    record = (
                        base
                        | {
                            "key": key,
                            "figure": "decode_step_steering_overhead_pct",
                            "alpha": args.alpha,
                            "vector_norm": args.vector_norm,
                        }
                        | step
                    )
                    records.append(record)
                    common.emit(record)
                    if not step["steering_active"]:
                        print(
                            f"# WARNING: the step-level run did not steer as expected on path {label}, batch {batch}: "
                            f"{step}",
                            file=sys.stderr,
                        )
            if changed == 0:
                print(
                    f"# WARNING: steering changed no token on path {label}, batch {batch}: is the hook running?",
                    file=sys.stderr,
                )
    common.save(records, bench, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
