"""A per-row additive steering hook on one decoder block: ``h_L*[i, t] += alpha_i * v_i``.

Which calls carry generated tokens (prefill vs decode). ``generate`` runs the prompt in one call (the
prefill), then one call per generated token on top of the KV cache. The hook classifies each call of its
block from static facts only, so no tensor value is read and nothing branches on data:

* a call is a **prefill** when it is the first call since the hook was armed, or it holds more than one
  token, or (outside a compiled region) its KV cache is another object than the one of the previous call
  (every ``generate`` call makes a new cache, so a second ``generate`` in the same context is recognised
  even with a one-token prompt), or it has no KV cache at all (a plain forward);
* every other call is a **decode** step: its tokens are generated tokens.

Which positions get the vector: one rule, :func:`steered_from`, from ``mode`` and the number of prompt
positions in the call (a prefill: all of them; a decode step: none). A teacher-forced forward over prompt +
continuation (log-odds scoring, ``add_steering(..., prompt_width=W)``) is one prefill call whose first W
positions are the prompt and the rest stand for generated tokens, so it is steered as ``generate`` would
steer those tokens.

How many generated tokens are steered: ``steer_tokens`` = k (None: all of them). Generated token j is produced
at the position before its own (token 1 at the last prompt position), and **only the positions that produce
generated tokens 1..k get the vector**, i.e. the positions before generated token k's (:func:`steered_until`),
intersected with those of ``mode``: ``last_prompt_and_generated`` steers the last prompt position and generated
tokens 1..k-1 (tokens 1..k produced under steering), ``generated`` steers generated tokens 1..k-1 (tokens 2..k:
token 1 always comes from the unsteered last prompt position, so k = 1 would steer nothing and is refused),
``all`` every prompt position and generated tokens 1..k-1. Tokens after k are produced by unsteered positions
(they still attend to the steered ones). The hook counts the generated tokens fed since the prefill in a Python
counter, so this works in eager decoding only: ``SteeredGenerationModule`` refuses ``compile`` with
``steer_tokens`` up front, and a hook with ``steer_tokens`` traced by ``torch.compile`` raises an
:class:`~l2s_lightning.errors.L2SInputError` (with ``fullgraph=True`` dynamo reports it as an unsupported
exception).

Assumptions: a KV cache is used (without one every call is a whole-sequence forward, i.e. a prefill, and
``"generated"`` steers nothing); a chunked prefill (``prefill_chunk_size``) is fine for ``"generated"``
as long as no chunk is a single token, but ``"last_prompt_and_generated"`` would also steer the last token
of every chunk; speculative / assisted decoding (several new tokens per call) is not supported.

transformers 5.x no longer passes ``cache_position`` to decoder blocks (the cache object and
``position_ids`` are passed instead; position ids are per row and not token indices for M-RoPE models),
so the cache *object* is what tells a new sequence apart.

Compiled decoding (``cache_implementation="static"``, forward compiled by ``generate``): the decode step
reads only Python flags and the tensor shape (constants for the tracer) and adds a (B, D) tensor computed
eagerly at the prefill, so it traces into one graph with no break (``fullgraph=True`` passes) and new
vectors of the same shape in a later ``generate`` call reuse that graph. That tensor is a static input of the
graph (dynamo treats it like a parameter; CUDA graph trees record again when its address changes), so new
vectors of the same shape are copied into it (:meth:`SteeringHook.set_vectors`; a hook reused across calls:
``attach_steerer(..., hook=)``). Caveat: with torch's default
``torch._dynamo.config.skip_nnmodule_hook_guards = True`` a graph compiled while the block had no hook is
reused after the hook is added, and the hook never runs; :func:`enable_hook_guards` (called by
:func:`add_steering` and ``attach_steerer``) turns those guards on.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
import weakref
from collections.abc import Iterator
from typing import Any, Literal, get_args

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from l2s_lightning.errors import L2SInputError
from l2s_lightning.internals import drop_compiled_graphs, enable_nnmodule_hook_guards, has_compiled_call
from l2s_lightning.models.layers import (
    decoder_layers,
    hidden_size,
    layer_output,
    replace_layer_output,
    validate_layers,
)

Positions = Literal["generated", "last_prompt_and_generated", "all"]
POSITIONS: tuple[str, ...] = get_args(Positions)
_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value")


def steered_from(mode: Positions, prompt_tokens: int) -> int:
    """The first position of a call that gets the vector (every later one does too), when the call's first
    ``prompt_tokens`` positions are prompt and the rest generated: ``generated``: the first generated one;
    ``last_prompt_and_generated``: the last prompt one; ``all``: position 0."""
    if mode == "all":
        return 0
    if mode == "last_prompt_and_generated":
        return max(prompt_tokens - 1, 0)
    return prompt_tokens


def steered_until(prompt_tokens: int, steer_tokens: int | None, fed_before: int = 0) -> int | None:
    """The end (exclusive) of the positions of a call that get the vector with ``steer_tokens`` = k (None: no
    end): the positions before generated token k's, which produce tokens 1..k. The call's first
    ``prompt_tokens`` positions are prompt, the rest generated tokens after the ``fed_before`` ones fed by earlier
    calls since the prefill (decode step n: n - 1)."""
    if steer_tokens is None:
        return None
    return max(prompt_tokens + steer_tokens - 1 - fed_before, 0)


def check_steer_tokens(steer_tokens: int | None, mode: str = "generated") -> None:
    """Raise an L2SInputError unless ``steer_tokens`` is None or an int >= 1 that steers something with ``mode``."""
    if steer_tokens is None:
        return
    if isinstance(steer_tokens, bool) or not isinstance(steer_tokens, int) or steer_tokens < 1:
        raise L2SInputError(
            f"steer_tokens={steer_tokens!r} must be a whole number of at least 1, or None (every token)"
        )
    if steer_tokens == 1 and mode == "generated":
        raise L2SInputError(
            "steer_tokens=1 with positions='generated' steers nothing (generated token 1 comes from the unsteered "
            "last prompt position): use steer_tokens >= 2 or positions='last_prompt_and_generated'"
        )


def check_positions(mode: str, prompt_width: int | None = None) -> None:
    """Raise a ValueError unless ``mode`` is one of :data:`POSITIONS` and ``prompt_width`` None or an int >= 1."""
    if mode not in POSITIONS:
        raise L2SInputError(f"mode={mode!r} must be one of {POSITIONS}")
    if prompt_width is not None and (
        isinstance(prompt_width, bool) or not isinstance(prompt_width, int) or prompt_width < 1
    ):
        raise L2SInputError(f"prompt_width={prompt_width!r} must be a positive number of prompt positions")


def check_alpha(alpha: float | torch.Tensor, batch: int | None = None) -> None:
    """Raise a ValueError unless ``alpha`` is a finite number or a finite (B,) tensor."""
    if isinstance(alpha, torch.Tensor):
        if alpha.ndim > 1 or (alpha.ndim == 1 and batch is not None and alpha.shape[0] != batch):
            raise L2SInputError(f"alpha must be a number or a ({batch},) tensor, got shape {tuple(alpha.shape)}")
        if not torch.isfinite(alpha).all():
            raise L2SInputError(f"alpha={alpha.tolist()} must be finite")
        return
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha):
        raise L2SInputError(f"alpha={alpha!r} must be a finite number")


def _cache_of(kwargs: dict[str, Any], args: tuple = ()) -> object | None:
    """The KV cache a block was called with: a keyword argument, else (GPT-2-style blocks take it second) a
    positional argument with a cache's ``get_seq_length``."""
    for key in _CACHE_KWARGS:
        cache = kwargs.get(key)
        if cache is not None:
            return cache
    return next((arg for arg in args[1:] if hasattr(arg, "get_seq_length")), None)


