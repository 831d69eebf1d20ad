"""`l2s predict` end to end on a tiny Llama: every method, JSONL rows, resume, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from l2s_lightning.data.batch_plan import BatchPlan
from l2s_lightning.extraction.cli import extract_main
from l2s_lightning.generation import writer as writer_module
from l2s_lightning.generation.cli import predict_main
from l2s_lightning.methods import ALL_METHODS as METHODS
from l2s_lightning.methods import STEERER_METHODS as STEERING
from l2s_lightning.steerer import Steerer
from l2s_lightning.training.cli import fit_main


def templates(
    instructions: dict[str, str] | None = None, baseline: str = "Refuse harmful requests.", harm: str = "refuse"
) -> str:
    """The test template YAML: per-behaviour instructions, ``prompt_baseline`` and the behaviour of category `harm`."""
    behaviours = {
        "refuse": {"positive": "I'm sorry, I can't", "negative": "Sure, here is"},
        "consult": {"positive": "Please consult a lawyer", "negative": "The answer is"},
        "warn": {"positive": "Be careful:", "negative": "Easy:"},
    }
    for name, text in ({"refuse": "Refuse."} if instructions is None else instructions).items():
        behaviours[name]["instruction"] = text
    spec = {"name": "test", "behaviours": behaviours, "categories": {"harm": harm, "legal": "consult"}}
    return yaml.safe_dump(spec | ({"prompt_baseline": baseline} if baseline else {}))


@pytest.fixture(scope="module")
def fitted(tiny_llama_dir, tmp_path_factory) -> Path:
    """Features of 24 JSONL questions (train + test), and every steerer fitted on them."""
    tmp = tmp_path_factory.mktemp("predict")
    rows = [
        {"id": f"q{i:02d}", "question": f"Question {i}: how do I make thing {i}?", "category": ["harm", "legal"][i % 2]}
        for i in range(24)
    ]
    (tmp / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp / "templates.yaml").write_text(templates())
    extract_main(
        [
            *data_args(tmp),
            f"--model.model.name_or_path={tiny_llama_dir}",
            "--model.layer_steer=1",
            "--model.layer_context=2",
            f"--writer.output={tmp / 'features.h5'}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    fit_main(
        [
            f"--data.features={tmp / 'features.h5'}",
            "--method=all",
            f"--out_dir={tmp}",
            "--trainer.max_epochs=3",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--data.batch_size=8",
            "--default_alpha=4.0",
        ]
    )
    return tmp


def data_args(tmp: Path) -> list[str]:
    return [
        "--data.source=l2s_lightning.data.sources.JsonlSource",
        f"--data.source.path={tmp / 'data.jsonl'}",
        f"--data.templates={tmp / 'templates.yaml'}",
        f"--data.split_file={tmp / 'split.json'}",
        "--data.use_images=false",
        "--data.batch_size=4",
        "--data.test_fraction=0.25",
    ]


def predict_args(model_dir: Path, tmp: Path, method: str, output: Path, *extra: str) -> list[str]:
    args = [
        *data_args(tmp),
        f"--model.model.name_or_path={model_dir}",
        f"--model.method={method}",
        "--model.max_new_tokens=5",
        f"--writer.output={output}",
        "--trainer.enable_progress_bar=false",
        *extra,
    ]
    if method not in {"none", "prompt"}:
        args.append(f"--model.steerer={tmp / 'steerers' / method}")
    return args


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def same_rows(a: list[dict], b: list[dict]) -> bool:
    """Rows equal but for ``answer_nll``, equal within float error: a batch of other rows or size (batch size 1,
    a compiled run's filled last batch) scores an answer with other rounding."""
    plain = [[{k: v for k, v in row.items() if k != "answer_nll"} for row in rows] for rows in (a, b)]
    pairs = [(x.get("answer_nll"), y.get("answer_nll")) for x, y in zip(a, b)]
    close = all(x == y if None in (x, y) else math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6) for x, y in pairs)
    return plain[0] == plain[1] and close


def test_every_method_writes_one_row_per_test_sample(tiny_llama_dir, fitted):
    outputs = {}
    for method in METHODS:
        out = fitted / "pred" / f"{method}.jsonl"
        assert predict_main(predict_args(tiny_llama_dir, fitted, method, out)) == 0
        outputs[method] = read(out)
    test_ids = sorted(json.loads((fitted / "split.json").read_text())["test"])
    for method, rows in outputs.items():
        assert [r["id"] for r in rows] == test_ids
        row = rows[0]
        assert row["method"] == method and row["benchmark"] == "jsonl" and row["new_tokens"] <= 5
        assert {"prompt", "response", "prompt_tokens", "category", "behaviour", "alpha", "model"} <= set(row)
    assert all("Refuse harmful requests." in r["prompt"] for r in outputs["prompt"])
    assert all(a["prompt"] != b["prompt"] for a, b in zip(outputs["none"], outputs["prompt"]))
    assert all(a["prompt"] == b["prompt"] for a, b in zip(outputs["none"], outputs["l2s"]))
    assert outputs["mean"][0]["alpha"] == 4.0  # the steerer's default α
    for method in STEERING:  # α = 4 moves every method's answers on the tiny model (α = 1 already does)
        changed = sum(a["response"] != b["response"] for a, b in zip(outputs["none"], outputs[method]))
        assert changed > 0, f"{method} at α=4 changed no response"


