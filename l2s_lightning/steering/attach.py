"""``attach_steerer``: steer a model with a steerer inside your own generation loop.

    with steerer.attach(model, alpha=2.0):
        model.generate(**inputs)

At each prefill a hook on block L' (``steerer.layer_context``) takes h = the last prompt token's hidden
state (with left padding, every row's last real token), computes v = ``steerer.vectors(h, ...)`` once,
and hands it to the :class:`~l2s_lightning.steering.hook.SteeringHook` on block L* (``steerer.layer_steer``),
which adds alpha * v to the positions chosen by ``mode``. Every ``generate`` call inside the block gets its
own v. Both hooks are removed on exit, even after an exception.

The steerer is duck-typed: ``layer_steer``, ``layer_context``, ``hidden_size``, ``default_alpha`` and
``vectors(context (B, D), behaviours=None, sample_ids=None) -> (B, D)``; optional ``needs_context``
(default True), ``needs_behaviours`` and ``needs_sample_ids`` (default False). A steerer that does not
need the context (mean, per-behaviour mean, random, oracle) is still given h, read at L* instead of L',
for the batch size, device and dtype. Before any hook is added, a steerer's optional
``check_inputs(behaviours=, sample_ids=)`` is called (a :class:`~l2s_lightning.steerer.Steerer` refuses
behaviours / sample ids it has no vector for). ``Steerer.vectors`` moves its MLP / stored vectors to h's
device and dtype at the first prefill and keeps them there, so no h goes to the CPU per batch.

:func:`check_steerer` and :func:`steerer_vectors` are those checks and v = g(h) on their own, for callers
that hold h already (log-odds scoring from stored features: :mod:`l2s_lightning.scoring`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from l2s_lightning.errors import L2SInputError
from l2s_lightning.models.layers import hidden_size, layer_output, validate_layers
from l2s_lightning.steering.hook import (
    Positions,
    PrefillTracker,
    SteeringHook,
    check_alpha,
    check_positions,
    check_steer_tokens,
    enable_hook_guards,
    register_hook,
)


def check_steerer(
    steerer: Any, model: nn.Module, behaviours: list[str] | None = None, sample_ids: list[str] | None = None
) -> None:
    """Raise a ValueError unless ``steerer`` fits ``model`` (hidden size, L* and L') and is given the behaviours /
    sample ids it picks its vectors by (one per batch row, each one it knows)."""
    if int(steerer.hidden_size) != hidden_size(model):
        raise L2SInputError(
            f"steerer hidden size {steerer.hidden_size} does not fit the model's hidden size {hidden_size(model)}"
        )
    validate_layers(model, layer_steer=steerer.layer_steer, layer_context=steerer.layer_context)
    if behaviours is not None and sample_ids is not None and len(behaviours) != len(sample_ids):
        raise L2SInputError(f"{len(behaviours)} behaviours but {len(sample_ids)} sample ids")
    for need, given, name in (
        ("needs_behaviours", behaviours, "behaviours"),
        ("needs_sample_ids", sample_ids, "sample_ids"),
    ):
        if getattr(steerer, need, False) and given is None:
            raise L2SInputError(f"this steerer picks its vectors by {name}: pass {name}=[one per batch row]")
    check_inputs = getattr(steerer, "check_inputs", None)
    if check_inputs is not None:  # unknown behaviours / sample ids fail here, not in the middle of generate
        check_inputs(behaviours=behaviours, sample_ids=sample_ids)


def steerer_vectors(
    steerer: Any, context: torch.Tensor, behaviours: list[str] | None = None, sample_ids: list[str] | None = None
) -> torch.Tensor:
    """v = ``steerer.vectors(h)`` (B, D) of contexts h (B, D), without gradient: the vectors the steering hook
    scales by α and adds."""
    with torch.no_grad():
        vectors = steerer.vectors(context, behaviours=behaviours, sample_ids=sample_ids)
    if vectors.shape != context.shape:
        raise L2SInputError(
            f"steerer.vectors returned shape {tuple(vectors.shape)} for a context of shape {tuple(context.shape)}"
        )
    return vectors


class ContextCapture:
    """Forward hook on block L': at each prefill, h = output[:, -1] -> v = steerer.vectors(h) -> the steering hook.

    After a generate call, ``context`` (B, D) and ``vectors`` (B, D) hold the last prefill's h and v and
    ``prefills`` counts the prefills seen. When ``generate`` expands each of the B inputs to k rows (beam
    search, ``num_return_sequences``) and B is known (behaviours, sample ids or a (B,) α), h is read once per
    input and the steering hook gives each input's vector to its k rows.
    """

    def __init__(
        self, steerer: Any, hook: SteeringHook, behaviours: list[str] | None = None, sample_ids: list[str] | None = None
    ) -> None:
        self.steerer, self.hook = steerer, hook
        self.behaviours, self.sample_ids = behaviours, sample_ids
        self.tracker = PrefillTracker()
        self.context: torch.Tensor | None = None
        self.vectors: torch.Tensor | None = None
        self.prefills = 0

    def _inputs(self) -> int | None:
        """How many inputs the batch holds, where known: one behaviour / sample id / α per input."""
        for given in (self.behaviours, self.sample_ids):
            if given is not None:
                return len(given)
        alpha = self.hook.alpha
        return int(alpha.numel()) if isinstance(alpha, torch.Tensor) and alpha.ndim else None

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: object) -> None:
        hidden = layer_output(output)
        if not self.tracker.is_prefill(hidden, kwargs, args):
            return None
        context = hidden[:, -1].detach()
        inputs = self._inputs()
        if inputs and context.shape[0] != inputs:
            if context.shape[0] % inputs:
                raise L2SInputError(
                    f"the prefill has {context.shape[0]} rows for {inputs} inputs (behaviours, sample ids or α)"
                )
            # generate expanded each input to k rows (beams, num_return_sequences), k at a time: one h per input;
            # the steering hook gives row j the vector j // k
            context = context[:: context.shape[0] // inputs]
        self.context = context
        self.vectors = steerer_vectors(self.steerer, context, self.behaviours, self.sample_ids)
        self.hook.set_vectors(self.vectors, like=hidden)
        self.prefills += 1
        return None


def check_context_before_steering(steerer: Any, mode: str) -> None:
    """Raise an L2SInputError when ``mode`` steers a prompt position with a context read after block L*: v = g(h)
    would not be known yet when L* runs on the prompt."""
    if getattr(steerer, "needs_context", True) and mode != "generated" and steerer.layer_context > steerer.layer_steer:
        raise L2SInputError(
            f"mode={mode!r} steers a prompt position, but L'={steerer.layer_context} comes after "
            f"L*={steerer.layer_steer}: v = g(h) is not known yet when block L* runs on the prompt; "
            "use mode='generated'"
        )


@contextlib.contextmanager
def attach_steerer(
    steerer: Any,
    model: nn.Module,
    alpha: float | torch.Tensor | None = None,
    mode: Positions = "generated",
    behaviours: Sequence[str] | None = None,
    sample_ids: Sequence[str] | None = None,
    hook: SteeringHook | None = None,
    steer_tokens: int | None = None,
) -> Iterator[ContextCapture]:
    """Steer ``model`` with ``steerer`` while the context is open (see the module docstring).

    ``alpha``: the scale (default ``steerer.default_alpha``); ``mode``: ``"generated"``,
    ``"last_prompt_and_generated"`` or ``"all"``; ``behaviours`` / ``sample_ids``: one per batch row, for
    the steerers that pick vectors by them; ``hook``: the steering hook of an earlier call to reuse (its
    vectors' tensor keeps its address from batch to batch, so a compiled decode step's CUDA graph is not
    recorded again; ``capture.hook`` is the one used; not one still in use by another context). Yields the
    :class:`ContextCapture` (last h and v). ``steer_tokens``: steer only the positions producing the first k
    generated tokens (eager decoding only; :mod:`l2s_lightning.steering.hook`); None: every one.
    """
    alpha = steerer.default_alpha if alpha is None else alpha
    check_alpha(alpha)
    check_positions(mode)
    check_steer_tokens(steer_tokens, mode)
    behaviours = list(behaviours) if behaviours is not None else None
    sample_ids = list(sample_ids) if sample_ids is not None else None
    check_steerer(steerer, model, behaviours, sample_ids)
    check_context_before_steering(steerer, mode)
    needs_context = bool(getattr(steerer, "needs_context", True))
    enable_hook_guards(model)
    if hook is None:
        hook = SteeringHook(None, alpha, mode, steer_tokens=steer_tokens)
    elif hook.attached:
        raise L2SInputError(
            "this steering hook is in use by another attach_steerer context (reuse a hook once it has exited)"
        )
    else:
        hook.rearm(alpha, mode, steer_tokens)
    capture = ContextCapture(steerer, hook, behaviours, sample_ids)
    capture_layer = steerer.layer_context if needs_context else steerer.layer_steer
    hook.attached = True
    try:
        with register_hook(model, capture_layer, capture), register_hook(model, steerer.layer_steer, hook):
            yield capture
    finally:
        hook.attached = False