class PrefillTracker:
    """Tells prefill calls of one decoder block from decode calls (rules in the module docstring)."""

    def __init__(self) -> None:
        self.armed = True
        self._cache: weakref.ref | None = None

    def reset(self) -> None:
        """Treat the next call as a prefill."""
        self.armed, self._cache = True, None

    def is_prefill(self, hidden: torch.Tensor, kwargs: dict[str, Any], args: tuple = ()) -> bool:
        """Whether this call of the block (its output ``hidden``, its ``kwargs`` and positional ``args``) is a
        prefill."""
        cache = _cache_of(kwargs, args)
        prefill = self.armed or hidden.shape[1] > 1
        if not torch.compiler.is_compiling():
            same_cache = cache is not None and self._cache is not None and self._cache() is cache
            prefill = prefill or not same_cache
            if prefill:
                try:
                    self._cache = weakref.ref(cache) if cache is not None else None
                except TypeError:  # an object without weakref support: fall back to shape + first call
                    self._cache = None
        if prefill:
            self.armed = False
        return prefill


class SteeringHook:
    """Forward hook adding ``alpha * vectors[i]`` to row i of a block's output at the positions of ``mode``.

    ``vectors`` (B, D) may be left None and set later with :meth:`set_vectors` (before the first call that
    steers). A batch of ``k * B`` rows (``num_return_sequences``, beams) gives row j the vector ``j // k``.
    ``prompt_width``: None for ``generate`` (a prefill is all prompt); W for teacher-forced forwards over
    prompt + continuation (a prefill's first W positions are the prompt, the rest count as generated).
    ``steer_tokens``: steer only the positions producing the first k generated tokens (module docstring; eager
    decoding only); None: every one.
    """

    def __init__(
        self,
        vectors: torch.Tensor | None = None,
        alpha: float | torch.Tensor = 1.0,
        mode: Positions = "generated",
        prompt_width: int | None = None,
        steer_tokens: int | None = None,
    ) -> None:
        check_positions(mode, prompt_width)
        check_steer_tokens(steer_tokens, mode)
        check_alpha(alpha)
        self.mode = mode
        self.prompt_width = prompt_width
        self.steer_tokens = steer_tokens
        self.fed_tokens = 0  # generated tokens fed since the last prefill (counted with steer_tokens, eager only)
        self.alpha = alpha
        self.tracker = PrefillTracker()
        # alpha * vectors, (B, D), in the block's dtype once it ran: a buffer that later vectors of its shape are
        # copied into (read ContextCapture.vectors, or keep your own tensor, for a call's vectors)
        self.delta: torch.Tensor | None = None
        self.attached = False  # in use by an attach_steerer context (a hook is reused by one context at a time)
        self.prefills = 0  # calls seen as a prefill / calls that added the vector (eager calls only)
        self.steered_calls = 0
        if vectors is not None:
            self.set_vectors(vectors)

    def set_vectors(
        self, vectors: torch.Tensor, alpha: float | torch.Tensor | None = None, like: torch.Tensor | None = None
    ) -> None:
        """Use ``alpha * vectors`` from now on (``like``: a tensor giving the device and dtype to keep it in).
        Vectors of the shape, dtype and device of the current ones are copied into the same tensor."""
        alpha = self.alpha if alpha is None else alpha
        if vectors.ndim != 2:
            raise L2SInputError(f"steering vectors must be (B, D), got shape {tuple(vectors.shape)}")
        check_alpha(alpha, vectors.shape[0])
        vectors = vectors.detach().float()
        scale = torch.as_tensor(alpha, dtype=torch.float32, device=vectors.device).reshape(-1, 1)
        delta = scale * vectors
        if like is not None:
            delta = delta.to(device=like.device, dtype=like.dtype)
        if self._fits_in_place(delta):
            # the same tensor as before: a compiled decode step reads it as a static input (its CUDA graph is
            # not recorded again for a new address), so new vectors go into it
            self.delta.copy_(delta)  # type: ignore[union-attr]
        else:
            self.delta = delta
        self.alpha = alpha

    def _fits_in_place(self, delta: torch.Tensor) -> bool:
        """Whether ``delta`` can be copied into the current :attr:`delta` (same shape, dtype and device, and
        not an inference tensor written outside inference mode)."""
        old = self.delta
        return (
            old is not None
            and old.shape == delta.shape
            and old.dtype == delta.dtype
            and old.device == delta.device
            and (not old.is_inference() or torch.is_inference_mode_enabled())
        )

    def rearm(self, alpha: float | torch.Tensor, mode: Positions, steer_tokens: int | None = None) -> None:
        """Reuse this hook for another ``generate`` call with ``alpha``, ``mode`` and ``steer_tokens``: the next
        call is a prefill, the counters start again, and vectors set later of the same shape go into the same
        tensor (see :meth:`set_vectors`); prompt positions are told apart as in ``generate`` (no ``prompt_width``)."""
        check_positions(mode)
        check_steer_tokens(steer_tokens, mode)
        check_alpha(alpha)
        self.alpha, self.mode, self.prompt_width, self.steer_tokens = alpha, mode, None, steer_tokens
        self.prefills = self.steered_calls = 0
        self.reset()

    def reset(self) -> None:
        """Treat the next call as a prefill (a new sequence)."""
        self.tracker.reset()

    def _delta_for(self, hidden: torch.Tensor) -> torch.Tensor:
        delta = self.delta
        if delta is None:
            raise RuntimeError("the steering hook has no vectors yet (call set_vectors before the steered forward)")
        if delta.device != hidden.device or delta.dtype != hidden.dtype:
            delta = self.delta = delta.to(device=hidden.device, dtype=hidden.dtype)
        rows = hidden.shape[0]
        if delta.shape[0] != rows:
            if delta.shape[0] == 0 or rows % delta.shape[0]:
                raise L2SInputError(f"{delta.shape[0]} steering vectors for a batch of {rows} rows")
            delta = delta.repeat_interleave(rows // delta.shape[0], dim=0)
        if delta.shape[1] != hidden.shape[-1]:
            raise L2SInputError(f"steering vectors have size {delta.shape[1]}, the hidden state has {hidden.shape[-1]}")
        return delta[:, None, :]

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: object) -> object:
        hidden = layer_output(output)
        prefill = self.tracker.is_prefill(hidden, kwargs, args)
        length = hidden.shape[1]
        prompt = (length if self.prompt_width is None else min(self.prompt_width, length)) if prefill else 0
        start = steered_from(self.mode, prompt)  # Python ints: constants for the tracer
        end = length
        if self.steer_tokens is not None:
            if torch.compiler.is_compiling():
                raise L2SInputError(
                    f"steer_tokens={self.steer_tokens} needs eager decoding: it cannot be used with a compiled "
                    "decode step (compile / cache_implementation='static' compiled by generate)"
                )
            fed_before = 0 if prefill else self.fed_tokens
            self.fed_tokens = fed_before + length - prompt
            until = steered_until(prompt, self.steer_tokens, fed_before)
            end = length if until is None else min(length, until)
        if not torch.compiler.is_compiling():  # counters only outside compiled regions (no guard on them)
            self.prefills += prefill
            self.steered_calls += start < end
        if start >= end:
            return output
        if start == 0 and end == length:
            return replace_layer_output(output, hidden + self._delta_for(hidden))
        steered = hidden[:, start:end] + self._delta_for(hidden)
        return replace_layer_output(output, torch.cat([hidden[:, :start], steered, hidden[:, end:]], dim=1))

    def register(self, module: nn.Module) -> RemovableHandle:
        """Register on ``module`` (a decoder block) as a forward hook that receives the keyword arguments."""
        return module.register_forward_hook(self, with_kwargs=True)