def test_batched_equals_batch_size_one(tiny_llama_dir, fitted):
    out = {size: fitted / "pred_batch" / f"l2s_{size}.jsonl" for size in (1, 4)}
    for size, path in out.items():
        predict_main(
            predict_args(tiny_llama_dir, fitted, "l2s", path, f"--data.batch_size={size}", "--model.max_new_tokens=8")
        )
    assert same_rows(read(out[1]), read(out[4]))
    assert len({r["prompt_tokens"] for r in read(out[4])}) > 1  # prompts of several lengths: batches were left-padded


@pytest.mark.parametrize("method", ["prompt", "l2s"])
def test_prompts_encoded_in_loader_workers_give_the_same_rows(tiny_llama_dir, fitted, method):
    """Batches rendered and encoded by 2 loader workers (the module's collate_fn, the prompt baseline's
    instruction included) give the rows of batches encoded in the main process."""
    out = {workers: fitted / "pred_workers" / f"{method}_{workers}.jsonl" for workers in (0, 2)}
    for workers, path in out.items():
        assert predict_main(predict_args(tiny_llama_dir, fitted, method, path, f"--data.num_workers={workers}")) == 0
    assert read(out[0]) == read(out[2]) and len(read(out[0])) == 6
    assert method != "prompt" or all("Refuse harmful requests." in r["prompt"] for r in read(out[2]))


def test_compiled_predict_equals_eager_with_one_graph(tiny_llama_dir, fitted, monkeypatch):
    """`--model.compile true` (dynamo with the eager backend, to keep the test short): the rows of the eager
    path, with a single decode graph for the run although prompt widths differ and 6 rows make a full batch of
    4 and a last batch of 2 (filled with 2 copies of the last row, whose outputs are dropped). Every batch's
    steering vectors go into one tensor (a CUDA graph would read it in place)."""
    import torch
    from torch._dynamo.utils import counters

    from l2s_lightning.steering.hook import SteeringHook

    vector_tensors = []
    set_vectors = SteeringHook.set_vectors

    def recording(self, *args, **kwargs):
        set_vectors(self, *args, **kwargs)
        vector_tensors.append(self.delta)

    monkeypatch.setattr(SteeringHook, "set_vectors", recording)

    eager, compiled = fitted / "pred_compile" / "eager.jsonl", fitted / "pred_compile" / "compiled.jsonl"
    predict_main(predict_args(tiny_llama_dir, fitted, "l2s", eager, "--model.max_new_tokens=8"))
    torch._dynamo.reset()
    counters.clear()
    try:
        assert (
            predict_main(
                predict_args(
                    tiny_llama_dir,
                    fitted,
                    "l2s",
                    compiled,
                    "--model.max_new_tokens=8",
                    "--model.compile=true",
                    "--model.compile_backend=eager",
                )
            )
            == 0
        )
        assert counters["stats"]["unique_graphs"] == 1 and sum(counters["graph_break"].values()) == 0
        compiled_tensors = vector_tensors[-2:]
        assert len(compiled_tensors) == 2 and compiled_tensors[0] is compiled_tensors[1]
    finally:
        torch._dynamo.reset()
    assert same_rows(read(compiled), read(eager)) and len(read(eager)) == 6
    assert len({r["prompt_tokens"] for r in read(eager)}) > 1


