"""P2S features of a batch: h at L' (last prompt token) and z = h_L*(X+)[last] - h_L*(X-)[last] (``readout``
``last``, the paper's), or the difference of the two completions' mean states over their own tokens (``mean``).

`prefix_shared_features` encodes each prompt once (up to block max(L*, L')), keeps its KV cache, and runs
both completions of every row on that cache as one batch of 2B rows, through blocks 0..L* only. When a
template suffix makes the steering prompt differ from the prompt h is read from, the two share their image
and question tokens: only the plain prompt's short tail runs again, on the steering prompt's cache.
`reference_features` is the plain style (batch 1, three full forwards); a test checks that the two agree.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, cast, get_args

import torch
from torch import nn

from l2s_lightning.errors import L2SInputError
from l2s_lightning.internals import (
    cache_kwarg,
    cache_snapshot,
    keep_cache_layers,
    layer_output,
    output_cache,
    repeat_cache_rows,
    restore_cache,
    rope_position_ids,
)
from l2s_lightning.models.layers import decoder_layers, text_config, truncated_decoder
from l2s_lightning.prompts import append_tokens

Readout = Literal["last", "mean"]
READOUTS: tuple[str, ...] = get_args(Readout)


@dataclass
class ContextTail:
    """The prompt h is read from, where a template suffix makes it differ from the steering prompt: the
    ``prefix_mask`` (B, W) positions of the steering prompt it shares, then its own right-padded tokens
    ``ids`` (B, T) of ``lengths`` (B,) (:mod:`l2s_lightning.extraction.prompt_split`)."""

    ids: torch.Tensor
    lengths: torch.Tensor
    prefix_mask: torch.Tensor

    def pin_memory(self) -> ContextTail:
        """The same tail in page-locked memory."""
        return ContextTail(self.ids.pin_memory(), self.lengths.pin_memory(), self.prefix_mask.pin_memory())


@dataclass
class ContrastInputs:
    """Encoded inputs of one batch.

    ``prefix``: left-padded prompt encodings (X, with the template suffix if any), ``completions``: (2B, C)
    right-padded ids with rows 2i / 2i+1 the positive / negative completion of sample i,
    ``completion_lengths``: (2B,). ``context``: None when h is read at the last token of ``prefix``, else
    where the prompt h is read from differs from it.
    """

    prefix: Mapping[str, torch.Tensor]
    completions: torch.Tensor
    completion_lengths: torch.Tensor
    context: ContextTail | None = None


@contextlib.contextmanager
def capture_layer_outputs(model: nn.Module, layers: list[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Record the output hidden state of the given decoder blocks at every forward (latest call wins)."""
    captured: dict[int, torch.Tensor] = {}
    blocks = decoder_layers(model)
    handles = []
    for index in sorted(set(layers)):

        def hook(_module, _args, output, index=index):
            captured[index] = layer_output(output)

        handles.append(blocks[index].register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def base_model(model: nn.Module) -> nn.Module:
    """The model without its head (transformers' ``base_model``: the decoder, with the vision tower if any)."""
    return cast(nn.Module, model.base_model)


def prefix_position_ids(model: nn.Module, prefix: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Position ids of a left-padded prompt batch: mRoPE (3, B, P) for Qwen2-VL-style models with images,
    else (B, P) counting real tokens only."""
    mask = prefix["attention_mask"]
    if prefix.get("image_grid_thw") is not None:
        rope = rope_position_ids(base_model(model), prefix)
        if rope is not None:
            return rope
    positions = mask.long().cumsum(-1) - 1
    return positions.masked_fill(mask == 0, 0)


def continuation_position_ids(
    prefix_positions: torch.Tensor, prefix_mask: torch.Tensor, length: int, repeats: int
) -> torch.Tensor:
    """Positions of ``length`` text tokens appended to each prompt (each row repeated ``repeats`` times)."""
    real = prefix_mask.bool()
    if prefix_positions.dim() == 3:
        last = prefix_positions.masked_fill(~real[None], -1).amax(dim=(0, 2))
    else:
        last = prefix_positions.masked_fill(~real, -1).amax(dim=1)
    steps = torch.arange(1, length + 1, device=prefix_positions.device)
    positions = (last[:, None] + steps[None]).repeat_interleave(repeats, dim=0)
    if prefix_positions.dim() == 3:
        positions = positions[None].expand(prefix_positions.shape[0], -1, -1)
    return positions


def sliding_window(model: nn.Module) -> int | None:
    """The attention window of the model's sliding-window layers (Mistral v0.1, Gemma 2/3), None when every
    layer attends to all earlier positions."""
    config = text_config(model.config)
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    types = getattr(config, "layer_types", None)
    return int(window) if types is None or "sliding_attention" in types else None


def tail_shares_cache(model: nn.Module, inputs: ContrastInputs) -> bool:
    """Whether the context tail can run on the steering prompt's cache exactly: with attention layers only
    (full or sliding-window), unless a sliding window is shorter than the prompt and tail together (those
    layers would count the suffix's masked positions into the window, and evict shared positions the tail
    needs). Layers with a recurrent state (linear attention) cannot skip the suffix at all."""
    if inputs.context is None:
        return True
    types = set(getattr(text_config(model.config), "layer_types", None) or ())
    if types - {
        "full_attention",
        "sliding_attention",
    }:  # e.g. linear attention: a recurrent state cannot mask the suffix
        return False
    window = sliding_window(model)
    return window is None or inputs.prefix["input_ids"].shape[1] + inputs.context.ids.shape[1] < window


def run_continuation(
    model: nn.Module,
    cache: object,
    ids: torch.Tensor,
    lengths: torch.Tensor,
    prefix_positions: torch.Tensor,
    prefix_mask: torch.Tensor,
    repeats: int,
    depth: int,
) -> None:
    """Run right-padded rows ``ids`` (each prompt row repeated ``repeats`` times) on the prompt's cache through
    blocks 0..depth-1, attending to the cached positions ``prefix_mask`` holds and numbered on from the last
    of them; read their hidden states with :func:`capture_layer_outputs`."""
    base = base_model(model)
    width = ids.shape[1]
    tail_mask = (torch.arange(width, device=ids.device)[None] < lengths[:, None]).to(prefix_mask.dtype)
    full_mask = torch.cat([prefix_mask.repeat_interleave(repeats, dim=0), tail_mask], dim=1)
    with truncated_decoder(model, depth):
        base(
            input_ids=ids,
            attention_mask=full_mask,
            position_ids=continuation_position_ids(prefix_positions, prefix_mask, width, repeats),
            use_cache=True,
            **{cache_kwarg(base): cache},
        )


def last_real(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(N, D): each row's hidden state at its last real token (rows right-padded to ``lengths``)."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]


def mean_real(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(N, D): each row's mean hidden state over its real tokens (rows right-padded to ``lengths``)."""
    real = torch.arange(hidden.shape[1], device=hidden.device)[None] < lengths[:, None]
    return (hidden * real[..., None]).sum(1) / lengths[:, None].to(hidden.dtype)


def read_completion(hidden: torch.Tensor, lengths: torch.Tensor, readout: Readout) -> torch.Tensor:
    """(N, D): what z is made of for each completion row: its last real token's state, or the mean over its tokens."""
    if readout not in READOUTS:
        raise L2SInputError(f"z_readout={readout!r} must be one of {READOUTS}")
    return last_real(hidden, lengths) if readout == "last" else mean_real(hidden, lengths)


@torch.no_grad()
def prefix_shared_features(
    model: nn.Module, inputs: ContrastInputs, layer_steer: int, layer_context: int, readout: Readout = "last"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, z), each (B, D), encoding each prompt once and running each pass only as deep as it must go.

    The prompt pass runs blocks 0..max(L*, L'). With a context tail, the tail runs next on the prompt's cache
    through blocks 0..L', attending to the positions it shares with the prompt only (h is read at its last
    token), and the cache is then restored to the prompt's. The completion pass runs blocks 0..L* on the prompt's cache,
    cut to L* + 1 blocks before it is repeated for the two completions.
    """
    if not tail_shares_cache(model, inputs):
        raise L2SInputError(
            f"the context tail cannot share the prompt's cache within the sliding window of {sliding_window(model)} "
            "positions: read h with its own pass (ExtractionModule does)"
        )
    base = base_model(model)
    steer_depth = layer_steer + 1
    prefix = dict(inputs.prefix)
    mask = prefix["attention_mask"]
    with capture_layer_outputs(model, [layer_steer, layer_context]) as captured:
        positions = prefix_position_ids(model, prefix)
        with truncated_decoder(model, max(layer_steer, layer_context) + 1):
            out = base(**prefix, position_ids=positions, use_cache=True, return_dict=True)
        cache = output_cache(base, out)
        if inputs.context is None:
            context = captured[layer_context][:, -1]
        else:
            tail = inputs.context
            lengths, seen = tail.lengths.to(mask.device), tail.prefix_mask.to(mask.device)
            snapshot = cache_snapshot(cache)
            run_continuation(model, cache, tail.ids.to(mask.device), lengths, positions, seen, 1, layer_context + 1)
            context = last_real(captured[layer_context], lengths)
            restore_cache(cache, snapshot)  # the tail is not part of the prompt the completions follow
        keep_cache_layers(cache, steer_depth)
        repeat_cache_rows(cache, 2)
        lengths = inputs.completion_lengths.to(mask.device)
        run_continuation(model, cache, inputs.completions.to(mask.device), lengths, positions, mask, 2, steer_depth)
        read = read_completion(captured[layer_steer], lengths, readout)
    return context.float(), (read[0::2] - read[1::2]).float()


@torch.no_grad()
def reference_features(
    model: nn.Module,
    prefix: Mapping[str, torch.Tensor],
    positive: torch.Tensor,
    negative: torch.Tensor,
    layer_steer: int,
    layer_context: int,
    context_prefix: Mapping[str, torch.Tensor] | None = None,
    readout: Readout = "last",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain way for ONE un-padded sample: three full forwards (X, X+, X-), no cache, no truncation.

    X+ / X- are ``prefix`` followed by ``positive`` / ``negative``; X is ``context_prefix`` when given (the
    plain prompt of a template with a suffix), else ``prefix``.
    Layer outputs are read with forward hooks, not ``hidden_states``: transformers returns the last block's
    output after the final norm there, while layer L is the raw output of block L (what steering edits).
    """

    context = last_token_state(model, prefix if context_prefix is None else context_prefix, layer_context)
    sides = [completion_state(model, prefix, completion, layer_steer, readout) for completion in (positive, negative)]
    return context.float(), (sides[0] - sides[1]).float()


def completion_state(
    model: nn.Module, prefix: Mapping[str, torch.Tensor], completion: torch.Tensor, layer: int, readout: Readout
) -> torch.Tensor:
    """(D,): block ``layer``'s output over ``completion`` after ONE un-padded ``prefix`` (a full forward, no
    cache): at its last token, or the mean over its tokens."""
    with capture_layer_outputs(model, [layer]) as captured:
        model(**append_tokens(prefix, completion[None]), use_cache=False)
    states = captured[layer][0, -completion.shape[0] :]
    return read_completion(states[None], torch.tensor([completion.shape[0]], device=states.device), readout)[0]


def last_token_state(model: nn.Module, inputs: Mapping[str, torch.Tensor], layer: int) -> torch.Tensor:
    """(D,): the output of block ``layer`` at the last token of ONE un-padded sample (a full forward, no cache)."""
    with capture_layer_outputs(model, [layer]) as captured:
        model(**inputs, use_cache=False)
    return captured[layer][0, -1]
