"""Every shipped YAML config parses (no weights are loaded: --print_config stops after parsing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from l2s_lightning.extraction.cli import extract_main
from l2s_lightning.generation.cli import predict_main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted((CONFIGS / "extract").glob("*.yaml")), ids=lambda p: p.stem)
def test_extract_configs_parse(path, capsys):
    with pytest.raises(SystemExit) as info:
        extract_main(["--config", str(path), "--print_config"])
    assert info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "layer_steer" in printed and "writer:" in printed


@pytest.mark.parametrize("path", sorted((CONFIGS / "predict").glob("*.yaml")), ids=lambda p: p.stem)
def test_predict_configs_parse(path, capsys):
    with pytest.raises(SystemExit) as info:
        predict_main(["--config", str(path), "--print_config"])
    assert info.value.code in (0, None)
    assert "max_new_tokens" in capsys.readouterr().out


def test_paper_layers_in_configs():
    import yaml

    expected = {"llava15_7b_mmsafetybench": (15, 30), "llava15_7b_pope": (14, 14), "qwen2vl_7b_mmsafetybench": (14, 14), "qwen2vl_7b_pope": (17, 17)}
    for name, layers in expected.items():
        model = yaml.safe_load((CONFIGS / "extract" / f"{name}.yaml").read_text())["model"]
        assert (model["layer_steer"], model["layer_context"]) == layers
