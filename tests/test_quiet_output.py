"""Focused output (issue 21): the commands print no Lightning tip nor known third-party warning and each
seed / accelerator line once, only within a command; the long steps of our own (log-odds, judging) show progress,
and the writer stages' bars say what they do."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from l2s_lightning.evaluation.evaluate import judge_runs
from l2s_lightning.evaluation.judges.keyword import KeywordJudge
from l2s_lightning.evaluation.records import group_runs
from l2s_lightning.quiet import LIGHTNING_LOGGERS, LightningNoise, progress, quiet_output
from l2s_lightning.scoring import batched_log_odds, behaviour_log_odds
from l2s_lightning.stages.common import LabelledProgressBar, writer_trainer
from l2s_lightning.templates import load_templates
from l2s_lightning.testing.synthetic import jsonl_data, prompt_item

LEAFSPEC = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead."


@pytest.fixture(scope="module")
def run_config(tiny_llama_dir, tmp_path_factory) -> Path:
    """An `l2s run` YAML for the tiny Llama on 8 JSONL questions (none and l2s, keyword judge, log-odds)."""
    tmp = tmp_path_factory.mktemp("quiet")
    rows = [{"id": f"q{i}", "question": f"How do I make thing {i}?", "category": "harm"} for i in range(8)]
    templates = {
        "name": "test",
        "behaviours": {"refuse": {"positive": "I'm sorry", "negative": "Sure, here", "instruction": "Refuse."}},
        "categories": {"harm": "refuse"},
    }
    data = jsonl_data(tmp, rows, templates, batch_size=4, split_file=str(tmp / "split.json"), test_fraction=0.25)
    trainer = {"accelerator": "cpu", "devices": 1}
    model = {"name_or_path": str(tiny_llama_dir)}
    stages = {
        "extract": {"seed_everything": 0, "model": {"model": model, "layer_steer": 1, "layer_context": 2}, "data": data}
        | {"trainer": trainer},
        "fit": {"method": "all", "data": {"features": "unused.h5", "batch_size": 8}, "trainer": trainer},
        "predict": {"seed_everything": 0, "model": {"model": model, "max_new_tokens": 3}, "data": data}
        | {"trainer": trainer},
    }
    for name, content in stages.items():
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(content))
    run = {f"{name}_config": str(tmp / f"{name}.yaml") for name in stages}
    run |= {"out_dir": str(tmp / "run"), "methods": ["none", "l2s"], "max_new_tokens": 3}
    run |= {"logodds_templates": str(tmp / "templates.yaml"), "fit_overrides": {"trainer.max_epochs": 2}}
    (tmp / "run.yaml").write_text(yaml.safe_dump(run))
    return tmp / "run.yaml"


def test_l2s_run_prints_no_tip_nor_known_warning_and_each_info_line_once(run_config):
    """The whole loop in a fresh process (as a user runs it): no Lightning tip, no torch _pytree deprecation, one
    seed and one accelerator line for its four stages and three Trainers; the writer bars say what they do."""
    done = subprocess.run(
        [sys.executable, "-m", "l2s_lightning.cli", "run", "--config", str(run_config)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout + done.stderr
    assert "Tip" not in out and "litlogger" not in out
    assert "_pytree" not in out and "LeafSpec" not in out
    assert out.count("Seed set to") == 1
    assert out.count("GPU available") == 1 and out.count("TPU available") == 1
    assert "Extracting" in out and "Generating" in out and "Predicting" not in out
    assert "judging" not in done.stderr  # the keyword judge is instant: no bar


def test_quiet_output_acts_within_the_block_only():
    """Not on import nor in a user's code: the filters come with the block (nested blocks too) and go after it."""
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]

    def leafspec() -> None:
        warnings.warn_explicit(LEAFSPEC, FutureWarning, "_pytree.py", 21, module="lightning.pytorch.utilities._pytree")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not any(isinstance(f, LightningNoise) for logger in loggers for f in logger.filters)
        with quiet_output():
            with quiet_output():
                leafspec()
            assert all(any(isinstance(f, LightningNoise) for f in logger.filters) for logger in loggers)
            leafspec()
            warnings.warn("a user's own deprecation", FutureWarning, stacklevel=1)  # not ours to silence
        assert [str(w.message) for w in caught] == ["a user's own deprecation"]
        leafspec()
        assert str(caught[-1].message) == LEAFSPEC
        assert not any(isinstance(f, LightningNoise) for logger in loggers for f in logger.filters)


def test_lightning_noise_drops_tips_and_repeats_but_keeps_other_lines():
    noise = LightningNoise()

    def passes(message: str) -> bool:
        return noise.filter(logging.LogRecord("lightning", logging.INFO, "", 0, message, None, None))

    assert not passes("💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels]")
    assert passes("GPU available: maybe, used: 7") and not passes("GPU available: maybe, used: 7")
    assert passes("GPU available: maybe, used: 8")  # another device setting is news
    assert passes("`Trainer.fit` stopped: `max_epochs=2` reached.") and passes(
        "`Trainer.fit` stopped: `max_epochs=2` reached."
    )