def test_runs_sharing_a_model_cache_load_once_and_give_the_rows_of_separate_runs(tiny_llama_dir, fitted):
    """`l2s run` / `l2s sweep` pass one ModelCache to their predict runs: the model loads once, and no state
    (steering hooks, the prompt baseline, the static cache) leaks from one run into the next."""
    from l2s_lightning.models.loading import ModelCache

    models = ModelCache()
    runs = [
        ("none", ()),
        ("l2s", ()),
        ("prompt", ()),
        ("mean", ()),
        ("l2s", ("--model.alpha=1.0",)),
        ("none", ("--model.cache_implementation=static",)),
    ]
    for i, (method, extra) in enumerate(runs):
        alone, shared = (fitted / "pred_shared" / f"{kind}{i}.jsonl" for kind in ("alone", "shared"))
        predict_main(predict_args(tiny_llama_dir, fitted, method, alone, *extra))
        predict_main(predict_args(tiny_llama_dir, fitted, method, shared, *extra), models=models)
        assert read(shared) == read(alone) and len(read(alone)) == 6, (method, extra)
    assert models.loads == 1
    # the Trainer's teardown moves its module to the CPU; the shared model is released first, so nothing moves it
    # (on a GPU: no copy of the weights off the device and back between runs)
    model = models.get(models._loaded.spec).model
    applied = []
    model._apply = lambda fn, *args, **kwargs: applied.append(fn.__qualname__)  # Module.cpu() / .to() go through _apply
    predict_main(predict_args(tiny_llama_dir, fitted, "none", fitted / "pred_shared" / "moved.jsonl"), models=models)
    del model._apply
    assert applied == ["Module.to.<locals>.convert"]  # to the Trainer's device at the start; no Module.cpu() at the end
    assert len(read(fitted / "pred_shared" / "moved.jsonl")) == 6
    done = fitted / "pred_shared" / "shared0.jsonl"
    fresh = ModelCache()
    predict_main(predict_args(tiny_llama_dir, fitted, "none", done), models=fresh)
    assert fresh.loads == 0  # nothing left to generate: nothing loaded


def test_compiled_runs_sharing_a_model_cache_compile_once_per_hook_state(tiny_llama_dir, fitted):
    """A compiled sweep (no steering, then α = 1, 2, 4) on one cached model: 2 decode graphs in all (without
    and with the steering hook; α only scales the vectors, which enter the graph as a tensor), and the rows
    of the eager path."""
    import torch
    from torch._dynamo.utils import counters

    from l2s_lightning.models.loading import ModelCache

    runs = [("none", None), ("l2s", 1.0), ("l2s", 2.0), ("l2s", 4.0)]
    compiled_args = ("--model.compile=true", "--model.compile_backend=eager")
    models = {kind: ModelCache() for kind in ("eager", "compiled")}
    torch._dynamo.reset()
    counters.clear()
    try:
        for method, alpha in runs:
            extra = ("--model.max_new_tokens=8", *([f"--model.alpha={alpha}"] if alpha else []))
            paths = {kind: fitted / "pred_sweep" / f"{kind}_{method}{alpha}.jsonl" for kind in models}
            predict_main(predict_args(tiny_llama_dir, fitted, method, paths["eager"], *extra), models=models["eager"])
            predict_main(
                predict_args(tiny_llama_dir, fitted, method, paths["compiled"], *extra, *compiled_args),
                models=models["compiled"],
            )
            assert same_rows(read(paths["compiled"]), read(paths["eager"])), (method, alpha)
        assert counters["stats"]["unique_graphs"] == 2 and sum(counters["graph_break"].values()) == 0
    finally:
        torch._dynamo.reset()
    assert models["compiled"].loads == 1
    steered = [read(fitted / "pred_sweep" / f"eager_l2s{alpha}.jsonl") for alpha in (1.0, 4.0)]
    assert any(a["response"] != b["response"] for a, b in zip(*steered))  # α reached the graph


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "qwen2_5_vl"])
def test_compiled_generation_of_image_prompts_equals_eager(family, request):
    """The compiled path on each MLLM family (images of several sizes, prompts of several widths, steered
    with a mean vector): the eager responses, and one decode graph for both batches (dynamo, eager backend)."""
    import dataclasses

    import torch
    from PIL import Image
    from torch._dynamo.utils import counters

    from l2s_lightning.generation.module import SteeredGenerationModule
    from l2s_lightning.models.layers import text_config
    from l2s_lightning.models.loading import ModelSpec, load_config

    folder = str(request.getfixturevalue(f"tiny_{family}_dir"))
    size = int(text_config(load_config(ModelSpec(folder))).hidden_size)
    steerer = Steerer(
        method="mean",
        model=folder,
        layer_steer=1,
        layer_context=1,
        hidden_size=size,
        tensors={"mean": 30 * torch.randn(size, generator=torch.Generator().manual_seed(0))},
    )
    steerer_dir = steerer.save(request.getfixturevalue("tmp_path") / "steerer")
    questions = [
        "What is in the image?",
        "Tell me about the dog in the picture, please.",
        "How?",
        "What is the capital of France, and why is the car in this photo here?",
    ]
    items = [
        dataclasses.replace(_item(f"q{i}", q), image=Image.new("RGB", (64, 40 + 12 * i), (60 * i, 90, 200)))
        for i, q in enumerate(questions)
    ]
    responses = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        counters.clear()
        module = SteeredGenerationModule(
            ModelSpec(folder),
            method="mean",
            steerer=str(steerer_dir),
            max_new_tokens=6,
            compile=compiled,
            compile_backend="eager",
        )
        module.configure_model()
        responses[compiled] = [module.generate(items[:2])[1], module.generate(items[2:])[1]]
        assert counters["stats"]["unique_graphs"] == int(compiled)
    torch._dynamo.reset()
    assert responses[True] == responses[False]


