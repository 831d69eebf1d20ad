"""`load_model` / `load_config` (models/loading.py) and the decoder-layer layout of each family (models/layers.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from l2s_lightning.models.layers import decoder_layers, hidden_size, num_decoder_layers, validate_layers
from l2s_lightning.models.loading import ModelSpec, gguf_cache_folder, load_config, load_model

# family → (model class, decoder block class, multimodal)
FAMILIES = {
    "llama": ("LlamaForCausalLM", "LlamaDecoderLayer", False),
    "llava": ("LlavaForConditionalGeneration", "LlamaDecoderLayer", True),
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLDecoderLayer", True),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLDecoderLayer", True),
}


def test_loaded_model_is_frozen_in_eval_mode_dtype_and_device(tiny_llama_dir: Path) -> None:
    loaded = load_model(ModelSpec(str(tiny_llama_dir), dtype="bfloat16", device="cpu"))
    model = loaded.model
    parameters = list(model.parameters())
    assert parameters and all(p.dtype == torch.bfloat16 for p in parameters)
    assert not any(p.requires_grad for p in parameters)
    assert not any(module.training for module in model.modules())
    assert {p.device.type for p in parameters} == {"cpu"}
    assert loaded.tokenizer.padding_side == "left" and loaded.tokenizer.pad_token is not None
    # bfloat16 weights still run a forward (no dtype mismatch inside the model)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[5, 6, 7]]))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits.float()).all()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_layout_and_auto_class(family: str, request: pytest.FixtureRequest) -> None:
    """A local folder loads through AutoModelForImageTextToText (with a processor) for MLLM configs and
    AutoModelForCausalLM (tokenizer only) otherwise; the decoder blocks are found for every family."""
    model_class, block_class, multimodal = FAMILIES[family]
    loaded = load_model(ModelSpec(str(request.getfixturevalue(f"tiny_{family}_dir"))))
    model = loaded.model
    assert type(model).__name__ == model_class
    assert loaded.is_multimodal is multimodal and (loaded.processor is not None) is multimodal
    layers = decoder_layers(model)
    assert isinstance(layers, nn.ModuleList) and len(layers) == num_decoder_layers(model) == loaded.num_layers == 4
    assert {type(block).__name__ for block in layers} == {block_class}
    assert hidden_size(model) == loaded.hidden_size == 64
    validate_layers(model, layer_steer=3, layer_context=0)
    with pytest.raises(ValueError, match=f"layer_steer=4 is out of range: model {model_class} has 4 decoder layers"):
        validate_layers(model, layer_steer=4)


def test_kind_choice_and_errors(tiny_llama_dir: Path, tiny_llava_dir: Path) -> None:
    forced = load_model(ModelSpec(str(tiny_llama_dir), kind="causal-lm"))
    assert type(forced.model).__name__ == "LlamaForCausalLM" and forced.processor is None
    with pytest.raises(ValueError, match="kind='image-text' but its config \\(LlamaConfig\\) is not an image-text"):
        load_model(ModelSpec(str(tiny_llama_dir), kind="image-text"))
    with pytest.raises(ValueError, match="kind='video' must be"):
        load_model(ModelSpec(str(tiny_llava_dir), kind="video"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dtype='int3' is not one of"):
        load_model(ModelSpec(str(tiny_llava_dir), dtype="int3"))


def test_unknown_decoder_layout_is_a_clear_error() -> None:
    """GPT-2's ``transformer.h`` is found (tests/test_api.py); blocks under another name are an error that says how
    to name them."""
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0)
    )
    assert num_decoder_layers(gpt2) == 2
    wrapper = nn.Module()
    wrapper.blocks = nn.ModuleList([nn.Linear(2, 2)])
    for probe in (decoder_layers, num_decoder_layers):
        with pytest.raises(ValueError, match="cannot find the decoder layers of Module: .*set_decoder_layers"):
            probe(wrapper)
    with pytest.raises(ValueError, match="cannot find the decoder layers of Linear"):
        decoder_layers(nn.Linear(2, 2))


def test_load_config_of_gguf_reads_the_cached_copy(
    tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the safetensors copy of a GGUF file cached, only its config.json is read (no dequantisation)."""
    import transformers

    folder = tmp_path / "gguf_model"
    folder.mkdir()
    (folder / "model.Q4.gguf").write_bytes(b"GGUF not really")
    spec = ModelSpec(str(folder), gguf_file="model.Q4.gguf", cache_dir=str(tmp_path / "cache"))
    cached = gguf_cache_folder(str(folder), "model.Q4.gguf", spec.cache_dir)
    cached.mkdir(parents=True)
    shutil.copy(tiny_llama_dir / "config.json", cached / "config.json")
    (cached / "model.safetensors").write_bytes(b"")

    def refuse(*_args, **_kwargs):
        raise AssertionError("the GGUF file was loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    config = load_config(spec)
    assert (config.num_hidden_layers, config.hidden_size) == (4, 64)
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        load_config(ModelSpec(str(folder), gguf_file="missing.gguf", cache_dir=spec.cache_dir))


def test_model_cache_keeps_one_model_per_spec_and_reloads_on_change(tiny_llama_dir, tiny_llava_dir):
    """The same spec gives the kept model; another spec, or weights converted in place, load anew (one kept)."""
    import weakref

    from l2s_lightning.models.loading import ModelCache

    cache = ModelCache()
    first = cache.get(ModelSpec(str(tiny_llama_dir), device="cpu"))
    assert cache.get(ModelSpec(str(tiny_llama_dir), device="cpu")) is first and cache.loads == 1
    first.model.to(torch.bfloat16)  # as a bf16-true Trainer would: no longer the spec's float32
    second = cache.get(ModelSpec(str(tiny_llama_dir), device="cpu"))
    assert second is not first and next(second.model.parameters()).dtype == torch.float32 and cache.loads == 2
    other = cache.get(ModelSpec(str(tiny_llava_dir)))
    assert other.is_multimodal and cache.loads == 3
    assert (
        cache.get(ModelSpec(str(tiny_llama_dir), device="cpu")) is not second and cache.loads == 4
    )  # only the last is kept
    kept = weakref.ref(cache.get(ModelSpec(str(tiny_llama_dir), device="cpu")).model)
    cache.clear()
    assert kept() is None  # freed, not only forgotten


def test_gguf_copy_made_by_another_process_meanwhile_is_kept(
    tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes dequantising the same GGUF file (DDP ranks, two jobs): each writes its own temporary
    folder; the one that finishes second keeps the first one's copy instead of failing on the rename."""
    import transformers

    from l2s_lightning.models.loading import dequantized_gguf_folder

    folder = tmp_path / "gguf_model"
    folder.mkdir()
    (folder / "model.Q4.gguf").write_bytes(b"GGUF not really")
    target = gguf_cache_folder(str(folder), "model.Q4.gguf", str(tmp_path / "cache"))
    real_model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    real_tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_llama_dir)

    def other_process_finishes_first(*_args, **_kwargs):
        target.mkdir(parents=True)
        shutil.copy(tiny_llama_dir / "config.json", target / "config.json")
        (target / "model.safetensors").write_bytes(b"theirs")
        return real_model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", other_process_finishes_first)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: real_tokenizer)
    assert dequantized_gguf_folder(str(folder), "model.Q4.gguf", str(tmp_path / "cache")) == target
    assert (target / "model.safetensors").read_bytes() == b"theirs"
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([target.name, "index.json"])  # no temporary left
