"""The prompt h is read from, as the tokens it shares with the steering prompt plus a short tail of its own.

With a template suffix the steering prompt is question + suffix while h is read from the plain question:
two prompts that share their image and question tokens and differ only from the suffix on. A causal model
computes the same hidden states (and KV cache) for equal tokens at equal positions whatever follows them,
so the plain prompt need not be encoded again: its tail runs on the steering prompt's cache, attending to
the shared positions only. The split is made on tokens, per row, not on text, so tokenizer merges across
the suffix boundary cannot make the tail differ from the prompt it comes from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from l2s_lightning.errors import L2SInputError
from l2s_lightning.prompts import PER_TOKEN_KEYS


@dataclass
class ContextSplit:
    """Row i of the context prompt is the first ``shared[i]`` tokens of row i of the steering prompt,
    followed by ``tails[i]`` (at least one token: the last one, where h is read)."""

    shared: list[int]
    tails: list[list[int]]


def unpadded_rows(encoded: Mapping[str, torch.Tensor], key: str = "input_ids") -> list[list[int]]:
    """The real (attention-masked) tokens of each row of ``encoded[key]``, padding dropped."""
    mask = encoded["attention_mask"].bool()
    return [row[keep].tolist() for row, keep in zip(encoded[key], mask)]


def shared_length(first: list[int], second: list[int]) -> int:
    """How many leading tokens the two rows share, leaving ``second`` at least one token of its own."""
    limit = min(len(first), len(second) - 1)
    n = 0
    while n < limit and first[n] == second[n]:
        n += 1
    return n


def split_context_prompt(
    prompt: Mapping[str, torch.Tensor], context: Mapping[str, torch.Tensor], image_token_id: int | None = None
) -> ContextSplit:
    """Split each row of the ``context`` encoding into the tokens it shares with the same row of ``prompt``
    and its own tail.

    The tail runs without pixels, so image tokens and multimodal token types must lie in the shared part
    (the image comes before the question in every chat template used here); a ValueError names the row
    where they do not.
    """
    prompt_rows, context_rows = unpadded_rows(prompt), unpadded_rows(context)
    if len(prompt_rows) != len(context_rows):
        raise L2SInputError(f"the prompt and context encodings hold {len(prompt_rows)} and {len(context_rows)} rows")
    shared = [shared_length(a, b) for a, b in zip(prompt_rows, context_rows)]
    for key in PER_TOKEN_KEYS[2:]:
        if key in context:
            for i, (row, n) in enumerate(zip(unpadded_rows(context, key), shared)):
                if any(row[n:]):
                    raise L2SInputError(
                        f"row {i}: the context prompt has {key} set after the tokens it shares (token {n} on)"
                    )
    for i, (row, n) in enumerate(zip(context_rows, shared)):
        if image_token_id is not None and image_token_id in row[n:]:
            raise L2SInputError(
                f"row {i}: an image token of the context prompt lies after the tokens it shares (token {n} on)"
            )
    return ContextSplit(shared=shared, tails=[row[n:] for row, n in zip(context_rows, shared)])


def shared_positions_mask(attention_mask: torch.Tensor, shared: list[int]) -> torch.Tensor:
    """(B, W) mask of the first ``shared[i]`` real positions of each row of a padded batch."""
    real_before = attention_mask.long().cumsum(dim=1)  # 1-based rank of each real position
    limit = torch.tensor(shared, dtype=torch.long)[:, None]
    return ((attention_mask != 0) & (real_before <= limit)).to(attention_mask.dtype)