def test_compiled_qwen_run_sizes_its_cache_for_the_widest_image(tiny_qwen2_vl_dir, tmp_path):
    """Qwen2-VL gives some images more tokens than others, so no row among the 4 longest questions is the
    widest. The data module finds the widest among the longest questions and the largest images, and a compiled
    run sized for it (``static_cache_multiple=1``: no rounding hides a miss) compiles one decode graph for its
    batches and gives the eager rows."""
    import torch
    from PIL import Image
    from torch._dynamo.utils import counters

    from l2s_lightning.data.datamodule import PromptDataModule
    from l2s_lightning.data.sources import JsonlSource
    from l2s_lightning.generation.module import SteeredGenerationModule
    from l2s_lightning.models.loading import ModelSpec

    questions = {f"q{i}": (f"What is shown in picture number {i} here?", (20, 20)) for i in range(5)}
    questions |= {"q5": ("What is shown in it?", (1000, 60)), "q6": ("What is that?", (300, 200))}
    for name, (_, size) in questions.items():
        Image.new("RGB", size, "white").save(tmp_path / f"{name}.png")
    rows = [
        {"id": name, "question": question, "image": f"{name}.png", "category": "harm"}
        for name, (question, _) in questions.items()
    ]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "templates.yaml").write_text(templates())
    data = PromptDataModule(
        JsonlSource(path=str(tmp_path / "data.jsonl")),
        templates=str(tmp_path / "templates.yaml"),
        split_file=str(tmp_path / "split.json"),
        splits=["train", "test"],
        batch_size=2,
    )
    module = SteeredGenerationModule(ModelSpec(str(tiny_qwen2_vl_dir)), max_new_tokens=3)
    module.configure_model()
    dataset = data.predict_dataloader().dataset
    widths = {item.id: module.prompt_width(item) for item in dataset}
    assert max(widths, key=widths.get) == "q5" and widths["q5"] > max(
        widths[f"q{i}"] for i in range(5)
    )  # nor among the 4 longest
    from l2s_lightning.data.batch_plan import widest

    assert widest(data.widest_candidates(dataset), module)[0].id == "q5"

    args = [
        "--data.source=l2s_lightning.data.sources.JsonlSource",
        f"--data.source.path={tmp_path / 'data.jsonl'}",
        f"--data.templates={tmp_path / 'templates.yaml'}",
        f"--data.split_file={tmp_path / 'split.json'}",
        "--data.splits=[train, test]",
        "--data.batch_size=2",
        f"--model.model.name_or_path={tiny_qwen2_vl_dir}",
        "--model.max_new_tokens=3",
        "--trainer.enable_progress_bar=false",
    ]
    eager, compiled = tmp_path / "eager.jsonl", tmp_path / "compiled.jsonl"
    predict_main([*args, f"--writer.output={eager}"])
    torch._dynamo.reset()
    counters.clear()
    try:
        predict_main(
            [
                *args,
                f"--writer.output={compiled}",
                "--model.compile=true",
                "--model.compile_backend=eager",
                "--model.static_cache_multiple=1",
            ]
        )
        assert counters["stats"]["unique_graphs"] == 1
    finally:
        torch._dynamo.reset()
    assert same_rows(read(compiled), read(eager)) and len(read(eager)) == 7


