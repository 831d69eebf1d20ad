"""The step-level steering overhead of bench/generation.py: the cache rewind makes every timed step the same
work, and the hook steers every step after its first (the prefill), as in ``generate``; and the random shapes
the benches build (``--text-layers``); and bench/generation_predict.py's comparison of compiled-path policies."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import generation  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return common.build_shape("tiny", device="cpu")


@pytest.mark.parametrize("path", ["dynamic", "static"])
def test_rewound_decode_step_repeats_exactly(tiny, path):
    step = generation.prefilled_step(tiny, generation.make_inputs(tiny, 2, 8, seed=0), path)
    first = step()  # raises unless the rewind left the prompt's length
    torch.testing.assert_close(step(), first)


@pytest.mark.parametrize("path", ["dynamic", "static"])
def test_decode_step_overhead_steers_every_timed_step(tiny, path):
    inputs = generation.make_inputs(tiny, 2, 8, seed=0)
    vectors = generation.make_vectors(tiny, 2, 10.0, seed=0)
    result = generation.decode_step_overhead(tiny, inputs, path, 2, vectors, 1.0, pairs=3, warmup=1)
    assert result["steered_steps"] == result["expected_steered_steps"] == 1 + 1 + 3
    assert result["step_logits_changed"] and result["steering_active"]
    assert result["plain_step_ms"] > 0 and result["steered_step_ms"] > 0


def test_call_order_is_balanced():
    names = ["plain", "steered", "control"]
    orders = [generation.call_order(names, r) for r in range(6)]
    for name in names:
        assert sorted(order.index(name) for order in orders) == [0, 0, 1, 1, 2, 2]
    assert generation.call_order(names[:2], 1) == ["steered", "plain"]


def test_text_layers_keeps_the_shape_widths():
    cut = common.build_shape("tiny", device="cpu", text_layers=3)
    full = common.llava_config("tiny")
    assert cut.num_layers == 3 and cut.name == "tiny-3layers"
    assert cut.hidden_size == full.text_config.hidden_size
    with pytest.raises(ValueError, match="text_layers=0"):
        common.llava_config("tiny", text_layers=0)
    args = argparse.Namespace(model="smollm2", text_layers=2, threads=None, device=None, dtype=None)
    with pytest.raises(SystemExit, match="--text-layers applies to the random shapes"):
        common.build(args)


def test_generation_predict_bench_compares_the_cache_policies(tmp_path):
    """bench/generation_predict.py on the tiny shape (dynamo only, 3 batches of MM-SafetyBench test questions of
    several widths, the last one short): the product's path compiles one graph, transformers' defaults more,
    with the same greedy responses; every question gets its row (the script checks), figures are saved."""
    import json

    import generation_predict

    results = tmp_path / "figures.json"
    assert (
        generation_predict.main(
            [
                "--shape",
                "tiny",
                "--device",
                "cpu",
                "--backend",
                "eager",
                "--n-samples",
                "20",
                "--batch-size",
                "8",
                "--new-tokens",
                "3",
                "--workers",
                "0",
                "--results",
                str(results),
            ]
        )
        == 0
    )
    figures = json.loads(results.read_text())["figures"]
    ours, per_call = figures["generation_predict/tiny/ours"], figures["generation_predict/tiny/per-call"]
    assert ours["graphs"] == 1 and per_call["graphs"] > 1 and ours["rows"] == per_call["rows"] > 16
    assert ours["static_cache_length"] % 64 == 0 and ours["static_cache_length"] >= ours["prompt_tokens"][1] + 3
    ratio = figures["generation_predict/tiny/ours_over_per-call"]
    assert ratio["same_responses"] == 1.0 and ratio["value"]["graphs"] == [1, per_call["graphs"]]
    with pytest.raises(SystemExit, match="unknown policies"):
        generation_predict.main(["--policies", "ours,fast"])


def test_sweep_runs_bench_loads_once_with_the_shared_cache(tmp_path):
    """bench/sweep_runs.py on the tiny shape (dynamo only; no steering then α = 1 and 2, one batch each): every
    run loads the model without the cache and the shared cache loads it once, with the same responses and the
    same 2 decode graphs (unsteered, steered) either way; figures are saved."""
    import json

    import sweep_runs

    results = tmp_path / "figures.json"
    assert (
        sweep_runs.main(
            [
                "--shape",
                "tiny",
                "--device",
                "cpu",
                "--backend",
                "eager",
                "--alphas",
                "1,2",
                "--n-samples",
                "13",
                "--batch-size",
                "16",
                "--new-tokens",
                "2",
                "--results",
                str(results),
            ]
        )
        == 0
    )
    figures = json.loads(results.read_text())["figures"]
    separate, shared = (figures[f"sweep_runs/tiny/compiled/{mode}"] for mode in ("separate", "shared"))
    assert separate["loads"] == 3 and shared["loads"] == 1 and separate["graphs"] == shared["graphs"] == 2
    assert list(shared["run_s"]) == ["none", "alpha1", "alpha2"] and shared["rows"] == 13
    ratio = figures["sweep_runs/tiny/compiled/shared_over_separate"]
    assert ratio["same_responses"] is True and ratio["loads"] == [1, 3] and ratio["value"] > 0
    with pytest.raises(SystemExit, match="choose from"):
        sweep_runs.main(["--modes", "shared,fast"])
