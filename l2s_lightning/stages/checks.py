"""Checks made before any work: the rows of a data source against the evaluation and log-odds settings (``l2s
run``, ``l2s sweep``), and the questions' length against the model's context (extract, predict)."""

from __future__ import annotations

from typing import Any

from l2s_lightning.data.datamodule import PromptDataModule
from l2s_lightning.errors import L2SInputError
from l2s_lightning.evaluation.config import EvalConfig
from l2s_lightning.models.layers import text_config
from l2s_lightning.models.loading import ModelSpec, load_config, load_tokenizer
from l2s_lightning.stages.common import PromptDataSettings


def data_rows(data: PromptDataSettings) -> Any:
    """The rows of ``data.source`` (a ``datasets.Dataset``), read as ``data.use_images`` says."""
    from l2s_lightning.data.datamodule import source_for_images

    return source_for_images(data.source, data.use_images).load()


def check_logodds_templates(templates: str | None, rows: Any, where: str = "l2s run") -> None:
    """The log-odds ``templates`` have a behaviour for every category of the data ``rows`` (the default
    ``logodds_eval`` covers MM-SafetyBench's scenarios only); None: no log-odds, nothing to check."""
    if not templates:
        return
    from l2s_lightning.templates import load_templates

    template_set = load_templates(templates)
    for category, sample_id in dict(zip(rows["category"], rows["id"])).items():
        try:
            template_set.behaviour_of(category, sample_id)
        except ValueError as err:
            raise L2SInputError(
                f"{where}: logodds_templates: {err}; give templates covering the data, or logodds_templates: null"
            ) from None


def check_safety_categories(eval_config: EvalConfig, rows: Any, where: str) -> None:
    """Each entry of the evaluation's ``unsafe_scenarios`` / ``ed_scenarios`` names a category of the data
    ``rows`` (or, for MM-SafetyBench data, a scenario); POPE data is not checked. A category that the test split or
    ``data.categories`` leaves out passes here and fails at the evaluation. Errors start with ``where``."""
    from l2s_lightning.evaluation.safety import group_of

    grouped = (  # as the evaluation will group them
        group_of(category, benchmark == "mm_safetybench")
        for category, benchmark in zip(rows["category"], rows["benchmark"])
        if benchmark in ("mm_safetybench", "jsonl")
    )
    present = {group for group in grouped if group is not None}
    if not present:
        return
    try:
        eval_config.safety.check_categories(present)
    except ValueError as err:
        raise L2SInputError(f"{where}: {err}") from None


CHAT_MARGIN = 64  # tokens kept free for the chat template and a template suffix around a question


def check_question_lengths(data: PromptDataModule, spec: ModelSpec, new_tokens: int) -> None:
    """Before the model loads: every question fits the model's context with ``new_tokens`` tokens to follow and
    :data:`CHAT_MARGIN` for the chat markup (refused or cut, as ``data.long_questions`` says); a model whose
    config names no context length is not checked."""
    context = getattr(text_config(load_config(spec)), "max_position_embeddings", None)
    if not isinstance(context, int):
        return
    data.fit_questions(load_tokenizer(spec), max(context - new_tokens - CHAT_MARGIN, 1), context)