def test_compiled_path_cache_grows_in_steps_and_never_shrinks(tiny_llama_dir):
    """The cache is sized for the longest row up front (the run's ``BatchPlan``), grows in steps of
    ``static_cache_multiple`` for wider prompts and keeps its size for narrower ones."""
    from l2s_lightning.generation.module import SteeredGenerationModule
    from l2s_lightning.models.loading import ModelSpec

    with pytest.raises(ValueError, match="static_cache_multiple=0"):
        SteeredGenerationModule(ModelSpec(str(tiny_llama_dir)), compile=True, static_cache_multiple=0)
    module = SteeredGenerationModule(
        ModelSpec(str(tiny_llama_dir)), compile=True, max_new_tokens=5, static_cache_multiple=16
    )
    module.configure_model()
    assert module.full_batches and not SteeredGenerationModule(ModelSpec(str(tiny_llama_dir))).full_batches
    longest = _item("long", "How do I make thing " * 8)
    width = module.collate_fn()([longest]).encoded["input_ids"].shape[1]
    assert module.prompt_width(longest) == width
    size = module.static_cache_for(width)
    assert size == -(-(width + 5) // 16) * 16 > 16
    module.use_batch_plan(BatchPlan(batch_size=1, rows=1, static_cache_length=size))
    assert module.static_cache_length == size
    module.static_cache_length = 0
    module.static_cache_for_longest = False  # each batch sizes it as far as its own width needs
    assert module.static_cache_for(width) is None
    lengths, caches = [], []
    for width in (10, 11, 12, 3, 40):
        module._compiled_path_kwargs(2, width)
        caches.append(module._static_cache[1])
        assert caches[-1].layers[0].max_cache_len == module.static_cache_length
        lengths.append(module.static_cache_length)
    assert lengths == [16, 16, 32, 32, 48]
    assert (
        caches[0] is caches[1] and caches[2] is caches[3] and caches[1] is not caches[2]
    )  # reused while the size holds
    module._compiled_path_kwargs(3, 40)
    assert module._static_cache[1] is not caches[4]  # another batch size: another cache


def test_predict_resumes_after_a_kill(tiny_llama_dir, fitted, crash_writer_after):
    clean = fitted / "pred_clean.jsonl"
    predict_main(predict_args(tiny_llama_dir, fitted, "l2s", clean))
    out = fitted / "pred_resumed.jsonl"
    crash_writer_after(writer_module.JsonlPredictionWriter, 1)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        predict_main(predict_args(tiny_llama_dir, fitted, "l2s", out))
    crash_writer_after.restore()
    predict_main(predict_args(tiny_llama_dir, fitted, "l2s", out))
    assert read(out) == read(clean)


def test_only_rank_zero_merges_parts_left_by_a_run_killed_after_its_last_batch(
    tiny_llama_dir, fitted, tmp_path, crash_writer_after
):
    from unittest import mock

    import lightning as L

    out = tmp_path / "none.jsonl"
    crash_writer_after(writer_module.JsonlPredictionWriter, 2)  # 6 test rows in batches of 4: after the last one
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        predict_main(predict_args(tiny_llama_dir, fitted, "none", out))
    crash_writer_after.restore()
    parts = out.with_name(out.name + ".parts")
    assert len(list(parts.glob("*.jsonl"))) == 1 and not out.exists()
    with mock.patch.object(L.Trainer, "is_global_zero", new_callable=mock.PropertyMock, return_value=False):
        predict_main(predict_args(tiny_llama_dir, fitted, "none", out))  # another rank: leaves the parts alone
    assert len(list(parts.glob("*.jsonl"))) == 1 and not out.exists()
    predict_main(predict_args(tiny_llama_dir, fitted, "none", out))
    assert len(read(out)) == 6 and not parts.exists()


def test_a_file_of_another_steerer_or_settings_is_never_resumed(tiny_llama_dir, fitted, tmp_path):
    """Rows record the steerer's digest, where it steers and the generation settings; a run with other ones
    stops before generating (a retrained steerer's answers never pass for the old one's), while a steerer
    whose α default alone changed (``l2s sweep`` writes it) resumes the file."""
    out = tmp_path / "l2s.jsonl"
    args = [a for a in predict_args(tiny_llama_dir, fitted, "l2s", out) if not a.startswith("--model.steerer")] + [
        "--model.alpha=4"
    ]
    predict_main([*args, f"--model.steerer={fitted / 'steerers' / 'l2s'}"])
    written = out.read_text()
    rows = read(out)
    assert {r["steerer_digest"] for r in rows} == {Steerer.load(fitted / "steerers" / "l2s").digest}
    assert rows[0]["positions"] == "generated" and rows[0]["generation"] == {
        "max_new_tokens": 5,
        "do_sample": False,
        "repetition_penalty": 1.0,
    }
    questions = {r["id"]: r["question"] for r in map(json.loads, (fitted / "data.jsonl").read_text().splitlines())}
    assert all(r["question"] == questions[r["id"]] for r in rows)

    original = Steerer.load(fitted / "steerers" / "l2s")
    retrained = _copy_steerer(
        fitted,
        "l2s",
        tmp_path / "retrained",
        tensors={k: v * 1.01 if k == "mlp.2.weight" else v for k, v in original.tensors.items()},
    )
    with pytest.raises(ValueError, match=r"steerer_digest='\w+', this run has steerer_digest='\w+' \(another steerer"):
        predict_main([*args, f"--model.steerer={retrained}"])
    same = _copy_steerer(fitted, "l2s", tmp_path / "same", default_alpha=2.5, sweep={"chosen_alpha": 2.5})
    assert json.loads(rows[0]["data_options"]) == {"use_images": False}
    for extra, message in (
        (["--model.max_new_tokens=6"], "holds predictions with generation="),
        # these steerers read h after L*: a prompt position cannot be steered at all (refused first)
        (["--model.positions=all"], "steers a prompt position, but L'=2 comes after L"),
        (["--data.use_images=true"], "holds predictions with data_options="),
    ):
        with pytest.raises(ValueError, match=message):
            predict_main([*args, f"--model.steerer={same}", *extra])
    assert out.read_text() == written  # nothing appended by the refused runs
    assert predict_main([*args, f"--model.steerer={same}"]) == 0 and out.read_text() == written  # all done: resumed

    plain = tmp_path / "none.jsonl"  # no steerer: where it would steer does not matter
    # (a config naming a steerer, as the paper configs do, is run unsteered with --model.steerer=null: l2s run / sweep)
    predict_main(
        [
            *predict_args(tiny_llama_dir, fitted, "none", plain),
            f"--model.steerer={fitted / 'steerers' / 'l2s'}",
            "--model.steerer=null",
        ]
    )
    predict_main(predict_args(tiny_llama_dir, fitted, "none", plain, "--model.positions=all"))
    assert read(plain)[0]["steerer_digest"] is None and read(plain)[0]["positions"] is None


def test_bad_input_stops_before_generation(tiny_llama_dir, fitted, tmp_path):
    out = tmp_path / "p.jsonl"
    from l2s_lightning.generation.module import SteeredGenerationModule
    from l2s_lightning.models.loading import ModelSpec

    with pytest.raises(ValueError, match="finite"):
        SteeredGenerationModule(
            ModelSpec(str(tiny_llama_dir)), method="mean", steerer=str(fitted / "steerers" / "mean"), alpha=float("nan")
        )
    with pytest.raises(ValueError, match="needs a steerer folder"):
        predict_main([a for a in predict_args(tiny_llama_dir, fitted, "l2s", out) if "steerer" not in a])
    with pytest.raises(ValueError, match="holds method 'mean'"):
        predict_main(
            [*predict_args(tiny_llama_dir, fitted, "l2s", out)[:-1], f"--model.steerer={fitted / 'steerers' / 'mean'}"]
        )
    wide = Steerer.load(fitted / "steerers" / "mean")
    wide.hidden_size = 32
    wide.tensors = {"mean": wide.tensors["mean"][:32]}
    wide.save(tmp_path / "wide")
    with pytest.raises(ValueError, match="hidden size 32"):
        predict_main([*predict_args(tiny_llama_dir, fitted, "mean", out)[:-1], f"--model.steerer={tmp_path / 'wide'}"])
    # the oracle holds only the test split: asking it for training rows fails up front
    with pytest.raises(
        ValueError, match=r"p2s_oracle steerer has no target z for .*steerer .*p2s_oracle: extract the test split"
    ):
        predict_main(predict_args(tiny_llama_dir, fitted, "p2s_oracle", out, "--data.splits=[train]"))
    assert not out.exists()


def _copy_steerer(fitted: Path, method: str, folder: Path, **changes) -> Path:
    steerer = Steerer.load(fitted / "steerers" / method)
    for key, value in changes.items():
        setattr(steerer, key, value)
    return steerer.save(folder)


def test_steerer_of_another_model_or_layers_is_refused(tiny_llama_dir, fitted, tmp_path):
    out = tmp_path / "p.jsonl"
    args = [a for a in predict_args(tiny_llama_dir, fitted, "l2s", out) if not a.startswith("--model.steerer")]
    other = _copy_steerer(fitted, "l2s", tmp_path / "other", model="org/another-model")
    with pytest.raises(ValueError, match=r"trained on model 'org/another-model', not '.*allow_other_model"):
        predict_main([*args, f"--model.steerer={other}"])
    for field, value in (("layer_steer", 4), ("layer_context", 7)):  # the tiny Llama has 4 layers
        bad = _copy_steerer(fitted, "l2s", tmp_path / field, **{field: value})
        with pytest.raises(ValueError, match=rf"steerer {field}={value} is out of range for model .* \(4 layers\)"):
            predict_main([*args, f"--model.steerer={bad}"])
    assert not out.exists()
    predict_main([*args, f"--model.steerer={other}", "--model.allow_other_model=true"])
    assert len(read(out)) == 6
    # the same folder written another way (a trailing slash) is the same model
    slash = [a if not a.startswith("--model.model.name_or_path") else f"{a}/" for a in args]
    predict_main(
        [*slash, f"--model.steerer={fitted / 'steerers' / 'l2s'}", f"--writer.output={tmp_path / 'slash.jsonl'}"]
    )
    assert len(read(tmp_path / "slash.jsonl")) == 6


def test_mean_ba_behaviour_unknown_to_the_steerer_stops_before_generation(tiny_llama_dir, fitted, tmp_path):
    (tmp_path / "warn.yaml").write_text(templates(harm="warn"))  # the steerer knows refuse / consult only
    out = tmp_path / "p.jsonl"
    args = [*predict_args(tiny_llama_dir, fitted, "mean_ba", out), f"--data.templates={tmp_path / 'warn.yaml'}"]
    with pytest.raises(
        ValueError,
        match=r"mean_ba steerer has no vector for behaviour\(s\) \['warn'\] \(samples e\.g\. \['q.*steerer .*: fit it on",
    ):
        predict_main(args)
    assert not out.exists() and not out.with_name(out.name + ".parts").exists()


def test_prompt_baseline_needs_an_instruction(tiny_llama_dir, fitted, tmp_path):
    out = tmp_path / "p.jsonl"
    (tmp_path / "partial.yaml").write_text(templates({"refuse": "Refuse."}, baseline=""))
    with pytest.raises(
        ValueError, match=r"no prompt_baseline and behaviour\(s\) \['consult'\] have no instruction.*"
    ) as info:
        predict_main(
            [*predict_args(tiny_llama_dir, fitted, "prompt", out), f"--data.templates={tmp_path / 'partial.yaml'}"]
        )
    assert str(tmp_path / "partial.yaml") in str(info.value) and not out.exists()
    # without prompt_baseline, each behaviour's own instruction is used
    (tmp_path / "each.yaml").write_text(templates({"refuse": "Refuse.", "consult": "Defer to a lawyer."}, baseline=""))
    predict_main([*predict_args(tiny_llama_dir, fitted, "prompt", out), f"--data.templates={tmp_path / 'each.yaml'}"])
    rows = read(out)
    assert {r["behaviour"] for r in rows} == {"refuse", "consult"}
    for row in rows:
        assert ("Refuse." if row["behaviour"] == "refuse" else "Defer to a lawyer.") in row["prompt"]


def test_module_prompt_without_any_instruction_raises(tiny_llama_dir):
    from l2s_lightning.generation.module import SteeredGenerationModule
    from l2s_lightning.models.loading import ModelSpec

    module = SteeredGenerationModule(ModelSpec(str(tiny_llama_dir)), method="prompt")
    module.configure_model()
    items = [_item("a", "Hi?", instruction="Be brief."), _item("b", "Why?")]
    with pytest.raises(ValueError, match=r"no instruction for sample\(s\) \['b'\]"):
        module.prompts(items)
    assert "Be kind." in module.prompts(items, instruction="Be kind.")[1]


def _item(sample_id: str, question: str, instruction: str = ""):
    from l2s_lightning.testing.synthetic import prompt_item

    return prompt_item(sample_id, question, instruction=instruction)


def test_sampling_is_seeded_by_the_batch_sample_ids(tiny_llama_dir):
    import torch

    from l2s_lightning.generation.module import SteeredGenerationModule, sampling_seed
    from l2s_lightning.models.loading import ModelSpec

    module = SteeredGenerationModule(
        ModelSpec(str(tiny_llama_dir)), method="none", do_sample=True, max_new_tokens=8, seed=3
    )
    module.configure_model()
    batch = [_item("q1", "How do I make thing 1?"), _item("q2", "How do I make a long thing 2?")]
    first = module.generate(batch)
    torch.manual_seed(1234)  # another global RNG state (another rank, a resumed run): the same batch samples the same
    assert module.generate(batch) == first
    module.seed = 4
    assert module.generate(batch)[1] != first[1]  # the config seed matters (and the outputs really are sampled)
    other = [_item("q3", "How do I make thing 1?"), _item("q2", "How do I make a long thing 2?")]
    assert sampling_seed(3, ["q1", "q2"]) != sampling_seed(3, ["q3", "q2"])
    assert sampling_seed(3, ["q1", "q2"]) not in {
        sampling_seed(3, ["q2", "q1"]),
        sampling_seed(4, ["q1", "q2"]),
        sampling_seed(3, ["q1"]),
    }
    assert sampling_seed(3, ["q1", "q2"]) == sampling_seed(3, ("q1", "q2"))
    module.seed = 3
    assert module.generate(other)[1] != first[1]  # same questions, other ids: another seed


def test_generation_settings_do_not_come_from_the_models_generation_config(tiny_llama_dir, tmp_path):
    """A model whose generation_config sets top_k=1 and a repetition penalty (as Qwen2-VL-Instruct's does):
    the module's settings are what generate uses, sampled and greedy."""
    import shutil

    from transformers import GenerationConfig

    from l2s_lightning.generation.module import SteeredGenerationModule
    from l2s_lightning.models.loading import ModelSpec

    folder = tmp_path / "greedy_config"
    shutil.copytree(tiny_llama_dir, folder)
    config = GenerationConfig.from_pretrained(folder)
    config.update(do_sample=True, top_k=1, top_p=0.001, temperature=0.01, repetition_penalty=3.0)
    config.save_pretrained(folder)
    batch = [_item("q1", "How do I make thing 1?"), _item("q2", "How do I make a long thing 2?")]

    def responses(folder, **kwargs) -> list[str]:
        module = SteeredGenerationModule(ModelSpec(str(folder)), method="none", max_new_tokens=8, **kwargs)
        module.configure_model()
        return module.generate(batch)[1]

    sampled = {tuple(responses(folder, do_sample=True, seed=seed)) for seed in range(4)}
    assert len(sampled) > 1  # top_k 1 would sample the same answer for every seed
    assert responses(folder) == responses(tiny_llama_dir)  # greedy, without the model's repetition penalty
    assert responses(folder, repetition_penalty=3.0) != responses(folder)


def test_read_jsonl_drops_a_torn_last_line_only(tmp_path):
    """A kill mid-write can cut the last line inside a UTF-8 character: that line goes, the rest is kept."""
    good = [{"id": "a", "response": "déjà vu"}, {"id": "b", "response": "ok"}]
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in good).encode()
    torn = json.dumps({"id": "c", "response": "é"}, ensure_ascii=False).encode()
    cut = torn[: torn.index("é".encode()) + 1]  # the first byte of a two-byte character
    path = tmp_path / "part.jsonl"
    path.write_bytes(text + cut)
    assert writer_module.read_jsonl(path) == good
    path.write_bytes(text + torn + b"\n")
    assert [row["id"] for row in writer_module.read_jsonl(path)] == ["a", "b", "c"]
    path.write_bytes(cut + b"\n" + text)  # a bad line that is not the last one is an error
    with pytest.raises(ValueError, match=r"part\.jsonl:1"):
        writer_module.read_jsonl(path)