def enable_hook_guards(model: nn.Module | None = None) -> None:
    """Make compiled graphs check the hooks of modules (``skip_nnmodule_hook_guards = False``), process-wide.

    With torch's default (True), a graph compiled while a block had no hooks is reused after a steering
    hook is added: the hook never runs and steering is silently lost (seen with ``generate``'s static cache
    + compile: plain, then steered; or steered, plain, steered). Call this before the first compiled
    ``generate``; :func:`add_steering` calls it. If the flag was on and ``model`` already holds a compiled
    forward, its graphs lack those guards: they are dropped (``torch._dynamo.reset()``) with a warning.
    """
    if not enable_nnmodule_hook_guards():
        return
    if model is not None and has_compiled_call(model):
        warnings.warn(
            "the model was compiled while torch._dynamo.config.skip_nnmodule_hook_guards was True, so its compiled "
            "graphs would ignore steering hooks; they were dropped (torch._dynamo.reset()) and will be recompiled. "
            "Call l2s_lightning.steering.enable_hook_guards() before the first compiled generate to avoid this.",
            RuntimeWarning,
            stacklevel=3,
        )
        drop_compiled_graphs()


@contextlib.contextmanager
def register_hook(model: nn.Module, layer: int, hook: Any, with_kwargs: bool = True) -> Iterator[RemovableHandle]:
    """A forward hook on decoder block ``layer`` of ``model``, removed on exit even after an exception."""
    layers = decoder_layers(model)
    validate_layers(model, layer=layer)
    handle = layers[layer].register_forward_hook(hook, with_kwargs=with_kwargs)
    try:
        yield handle
    finally:
        handle.remove()


