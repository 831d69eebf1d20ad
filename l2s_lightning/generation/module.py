"""`SteeredGenerationModule`: generation with α·v_i added at layer L* for each sample (Trainer.predict)."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import zlib
from collections.abc import Sequence
from typing import Any, Literal, cast

import lightning as L
import torch

from l2s_lightning.data.batch_plan import DEFAULT_BATCH_SIZE, BatchPlan
from l2s_lightning.data.items import PromptItem
from l2s_lightning.errors import L2SInputError
from l2s_lightning.generation.encoding import PromptBatch, PromptEncoder
from l2s_lightning.internals import compile_on_any_device
from l2s_lightning.methods import STEERER_METHODS, MethodName
from l2s_lightning.models.layers import check_layer_range, text_config, validate_layers
from l2s_lightning.models.loading import LoadedModel, ModelSpec, load_config, load_model
from l2s_lightning.models.names import same_model
from l2s_lightning.prompts import pad_token_id, right_pad
from l2s_lightning.scoring import append_continuations
from l2s_lightning.steering.attach import check_context_before_steering
from l2s_lightning.steering.hook import SteeringHook, check_steer_tokens

Method = MethodName  # the choices of --model.method (l2s_lightning.methods)


class SteeredGenerationModule(L.LightningModule):
    """Generates an answer per prompt with one steering method.

    Args:
        model: the model to load.
        method: ``none`` (no steering), ``prompt`` (an instruction prepended to each question: the template
            set's ``prompt_baseline``, else the instruction of the sample's behaviour; an error when there
            is neither), or a steerer method (``mean``, ``mean_ba``, ``random``, ``p2s_oracle``, ``l2s``) read from
            ``steerer``.
        steerer: the steerer folder (required by steerer methods; its method must equal ``method``).
        alpha: scale of the steering vector (default: the steerer's ``default_alpha``).
        positions: where the vector is added: ``generated`` tokens only (the paper), also the
            ``last_prompt_and_generated`` token, or ``all`` positions (the authors' release).
        steer_tokens: steer only the positions that produce the first k generated tokens, then continue
            unsteered (:mod:`l2s_lightning.steering.hook`); None: every generated token. Eager decoding only
            (refused with ``compile``).
        max_new_tokens, do_sample, temperature, top_p, top_k, repetition_penalty, seed: generation settings
            (greedy by default; ``top_k`` 0: no top-k cut). Each is passed to ``generate``, so none comes from
            the model's own ``generation_config`` (Qwen2-VL's sets top_k 1 and a repetition penalty: sampling
            would stay greedy, greedy answers would be penalised). With sampling, each batch is seeded with
            :func:`sampling_seed` (``seed`` and a CRC32 of the batch's sample ids): the same on every rank and
            after a resume, so sampling is reproducible for the same batch composition (batch size and order of
            the rows), not across batch sizes.
        cache_implementation: ``dynamic`` or ``static`` KV cache.
        compile: the compiled decode path (static cache + ``torch.compile`` of each decode step, as
            transformers does on GPUs; here forced on any device; the steering hook is traced into it).
            Each graph is specialised to its shapes, as in the benchmarks: under ``Trainer.predict`` the
            static cache is sized for the run's widest row before the first batch (:meth:`use_batch_plan`)
            and the last batch is filled (``full_batches``), so a run compiles one decode graph instead of
            one per prompt width and batch size. A wider prompt grows the cache (another graph); it never
            shrinks within a run.
        static_cache_multiple: the compiled path's cache sizes are the prompt width plus ``max_new_tokens``
            rounded up to a multiple of this (larger: fewer sizes, hence compilations; but every decode step
            reads the whole cache, which at large batches costs about as much as reading the weights).
        static_cache_for_longest: size the compiled path's cache for the run's widest row before the first
            batch (one graph for the run). False: each batch grows it as far as its own width needs (a graph
            per size; narrower batches, early in a run sorted by length, read a smaller cache).
        compile_backend: the ``torch.compile`` backend of the compiled path (``eager`` traces without
            code generation: for checking graphs quickly).
        allow_other_model: apply a steerer trained on another model of the same shape.
        answer_nll: score each answer under the unsteered model (:func:`answer_nll`, one teacher-forced forward
            per batch after ``generate``, the steering hooks removed): rows get ``answer_nll`` (mean negative
            log-likelihood per answer token, nats; null for an empty answer) and ``answer_tokens``.
    """

    def __init__(
        self,
        model: ModelSpec,
        method: Method = "none",
        steerer: str | None = None,
        alpha: float | None = None,
        positions: Literal["generated", "last_prompt_and_generated", "all"] = "generated",
        steer_tokens: int | None = None,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        cache_implementation: Literal["dynamic", "static"] = "dynamic",
        compile: bool = False,
        static_cache_multiple: int = 64,
        static_cache_for_longest: bool = True,
        compile_backend: str = "inductor",
        allow_other_model: bool = False,
        answer_nll: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec = model
        self.method = method
        self.positions = positions
        self.steer_tokens = steer_tokens
        self.generation_kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": do_sample,
            "repetition_penalty": repetition_penalty,
        }
        if do_sample:
            self.generation_kwargs |= {"temperature": temperature, "top_p": top_p, "top_k": top_k}
        self.seed = seed
        self.score_answers = answer_nll
        self.cache_implementation = cache_implementation
        self.use_compile = compile  # not `self.compile`: that is nn.Module.compile()
        if static_cache_multiple < 1:
            raise L2SInputError(f"static_cache_multiple={static_cache_multiple} must be a positive number of positions")
        self.static_cache_multiple = static_cache_multiple
        self.static_cache_for_longest = static_cache_for_longest
        self.compile_backend = compile_backend
        self.static_cache_length = 0  # the compiled path's current cache size (grows, never shrinks)
        self._static_cache: tuple[tuple[int, int], Any] | None = None  # ((batch size, length), cache) of the last batch
        self.steerer = None
        if method in STEERER_METHODS:
            self.steerer = _load_steerer(steerer, method)
            self.alpha = float(self.steerer.default_alpha if alpha is None else alpha)
            _check_steerer_fits(self.steerer, model, allow_other_model)
            check_context_before_steering(self.steerer, positions)
            check_steer_tokens(steer_tokens, positions)
            if steer_tokens is not None and compile:
                raise L2SInputError(
                    f"model.steer_tokens={steer_tokens} needs eager decoding: it cannot be used with model.compile=true"
                )
        elif steerer:
            raise L2SInputError(f"method={method!r} takes no steerer (got steerer={steerer!r})")
        else:
            check_steer_tokens(steer_tokens, "all")  # unsteered: only the value is checked
            self.alpha = 0.0 if alpha is None else float(alpha)
        if not math.isfinite(self.alpha):
            raise L2SInputError(f"alpha={self.alpha!r} must be a finite number")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise L2SInputError(f"model.max_new_tokens={max_new_tokens!r} must be a whole number of at least 1")
        # one steering hook for every batch: its vectors keep their tensor (as the static cache does), which a
        # compiled decode step's CUDA graph reads in place
        self._steering_hook = (
            SteeringHook(None, self.alpha, positions, steer_tokens=steer_tokens) if self.steerer is not None else None
        )
        self.loaded: LoadedModel | None = None
        self.encoder: PromptEncoder | None = None  # the loaded model's processor and tokenizer
        self.prompt_baseline = ""  # the template set's, given by the data module (use_data)
        self.data_options: str | None = None  # the data module's options, given with it
        self.batch_plan: BatchPlan | None = None  # the plan of the current predict run
        self.shared_model = False  # the model is kept for later runs (a ModelCache): released, not moved, at the end
        self._row_settings: dict[str, Any] | None = None  # settings() of the run, for its rows

    def configure_model(self) -> None:
        """Load the model (a :class:`LoadedModel` set on ``loaded`` beforehand is used as it is) and check
        the steerer's layers against it."""
        if self.loaded is None:
            self.loaded = load_model(self.spec)
        if getattr(self, "llm", None) is not self.loaded.model:
            self.llm = self.loaded.model
            if self.steerer is not None:
                validate_layers(
                    self.llm,
                    self.spec.display_name,
                    layer_steer=self.steerer.layer_steer,
                    layer_context=self.steerer.layer_context,
                )
            if self.use_compile:
                # transformers compiles the static-cache decode step itself; the hook must be guarded in it.
                from l2s_lightning.steering import enable_hook_guards

                enable_hook_guards(self.llm)
        self.encoder = PromptEncoder.of(self.loaded, self.method)

    def use_data(self, prompt_baseline: str, data_options: str) -> None:
        """Set the instruction the ``prompt`` method puts before each question (the template set's
        ``prompt_baseline``; "": each row's behaviour instruction) and the data options every row records.
        ``PromptDataModule`` gives them first."""
        self.prompt_baseline = prompt_baseline
        self.data_options = data_options

    def collate_fn(self) -> PromptEncoder:
        """The DataLoader ``collate_fn`` that renders and encodes batches in the loader's workers (used by
        :class:`~l2s_lightning.data.datamodule.PromptDataModule`); the step then gets a :class:`PromptBatch`."""
        assert self.encoder is not None, "configure_model() has not run"
        return dataclasses.replace(self.encoder, instruction=self.prompt_baseline)

    def prompts(self, items: list[PromptItem], instruction: str = "") -> list[str]:
        """Rendered prompts; the prompt baseline puts an instruction before each question (``instruction``,
        else the template set's ``prompt_baseline``, else each item's behaviour instruction)."""
        return self.collate_fn().prompts(items, instruction)

    def steering(self, items: list[PromptItem]) -> contextlib.AbstractContextManager:
        """The steering context of a batch (a no-op for ``none`` and ``prompt``)."""
        if self.steerer is None:
            return contextlib.nullcontext()
        return self.steerer.attach(
            self.llm,
            alpha=self.alpha,
            mode=self.positions,
            steer_tokens=self.steer_tokens,
            behaviours=[item.behaviour for item in items],
            sample_ids=[item.id for item in items],
            hook=self._steering_hook,
        )

    @torch.no_grad()
    def generate(self, batch: list[PromptItem] | PromptBatch) -> tuple[list[str], list[str], list[int], list[int]]:
        """(prompts, responses, prompt token counts, new token counts) of a batch (rows, or rows already
        encoded by :meth:`collate_fn`)."""
        return self._generate(batch)[0]

    @torch.no_grad()
    def _generate(
        self, batch: list[PromptItem] | PromptBatch
    ) -> tuple[tuple[list[str], list[str], list[int], list[int]], dict[str, torch.Tensor], list[list[int]]]:
        """:meth:`generate`'s tuple, the encoded prompts (on the model's device) and each row's answer tokens
        (:func:`answer_tokens`)."""
        assert self.loaded is not None
        if not isinstance(batch, PromptBatch):
            batch = self.collate_fn()(batch)
        items, prompts, encoded = batch.items, batch.prompts, batch.encoded
        dtype = next(self.llm.parameters()).dtype
        encoded = {k: v.to(self.device, dtype=dtype if v.is_floating_point() else None) for k, v in encoded.items()}
        tokenizer = self.loaded.tokenizer
        kwargs = dict(self.generation_kwargs, pad_token_id=tokenizer.pad_token_id)
        if self.use_compile:
            kwargs |= self._compiled_path_kwargs(*encoded["input_ids"].shape)
        else:
            kwargs["disable_compile"] = True
            if self.cache_implementation == "static":
                kwargs["cache_implementation"] = "static"
        if kwargs["do_sample"]:
            torch.manual_seed(sampling_seed(self.seed, [item.id for item in items]))
        with self.steering(items):
            output = cast(Any, self.llm).generate(**encoded, **kwargs)
        width = encoded["input_ids"].shape[1]
        new = output[:, width:]
        answers = [answer_tokens(row.tolist(), stop_ids(self.llm, tokenizer)) for row in new]
        responses, counts = [], []
        for row in new:
            keep = row[row != tokenizer.pad_token_id] if tokenizer.pad_token_id is not None else row
            ids = keep.tolist()
            if tokenizer.eos_token_id is not None and tokenizer.eos_token_id in ids:
                ids = ids[: ids.index(tokenizer.eos_token_id)]
            counts.append(len(ids))
            responses.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
        prompt_tokens = encoded["attention_mask"].sum(1).tolist()
        return (prompts, responses, prompt_tokens, counts), encoded, answers

    @property
    def full_batches(self) -> bool:
        """Whether the data module should fill the last batch (part of the ``BatchPlan``): on the compiled
        path a smaller batch would compile a graph of its own."""
        return self.use_compile

    def auto_batch_size(self, widest: PromptItem) -> int:
        """``batch_size: auto``: :data:`~l2s_lightning.data.batch_plan.DEFAULT_BATCH_SIZE` (generation has no
        memory estimate)."""
        return DEFAULT_BATCH_SIZE

    def static_cache_for(self, width: int) -> int | None:
        """The compiled path's cache size for rows up to ``width`` tokens, sized before the first batch (put
        in the ``BatchPlan`` of a run); None when not compiled or without ``static_cache_for_longest``."""
        if not (self.use_compile and self.static_cache_for_longest):
            return None
        return self._cache_size(width)

    def use_batch_plan(self, plan: BatchPlan) -> None:
        """Record the run's :class:`BatchPlan` and grow the compiled path's cache to its size (one decode
        graph for the run's rows)."""
        self.batch_plan = plan
        if plan.static_cache_length is not None and plan.static_cache_length > self.static_cache_length:
            self.static_cache_length = plan.static_cache_length

    def prompt_width(self, item: PromptItem) -> int:
        """The tokens of ``item``'s encoded prompt (image tokens included): what ``PromptDataModule`` compares
        to find a run's widest item."""
        assert self.encoder is not None, "configure_model() has not run"
        return int(self.collate_fn()([item]).encoded["input_ids"].shape[1])

    def _grow_static_cache(self, width: int) -> None:
        """Grow :attr:`static_cache_length` to fit prompts ``width`` tokens wide (:meth:`_cache_size`)."""
        if width + self.generation_kwargs["max_new_tokens"] > self.static_cache_length:
            self.static_cache_length = self._cache_size(width)

    def _cache_size(self, width: int) -> int:
        """Prompt ``width`` plus ``max_new_tokens``, rounded up to a multiple of ``static_cache_multiple``."""
        needed = width + self.generation_kwargs["max_new_tokens"]
        return -(-needed // self.static_cache_multiple) * self.static_cache_multiple

    def _compiled_path_kwargs(self, batch_size: int, width: int) -> dict[str, Any]:
        """``generate`` kwargs of the compiled path for ``batch_size`` prompts ``width`` tokens wide: an empty
        static cache of :attr:`static_cache_length` positions (grown to fit, in steps of
        ``static_cache_multiple``; the previous batch's cache, emptied, when the size is the same) and a
        ``CompileConfig`` that specialises each graph to its shapes."""
        from transformers import StaticCache

        from l2s_lightning.internals import cache_kwarg

        self._grow_static_cache(width)
        key = (batch_size, self.static_cache_length)
        if self._static_cache is None or self._static_cache[0] != key:
            self._static_cache = (
                key,
                StaticCache(config=text_config(self.llm.config), max_cache_len=self.static_cache_length),
            )
        cache = self._static_cache[1]
        cache.reset()  # the same tensors for every batch of a size: CUDA graphs are not recorded again
        return {
            cache_kwarg(self.llm): cache,
            "compile_config": decode_compile_config(self.compile_backend, dynamic=False),
        }

    def settings(self, data_options: str | None = None) -> dict[str, Any]:
        """What a prediction row's answer depends on besides its question: method, α, model, the steerer (its
        digest), where it steers, the generation settings and, when given, the data module's options (question
        field, images, TYPO font: :func:`~l2s_lightning.data.datamodule.data_options`). Recorded in every row;
        a run never appends to a file made with other settings (:meth:`JsonlPredictionWriter.check_compatible`)."""
        steered = self.steerer is not None
        generation = dict(self.generation_kwargs)
        if generation["do_sample"]:
            generation["seed"] = self.seed
        return {
            "method": self.method,
            "alpha": self.alpha if steered else 0.0,
            "model": self.spec.display_name,
            "steerer_digest": self.steerer.digest if self.steerer is not None else None,
            "positions": self.positions if steered else None,
            "steer_tokens": self.steer_tokens if steered else None,
            "generation": generation,
            **({"data_options": data_options} if data_options is not None else {}),
        }

    def on_predict_start(self) -> None:
        self._row_settings = self.settings(self.data_options)  # fixed for the run

    def on_predict_end(self) -> None:
        self._static_cache = None  # free the compiled path's KV cache
        if self.shared_model:
            # the Trainer's teardown, next, moves its module to the CPU: a model kept for the next run (the 7B
            # weights) stays on its device instead of being copied off and back
            del self.llm

    def predict_step(
        self, batch: list[PromptItem] | PromptBatch, batch_idx: int, dataloader_idx: int = 0
    ) -> list[dict[str, Any]]:
        (prompts, responses, prompt_tokens, new_tokens), encoded, answers = self._generate(batch)
        if isinstance(batch, PromptBatch):
            batch = batch.items
        layer = self.steerer.layer_steer if self.steerer is not None else None
        settings = self._row_settings if self._row_settings is not None else self.settings(self.data_options)
        scores: list[dict[str, Any]] = [{} for _ in answers]
        if self.score_answers:
            # after generate: the steering context has exited, so no hook is on the model (the next batch's
            # attach_steerer registers and re-arms the module's hook again)
            assert self.loaded is not None
            nlls = answer_nll(self.llm, encoded, answers, pad_token_id(self.loaded.tokenizer))
            scores = [{"answer_nll": nll, "answer_tokens": len(ids)} for nll, ids in zip(nlls, answers)]
        return [
            self._record(item, prompt, response, n_prompt, n_new, layer, settings) | score
            for item, prompt, response, n_prompt, n_new, score in zip(
                batch, prompts, responses, prompt_tokens, new_tokens, scores
            )
            if not item.filler
        ]

    def _record(
        self,
        item: PromptItem,
        prompt: str,
        response: str,
        n_prompt: int,
        n_new: int,
        layer: int | None,
        settings: dict[str, Any],
    ) -> dict[str, Any]:
        """The output row of one sample."""
        return {
            "id": item.id,
            "category": item.category,
            "behaviour": item.behaviour,
            "benchmark": item.benchmark,
            "question": item.question,
            "prompt": prompt,
            "response": response,
            "prompt_tokens": int(n_prompt),
            "new_tokens": int(n_new),
            "label": item.label,
            "subset": item.category if item.benchmark == "pope" else "",
            "image": item.image_path,
            "layer_steer": layer,
            **settings,
        }


def stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """The tokens that end an answer: the model's ``generation_config.eos_token_id`` (one or a list: where
    ``generate`` stops) and the tokenizer's EOS (where :meth:`SteeredGenerationModule.generate` cuts the text)."""
    config = getattr(model, "generation_config", None)
    found = getattr(config, "eos_token_id", None) if config is not None else None
    ids = set(found) if isinstance(found, (list, tuple)) else {found}
    ids.add(getattr(tokenizer, "eos_token_id", None))
    return {int(i) for i in ids if i is not None}


def answer_tokens(row: Sequence[int], stops: set[int]) -> list[int]:
    """The tokens of a generated ``row`` that :func:`answer_nll` scores: up to and including its first stop
    token (what follows it is ``generate``'s padding); none when the answer is empty (it stops at once)."""
    for i, token in enumerate(row):
        if token in stops:
            return list(row[: i + 1]) if i else []
    return list(row)


@torch.no_grad()
def answer_nll(
    model: Any, encoded: dict[str, torch.Tensor], answers: Sequence[Sequence[int]], pad: int
) -> list[float | None]:
    """Mean negative log-likelihood per token (nats) of each row's ``answers`` tokens after its left-padded
    prompt ``encoded``, under ``model`` as it is (call it with no steering hook on it): one teacher-forced
    forward over prompt + answer, no cache. None for a row without answer tokens."""
    if not any(answers):
        return [None] * len(answers)
    device = encoded["input_ids"].device
    ids, lengths = (t.to(device) for t in right_pad(answers, pad))
    span = ids.shape[1]
    # the logits of the answer's positions and the prompt's last only, where the model can leave the rest out
    keep = {"logits_to_keep": span + 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    logits = model(**append_continuations(encoded, ids, lengths), **keep, use_cache=False).logits
    logits = logits[:, -span - 1 : -1].float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
    real = torch.arange(span, device=device)[None] < lengths[:, None]
    means = (nll * real).sum(1) / lengths.clamp(min=1)
    return [float(m) if n else None for m, n in zip(means.tolist(), lengths.tolist())]


def decode_compile_config(backend: str, dynamic: bool | None):
    """The ``CompileConfig`` of ``generate``'s compiled decode step: no graph break allowed, on any device
    (transformers compiles only on accelerators otherwise); ``dynamic=None``: torch's automatic dynamic shapes."""
    from transformers import CompileConfig

    return compile_on_any_device(CompileConfig(fullgraph=True, dynamic=dynamic, backend=backend))


def sampling_seed(seed: int, sample_ids: Sequence[str]) -> int:
    """The sampling seed of a batch: a CRC32 of ``seed`` and the batch's sample ids (in order). Stable across
    processes, ranks and resumes (unlike a batch index); two batches of different rows get different seeds."""
    return zlib.crc32("\x1f".join([str(seed), *sample_ids]).encode())


def _load_steerer(folder: str | None, method: str):
    from l2s_lightning.steerer import Steerer

    if not folder:
        raise L2SInputError(f"method={method!r} needs a steerer folder (--model.steerer DIR, made by `l2s fit`)")
    steerer = Steerer.load(folder)
    if steerer.method != method:
        raise L2SInputError(f"steerer {folder} holds method {steerer.method!r}, not the requested {method!r}")
    return steerer


def _check_steerer_fits(steerer, spec: ModelSpec, allow_other_model: bool = False) -> None:
    """The steerer's hidden size and layers must fit the model (checked from its config, before loading)."""
    config = text_config(load_config(spec))
    if int(config.hidden_size) != steerer.hidden_size:
        raise L2SInputError(
            f"steerer hidden size {steerer.hidden_size} does not fit model {spec.display_name} "
            f"(hidden size {config.hidden_size})"
        )
    check_layer_range(
        int(config.num_hidden_layers),
        spec.display_name,
        {"layer_steer": steerer.layer_steer, "layer_context": steerer.layer_context},
        "steerer {field}={index} is out of range for model {model} ({n} layers)",
    )
    if steerer.model and not same_model(steerer.model, spec.display_name) and not allow_other_model:
        raise L2SInputError(
            f"steerer was trained on model {steerer.model!r}, not {spec.display_name!r} "
            "(set allow_other_model=true to apply it anyway)"
        )