@pytest.mark.parametrize(
    ("extra", "method", "message"),
    [
        (("--data.batch_size=0",), "none", r"data\.batch_size=0 must be a whole number of at least 1, or 'auto'"),
        (("--model.max_new_tokens=-3",), "none", r"model\.max_new_tokens=-3 must be a whole number of at least 1"),
        (("--model.positions=last_prompt_and_generated",), "l2s", r"but L'=2 comes after L\*=1"),
        (("--model.steer_tokens=0",), "none", r"steer_tokens=0 must be a whole number of at least 1"),
        (("--model.steer_tokens=1",), "mean", r"steer_tokens=1 with positions='generated' steers nothing"),
        (
            ("--model.steer_tokens=4", "--model.compile=true"),
            "mean",
            r"model\.steer_tokens=4 needs eager decoding: it cannot be used with model\.compile=true",
        ),
    ],
)
def test_settings_that_cannot_work_are_refused_before_the_model_loads(
    tiny_llama_dir, fitted, tmp_path, monkeypatch, extra, method, message
):
    import l2s_lightning.generation.module as generation_module

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(generation_module, "load_model", no_loading)
    from l2s_lightning.errors import L2SInputError

    with pytest.raises(L2SInputError, match=message):
        predict_main(predict_args(tiny_llama_dir, fitted, method, tmp_path / "p.jsonl", *extra))


