"""Every shipped YAML config parses (no weights are loaded: --print_config stops after parsing), and each
(model, benchmark) extract → fit → predict triple chains: same files, layers and model name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from l2s_lightning.extraction.cli import extract_main
from l2s_lightning.generation.cli import predict_main
from l2s_lightning.models.loading import ModelSpec
from l2s_lightning.training.cli import fit_main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# (extract, fit, predict) config stems of each chain
TRIPLES = {
    "llava15_7b_mmsafetybench": ("llava15_7b_mmsafetybench",) * 3,
    "llava15_7b_pope": ("llava15_7b_pope",) * 3,
    "qwen2vl_7b_mmsafetybench": ("qwen2vl_7b_mmsafetybench",) * 3,
    "qwen2vl_7b_pope": ("qwen2vl_7b_pope",) * 3,
    "smollm2": ("smollm2_mmsafetybench", "smollm2", "smollm2_mmsafetybench"),
}
# paper values: (hidden size D, decoder layers, lr, default α)
PAPER = {
    "llava15_7b_mmsafetybench": (4096, 32, 1e-4, 2.2),
    "llava15_7b_pope": (4096, 32, 5e-5, 1.0),
    "qwen2vl_7b_mmsafetybench": (3584, 28, 1e-4, 2.2),
    "qwen2vl_7b_pope": (3584, 28, 5e-5, 1.0),
}


def printed(main, path: Path, capsys) -> dict:
    """The config ``main`` resolves from ``path`` (its --print_config output)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["--config", str(path), "--print_config"])
    assert info.value.code in (0, None), f"{path} does not parse"
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("path", sorted((CONFIGS / "extract").glob("*.yaml")), ids=lambda p: p.stem)
def test_extract_configs_parse(path, capsys):
    config = printed(extract_main, path, capsys)
    assert "layer_steer" in config["model"] and config["writer"]["output"]


@pytest.mark.parametrize("path", sorted((CONFIGS / "predict").glob("*.yaml")), ids=lambda p: p.stem)
def test_predict_configs_parse(path, capsys):
    assert printed(predict_main, path, capsys)["model"]["max_new_tokens"] > 0


def test_paper_layers_in_configs():
    expected = {
        "llava15_7b_mmsafetybench": (15, 30),
        "llava15_7b_pope": (14, 14),
        "qwen2vl_7b_mmsafetybench": (14, 14),
        "qwen2vl_7b_pope": (17, 17),
    }
    for name, layers in expected.items():
        model = yaml.safe_load((CONFIGS / "extract" / f"{name}.yaml").read_text())["model"]
        assert (model["layer_steer"], model["layer_context"]) == layers


def test_every_fit_config_is_in_a_chain():
    assert sorted(p.stem for p in (CONFIGS / "fit").glob("*.yaml")) == sorted(fit for _, fit, _ in TRIPLES.values())


@pytest.mark.parametrize("name", sorted(TRIPLES))
def test_extract_fit_predict_configs_chain(name, capsys):
    extract_stem, fit_stem, predict_stem = TRIPLES[name]
    extract = printed(extract_main, CONFIGS / "extract" / f"{extract_stem}.yaml", capsys)
    fit = printed(fit_main, CONFIGS / "fit" / f"{fit_stem}.yaml", capsys)
    predict = printed(predict_main, CONFIGS / "predict" / f"{predict_stem}.yaml", capsys)
    out_dir = Path(fit["out_dir"])
    data = fit["data"]
    # fit reads what extract writes, refusing features of another model or other layers
    assert data["features"] == extract["writer"]["output"]
    model_name = ModelSpec(**extract["model"]["model"]).display_name
    assert data["model_name"] == model_name == ModelSpec(**predict["model"]["model"]).display_name
    assert (data["layer_steer"], data["layer_context"]) == (
        extract["model"]["layer_steer"],
        extract["model"]["layer_context"],
    )
    # predict reads fit's steerers and writes next to them, on the split and templates of the extraction
    if predict["model"]["steerer"] is not None:
        assert Path(predict["model"]["steerer"]).parent == out_dir / "steerers"
    assert Path(predict["writer"]["output"]).is_relative_to(out_dir)
    assert Path(extract["writer"]["output"]).parent == out_dir
    for key in ("split_file", "templates", "test_fraction", "split_seed"):
        assert predict["data"][key] == extract["data"][key], key
    assert predict["data"]["source"] == extract["data"]["source"]
    if name in PAPER:
        dim, n_layers, lr, alpha = PAPER[name]
        assert data["hidden_size"] == dim and max(data["layer_steer"], data["layer_context"]) < n_layers
        assert (fit["model"]["hidden"], fit["model"]["activation"], fit["model"]["lr"]) == (100, "tanh", lr)
        assert fit["trainer"]["max_epochs"] == 100 and fit["model"]["cosine"] and fit["model"]["plateau_factor"] < 1
        # predict takes the steerer's default_alpha: fit's paper α, or what `l2s sweep` chose
        assert fit["default_alpha"] == alpha and predict["model"]["alpha"] is None