def _block_like(model: nn.Module, layer: int) -> torch.Tensor | None:
    """A parameter of block ``layer`` (its device and floating dtype), or None."""
    for param in decoder_layers(model)[layer].parameters():
        if param.is_floating_point():
            return param
    return None


@contextlib.contextmanager
def add_steering(
    model: nn.Module,
    layer: int,
    vectors: torch.Tensor,
    alpha: float | torch.Tensor = 1.0,
    mode: Positions = "generated",
    prompt_width: int | None = None,
    steer_tokens: int | None = None,
) -> Iterator[SteeringHook]:
    """Add ``alpha * vectors[i]`` to row i of the output of decoder block ``layer`` while the context is open.

    ``vectors``: (B, D), one row per batch row (a zero row leaves its row bit-identical to an unsteered run);
    ``alpha``: a number or a (B,) tensor; ``mode``: ``"generated"`` (tokens after the prefill),
    ``"last_prompt_and_generated"`` or ``"all"`` (every position, as in the released L2S code). Several
    ``generate`` calls may run inside the context; each one's prefill is recognised anew when it has more
    than one token or a new cache (``generate``'s own). A cache of one's own reused across calls (a reset
    ``StaticCache``, a multi-turn loop) with one-token prompts: call ``hook.reset()`` before each call.
    ``prompt_width``: for teacher-forced forwards over (left-padded) prompts of W positions + continuations,
    steered as ``generate`` would steer the continuation's tokens (see :class:`SteeringHook`).
    ``steer_tokens``: steer only the positions producing the first k generated tokens (eager decoding only;
    module docstring); None: every one.
    """
    validate_layers(model, layer=layer)
    if vectors.ndim != 2 or vectors.shape[-1] != hidden_size(model):
        raise L2SInputError(
            f"steering vectors must be (B, {hidden_size(model)}) (the model's hidden size), got {tuple(vectors.shape)}"
        )
    if not torch.isfinite(vectors).all():
        raise L2SInputError("steering vectors must be finite")
    hook = SteeringHook(None, alpha, mode, prompt_width, steer_tokens)
    hook.set_vectors(vectors, like=_block_like(model, layer))
    enable_hook_guards(model)
    with register_hook(model, layer, hook):
        yield hook