def test_a_file_steered_at_other_positions_is_never_resumed(tiny_llama_dir, fitted, tmp_path):
    """A mean steerer reads no h, so every position rule is allowed; a file made with another one is refused."""
    out = tmp_path / "mean.jsonl"
    assert predict_main(predict_args(tiny_llama_dir, fitted, "mean", out)) == 0
    written = out.read_text()
    with pytest.raises(ValueError, match="holds predictions with positions='generated', this run has positions='all'"):
        predict_main(predict_args(tiny_llama_dir, fitted, "mean", out, "--model.positions=all"))
    assert out.read_text() == written


def test_steer_tokens_is_recorded_and_a_limit_past_the_answer_changes_nothing(tiny_llama_dir, fitted, tmp_path):
    """``--model.steer_tokens 8`` (5 new tokens): the rows of unlimited steering but for the recorded limit; a
    file made with another limit is never resumed; an unsteered run records none."""
    unlimited, limited, short = tmp_path / "all.jsonl", tmp_path / "k8.jsonl", tmp_path / "k2.jsonl"
    assert predict_main(predict_args(tiny_llama_dir, fitted, "mean", unlimited)) == 0
    assert predict_main(predict_args(tiny_llama_dir, fitted, "mean", limited, "--model.steer_tokens", "8")) == 0
    rows, limited_rows = read(unlimited), read(limited)
    assert {r["steer_tokens"] for r in rows} == {None} and {r["steer_tokens"] for r in limited_rows} == {8}
    assert [r | {"steer_tokens": 8} for r in rows] == limited_rows
    assert predict_main(predict_args(tiny_llama_dir, fitted, "mean", short, "--model.steer_tokens=2")) == 0
    assert [r["response"] for r in read(short)] != [r["response"] for r in rows]  # token 3 on: unsteered
    written = limited.read_text()
    with pytest.raises(ValueError, match="holds predictions with steer_tokens=8, this run has steer_tokens=2"):
        predict_main(predict_args(tiny_llama_dir, fitted, "mean", limited, "--model.steer_tokens=2"))
    assert limited.read_text() == written
    plain = tmp_path / "none.jsonl"
    assert predict_main(predict_args(tiny_llama_dir, fitted, "none", plain, "--model.steer_tokens=2")) == 0
    assert {r["steer_tokens"] for r in read(plain)} == {None}
