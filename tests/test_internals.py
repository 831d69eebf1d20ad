"""One test per library internal wrapped in `l2s_lightning.internals`: each fails with a message saying what a new
transformers / torch release changed (the fix belongs in internals.py)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from l2s_lightning import internals
from l2s_lightning.extraction.forward import capture_layer_outputs
from l2s_lightning.models.layers import decoder_layers, truncated_decoder
from l2s_lightning.models.loading import ModelSpec, load_model

CHANGED = "a transformers/torch change broke l2s_lightning.internals"


@pytest.fixture(scope="module")
def llama(tiny_llama_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()


def _prompt_cache(model, ids: torch.Tensor):
    """The DynamicCache of a prompt forward through the base model, with its last hidden state."""
    base = model.base_model
    out = base(input_ids=ids, use_cache=True, return_dict=True)
    return internals.output_cache(base, out), out.last_hidden_state


def _continue(model, cache, ids: torch.Tensor, offset: int) -> torch.Tensor:
    """The last hidden state of ``ids`` run on ``cache`` (positions from ``offset``)."""
    base = model.base_model
    positions = torch.arange(offset, offset + ids.shape[1])[None].expand(ids.shape[0], -1)
    out = base(input_ids=ids, position_ids=positions, use_cache=True, **{internals.cache_kwarg(base): cache})
    return out.last_hidden_state


def test_decoder_block_output_is_a_tensor_a_hook_can_replace(llama) -> None:
    """layer_output / replace_layer_output: a decoder block returns its hidden state as a tensor (4.x: a
    tuple), and what a forward hook returns replaces it downstream."""
    seen: list[object] = []
    block = decoder_layers(llama)[1]
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        handle = block.register_forward_hook(lambda m, a, out: seen.append(out))
        plain = llama(ids).logits
        handle.remove()
        assert isinstance(seen[0], torch.Tensor), f"{CHANGED}: a decoder block now returns {type(seen[0]).__name__}"
        assert internals.layer_output(seen[0]) is seen[0]
        handle = block.register_forward_hook(lambda m, a, out: internals.replace_layer_output(out, out + 1.0))
        edited = llama(ids).logits
        handle.remove()
    assert not torch.equal(plain, edited), f"{CHANGED}: a forward hook's return value no longer replaces the output"
    hidden = torch.zeros(1)
    assert internals.replace_layer_output((torch.ones(1), "attn"), hidden) == (hidden, "attn")  # the 4.x layout
    assert internals.layer_output([hidden, None]) is hidden


def test_truncated_layers_runs_only_the_first_blocks(llama) -> None:
    """truncated_layers: the decoder runs only ``owner.layers`` (its cache gets one layer per block run), and
    the blocks it runs compute what they compute in a full forward."""
    calls: list[int] = []
    blocks = decoder_layers(llama)
    handles = [b.register_forward_hook(lambda m, a, out, i=i: calls.append(i)) for i, b in enumerate(blocks)]
    ids = torch.tensor([[5, 6, 7, 8]])
    try:
        with torch.no_grad():
            with capture_layer_outputs(llama, [1]) as full:
                llama.base_model(input_ids=ids)
            calls.clear()
            with truncated_decoder(llama, 2), capture_layer_outputs(llama, [1]) as cut:
                cache, _ = _prompt_cache(llama, ids)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == [0, 1], f"{CHANGED}: a truncated decoder ran blocks {calls}, not [0, 1]"
    assert len(cache.layers) == 2, f"{CHANGED}: a truncated decoder's cache has {len(cache.layers)} layers, not 2"
    torch.testing.assert_close(cut[1], full[1])
    assert len(decoder_layers(llama)) == 4 and llama.config.num_hidden_layers == 4  # restored


def test_cache_kwarg_and_output_cache(llama) -> None:
    """cache_kwarg / output_cache: the base model takes and returns its KV cache under the name we use."""
    from transformers import DynamicCache

    base = llama.base_model
    name = internals.cache_kwarg(base)
    assert name in inspect.signature(base.forward).parameters, f"{CHANGED}: forward takes no {name!r} argument"
    with torch.no_grad():
        cache, _ = _prompt_cache(llama, torch.tensor([[5, 6, 7]]))
    assert isinstance(cache, DynamicCache), f"{CHANGED}: the forward returned {type(cache).__name__} as its cache"
    assert cache.get_seq_length() == 3


def test_cache_snapshot_restore_round_trips(llama) -> None:
    """cache_snapshot / restore_cache: a DynamicCache keeps one object per block in the list ``cache.layers``;
    restoring their attributes undoes a continuation (its tensors are replaced, not written into)."""
    prompt, tail, other = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[9, 10]]), torch.tensor([[11, 12, 13]])
    with torch.no_grad():
        cache, _ = _prompt_cache(llama, prompt)
        assert isinstance(cache.layers, list) and len(cache.layers) == 4, f"{CHANGED}: cache.layers is not a list"
        snapshot = internals.cache_snapshot(cache)
        kept = [{k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)} for state in snapshot]
        assert all(kept), f"{CHANGED}: a cache layer holds no tensor attributes (vars() is not its state)"
        _continue(llama, cache, tail, 4)
        assert cache.get_seq_length() == 6
        internals.restore_cache(cache, snapshot)
        assert cache.get_seq_length() == 4, f"{CHANGED}: restoring the layers' attributes did not undo a pass"
        for state, before in zip(snapshot, kept):
            for key, value in before.items():
                assert torch.equal(state[key], value), f"{CHANGED}: a pass wrote into the cache tensor {key!r}"
        restored = _continue(llama, cache, other, 4)
        fresh, _ = _prompt_cache(llama, prompt)
        expected = _continue(llama, fresh, other, 4)
    torch.testing.assert_close(restored, expected)


def test_keep_cache_layers_and_repeat_rows(llama) -> None:
    """keep_cache_layers / repeat_cache_rows: a cache cut to the first blocks serves a truncated decoder, and
    ``batch_repeat_interleave`` repeats each row in place."""
    prompt, completions = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]]), torch.tensor([[13], [14], [13], [14]])
    with torch.no_grad(), capture_layer_outputs(llama, [1]) as captured:
        with truncated_decoder(llama, 3):
            cache, _ = _prompt_cache(llama, prompt)
        internals.keep_cache_layers(cache, 2)
        assert len(cache.layers) == 2
        internals.repeat_cache_rows(cache, 2)
        with truncated_decoder(llama, 2):
            _continue(llama, cache, completions, 4)
        repeated = captured[1][:, -1]
        for row in range(4):  # row 2i / 2i+1: prompt i
            with truncated_decoder(llama, 2):
                single, _ = _prompt_cache(llama, prompt[row // 2 : row // 2 + 1])
                _continue(llama, single, completions[row : row + 1], 4)
            torch.testing.assert_close(repeated[row], captured[1][0, -1], msg=f"{CHANGED}: cache row {row} repeated")


def test_rope_position_ids_match_the_models_own(tiny_qwen2_vl_dir: Path) -> None:
    """rope_position_ids: Qwen2-VL's ``get_rope_index`` takes the keywords we pass and gives the positions the
    model computes itself."""
    loaded = load_model(ModelSpec(str(tiny_qwen2_vl_dir)))
    text = "<|vision_start|><|image_pad|><|vision_end|>what is the image"
    inputs = loaded.processor(
        text=[text, "hi " + text], images=[Image.new("RGB", (56, 56))] * 2, padding=True, return_tensors="pt"
    )
    base = loaded.model.base_model
    positions = internals.rope_position_ids(base, inputs)
    assert positions is not None, f"{CHANGED}: {type(base).__name__} has no get_rope_index"
    assert positions.shape == (3, *inputs["input_ids"].shape), f"{CHANGED}: mRoPE positions {tuple(positions.shape)}"
    with torch.no_grad():
        own = base(**inputs).last_hidden_state
        ours = base(**inputs, position_ids=positions).last_hidden_state
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(ours[real], own[real], msg=f"{CHANGED}: get_rope_index positions differ")
    assert internals.rope_position_ids(nn.Linear(1, 1), inputs) is None


def test_compile_on_any_device_compiles_generate_on_cpu(tiny_llama_dir: Path) -> None:
    """compile_on_any_device / has_compiled_call: ``generate`` compiles its decode step on a CPU only with
    ``CompileConfig._compile_all_devices``, and keeps the compiled forward in ``model._compiled_call``."""
    from transformers import AutoModelForCausalLM, CompileConfig

    assert hasattr(CompileConfig(), "_compile_all_devices"), f"{CHANGED}: CompileConfig has no _compile_all_devices"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    kwargs = {"max_new_tokens": 3, "do_sample": False, "cache_implementation": "static"}
    torch._dynamo.reset()
    model.generate(ids, compile_config=CompileConfig(backend="eager", fullgraph=True), **kwargs)
    assert not internals.has_compiled_call(model)  # on a CPU, without the flag: not compiled
    config = internals.compile_on_any_device(CompileConfig(backend="eager", fullgraph=True))
    model.generate(ids, compile_config=config, **kwargs)
    assert internals.has_compiled_call(model), f"{CHANGED}: generate did not compile (or model._compiled_call moved)"
    internals.drop_compiled_graphs()


def test_recompile_limits_exist_and_are_raised() -> None:
    """raise_recompile_limits: ``torch._dynamo.config`` still has the recompile limits we raise."""
    config = torch._dynamo.config
    present = [name for name in internals.RECOMPILE_LIMITS if hasattr(config, name)]
    assert {"recompile_limit", "accumulated_recompile_limit"} <= set(present), (
        f"{CHANGED}: torch._dynamo.config has only {present} of {internals.RECOMPILE_LIMITS}"
    )
    with config.patch(recompile_limit=8, accumulated_recompile_limit=8):  # the other two are their aliases
        internals.raise_recompile_limits(100)
        assert all(getattr(config, name) == 408 for name in present)


def test_is_compiled_function() -> None:
    """is_compiled_function: ``torch.compile`` marks what it returns with ``_torchdynamo_orig_callable``."""

    def f(x):
        return x + 1

    assert internals.is_compiled_function(torch.compile(f, backend="eager")), f"{CHANGED}: torch.compile's mark moved"
    assert not internals.is_compiled_function(f)


def test_hook_guards_flag_makes_compiled_graphs_see_new_hooks() -> None:
    """enable_nnmodule_hook_guards: ``torch._dynamo.config.skip_nnmodule_hook_guards`` exists, and with it False
    a graph compiled before a hook was added runs the hook."""
    config = torch._dynamo.config
    assert hasattr(config, "skip_nnmodule_hook_guards"), f"{CHANGED}: no torch._dynamo.config.skip_nnmodule_hook_guards"
    with config.patch(skip_nnmodule_hook_guards=True):
        assert internals.enable_nnmodule_hook_guards() and not config.skip_nnmodule_hook_guards
        assert not internals.enable_nnmodule_hook_guards()  # already on: nothing changed
        torch._dynamo.reset()
        inner = nn.Linear(3, 3)
        compiled = torch.compile(nn.Sequential(inner), backend="eager")
        x = torch.ones(1, 3)
        plain = compiled(x)
        handle = inner.register_forward_hook(lambda m, a, out: out + 100.0)
        hooked = compiled(x)
        handle.remove()
        torch._dynamo.reset()
    assert torch.equal(hooked, plain + 100.0), f"{CHANGED}: a compiled graph ignored a hook added after compilation"


def _write_gguf(folder: Path, target: Path) -> None:
    """The tiny Llama of ``folder`` as an unquantised (F32) GGUF file, with its byte-level BPE tokenizer."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    c = model.config
    writer = gguf.GGUFWriter(str(target), "llama")
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    tokens = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * len(tokens))
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    names = {"model.embed_tokens.weight": "token_embd", "model.norm.weight": "output_norm", "lm_head.weight": "output"}
    blocks = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for key, value in model.state_dict().items():
        parts = key.split(".")
        name = names.get(key) or f"blk.{parts[2]}.{blocks['.'.join(parts[3:-1])]}"
        writer.add_tensor(f"{name}.weight", value.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_quantization_markers_are_cleared_before_saving(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """clear_quantization_markers: the GGUF loader marks a dequantised model as quantised (``hf_quantizer``),
    which ``save_pretrained`` refuses; cleared, the model saves as plain safetensors (dequantized_gguf_folder)."""
    from transformers import AutoModelForCausalLM

    from l2s_lightning.models.loading import dequantized_gguf_folder

    folder = tmp_path / "gguf"
    folder.mkdir()
    _write_gguf(tiny_llama_dir, folder / "tiny.gguf")
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file="tiny.gguf", dtype=torch.float32)
    assert getattr(loaded, "hf_quantizer", None) is not None, (
        f"{CHANGED}: the GGUF loader no longer sets hf_quantizer (clear_quantization_markers may be unneeded)"
    )
    internals.clear_quantization_markers(loaded)
    loaded.save_pretrained(tmp_path / "saved")  # raises while the markers are set
    assert "quantization_config" not in json.loads((tmp_path / "saved" / "config.json").read_text())
    copy = dequantized_gguf_folder(str(folder), "tiny.gguf", str(tmp_path / "cache"))
    plain = load_model(ModelSpec(str(copy)))
    assert plain.num_layers == 4
    for (name, ours), theirs in zip(plain.model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(ours, theirs), f"{CHANGED}: the saved copy's {name} differs from the GGUF weights"


def test_processor_internals(tiny_qwen2_vl_dir: Path) -> None:
    """processor_class_name / needs_video_processor / image_only: the model-type mapping, ``get_attributes()``
    and sub-processors derived from ``__init__``'s signature (image_processor, tokenizer, video_processor)."""
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaProcessor, Qwen2VLProcessor

    assert internals.processor_class_name("qwen2_vl") == "Qwen2VLProcessor", f"{CHANGED}: PROCESSOR_MAPPING_NAMES"
    assert internals.needs_video_processor(Qwen2VLProcessor), f"{CHANGED}: Qwen2VLProcessor has no video_processor"
    assert not internals.needs_video_processor(LlavaProcessor)
    cls = internals.image_only(Qwen2VLProcessor)
    assert cls.get_attributes() == ["image_processor", "tokenizer"], (
        f"{CHANGED}: ProcessorMixin no longer derives sub-processors from __init__ ({cls.get_attributes()})"
    )
    processor = cls(
        AutoImageProcessor.from_pretrained(tiny_qwen2_vl_dir), AutoTokenizer.from_pretrained(tiny_qwen2_vl_dir)
    )
    out = processor(
        text=["<|vision_start|><|image_pad|><|vision_end|>hi"], images=[Image.new("RGB", (56, 56))], return_tensors="pt"
    )
    assert int((out["input_ids"] == processor.image_token_id).sum()) == 4


def test_processor_workaround_still_needed(tiny_qwen2_vl_dir: Path) -> None:
    """Without torchvision, ``AutoProcessor`` still cannot build a Qwen2-VL processor (huggingface/transformers
    #48558): when it can, ``load_processor``'s workaround (internals.image_only) can go."""
    from transformers import AutoProcessor

    from l2s_lightning.models.processor import has_working_torchvision

    if has_working_torchvision():
        pytest.skip("torchvision works here: the workaround is not used")
    try:
        AutoProcessor.from_pretrained(tiny_qwen2_vl_dir)
    except Exception:
        return
    pytest.fail("transformers now builds Qwen2-VL processors without torchvision: drop internals.image_only")


def test_group_file_options_are_recognised() -> None:
    from dataclasses import dataclass

    from jsonargparse import ArgumentParser

    @dataclass
    class Settings:
        size: int = 1

    parser = ArgumentParser()
    parser.add_class_arguments(Settings, "model")
    kinds = {o: internals.is_group_file_option(a) for a in parser._actions for o in a.option_strings}
    assert kinds["--model"] is True and kinds["--model.size"] is False and kinds["--help"] is False


def test_module_device_is_set_without_moving_weights() -> None:
    import lightning as L

    module = L.LightningModule()
    module.inner = nn.Linear(2, 2)
    internals.set_module_device(module, torch.device("meta"))
    assert module.device == torch.device("meta"), CHANGED
    assert module.inner.weight.device == torch.device("cpu")