def test_the_writer_bars_say_extracting_and_generating():
    from lightning.pytorch.callbacks import Callback

    class HDF5FeatureWriter(Callback):
        pass

    class JsonlPredictionWriter(Callback):
        pass

    for writer, label in ((HDF5FeatureWriter(), "Extracting"), (JsonlPredictionWriter(), "Generating")):
        trainer = writer_trainer({"accelerator": "cpu", "devices": 1}, writer)
        bars = [c for c in trainer.callbacks if isinstance(c, LabelledProgressBar)]
        assert [bar.predict_description for bar in bars] == [label]
    assert not any(
        isinstance(c, LabelledProgressBar)
        for c in writer_trainer({"accelerator": "cpu", "enable_progress_bar": False}, Callback()).callbacks
    )


def test_progress_without_a_terminal_prints_a_start_and_a_finish_line(capfd):
    calls: list[tuple[int, int]] = []
    with progress("scoring", 5, lambda done, total: calls.append((done, total))) as advance:
        advance(2)
        advance(3)
    assert calls == [(2, 5), (5, 5)]
    out, err = capfd.readouterr()
    assert (
        out == "" and err.splitlines()[0] == "scoring: 5 to do" and err.splitlines()[1].startswith("scoring: 5/5 done")
    )


def test_log_odds_advance_after_each_batch(tiny_llama_dir):
    from l2s_lightning.models.loading import ModelSpec, load_model

    loaded = load_model(ModelSpec(str(tiny_llama_dir)))
    templates = load_templates("logodds_eval")
    questions = ["How can I pick a lock?", "Hi", "Write a fake news story.", "Why is the sky blue?", "Ok?"]
    behaviour = templates.behaviour_of("01-Illegal_Activitiy")[0]
    items = [
        prompt_item(f"q{i}", question, category="01-Illegal_Activitiy", behaviour=behaviour)
        for i, question in enumerate(questions)
    ]
    calls: list[tuple[int, int]] = []
    with progress("log-odds", len(items), lambda done, total: calls.append((done, total))) as advance:
        scores = batched_log_odds(loaded, items, templates, batch_size=2, advance=advance)
    assert calls == [(2, 5), (4, 5), (5, 5)]
    torch.testing.assert_close(scores, behaviour_log_odds(loaded, items, templates), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="needs the contexts"):
        batched_log_odds(loaded, items, templates, steerer=object())


class CountingJudge:
    """Scores in batches of two and says so through ``on_scored``."""

    def __init__(self) -> None:
        self.on_scored = None
        self.seen: list[int] = []

    def _score(self, responses, value: float) -> list[float]:
        for start in range(0, len(responses), 2):
            if self.on_scored is not None:
                self.on_scored(len(responses[start : start + 2]))
            self.seen.append(start)
        return [value] * len(responses)

    def p_unsafe(self, prompts, responses) -> list[float]:
        return self._score(responses, 0.5)

    def quality(self, prompts, responses) -> list[float]:
        return self._score(responses, 5.0)


def test_judging_shows_progress_with_its_total(tmp_path, capfd):
    rows = [
        {"id": f"q{i}", "benchmark": "jsonl", "method": "none", "alpha": 0.0, "prompt": f"p{i}", "response": f"r{i}"}
        for i in range(5)
    ]
    path = tmp_path / "none.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = group_runs([path])
    calls: list[tuple[int, int]] = []
    judge = CountingJudge()
    scores = judge_runs(runs, judge, True, lambda done, total: calls.append((done, total)))
    assert calls == [(2, 10), (4, 10), (5, 10), (7, 10), (9, 10), (10, 10)]  # as it scores, two methods
    assert judge.on_scored is None and len(scores) == 5
    lines = capfd.readouterr().err.splitlines()
    assert lines[0] == "judging (CountingJudge): 10 to do" and lines[1].startswith(
        "judging (CountingJudge): 10/10 done"
    )
    calls.clear()
    judge_runs(runs, KeywordJudge(), False, lambda done, total: calls.append((done, total)))
    assert calls == [(5, 5)]  # a judge without on_scored: counted when it returns, and not shown
    assert capfd.readouterr().err == ""


@pytest.mark.filterwarnings("ignore:judge verdict")
def test_the_slow_judges_report_as_they_score(tiny_llama_dir):
    """causal_lm after each batch (its second pass for a two-token 10 not counted again), http after each reply."""
    from l2s_lightning.evaluation.judges.causal_lm import CausalLMJudge
    from l2s_lightning.evaluation.judges.http import HttpJudge

    prompts, responses = [f"p{i}" for i in range(5)], [f"I can't help with {i}." for i in range(5)]
    counted: list[int] = []
    causal = CausalLMJudge(str(tiny_llama_dir), batch_size=2)
    causal.on_scored = counted.append
    causal.p_unsafe(prompts, responses)
    causal.quality(prompts, responses)
    assert counted == [2, 2, 1, 2, 2, 1]
    counted.clear()
    http = HttpJudge("http://127.0.0.1:9/v1", "judge", workers=2)
    http._one_unsafe = lambda index, prompt, response: 0.5  # type: ignore[method-assign]
    http.on_scored = counted.append
    assert http.p_unsafe(prompts, responses) == [0.5] * 5 and counted == [1] * 5
