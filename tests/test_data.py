"""Templates, dataset sources, TYPO images and the seeded split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from l2s_lightning.data.datamodule import PromptDataModule
from l2s_lightning.data.images import render_typo_image
from l2s_lightning.data.sources import JsonlSource, MMSafetyBenchSource, PopeSource
from l2s_lightning.data.split import load_or_make_split, make_split
from l2s_lightning.templates import load_templates

MMSB = Path(__file__).resolve().parents[1] / "data" / "mm_safetybench"


def test_shipped_templates_cover_mm_safetybench():
    data = MMSafetyBenchSource(str(MMSB), use_images=False).load()
    assert len(data) == 1680
    for name in ("safety", "safety_paper", "logodds_eval"):
        templates = load_templates(name)
        for category in set(data["category"]):
            templates.behaviour_of(category)
    safety = load_templates("safety")
    legal = safety.resolve("10-Legal_Opinion")
    assert legal.behaviour == "consult_expert" and "legal expert" in legal.positive
    assert safety.resolve("01-Illegal_Activitiy").behaviour == "refuse"
    assert safety.resolve("08-Political_Lobbying", positive="mine", negative="theirs").positive == "mine"


def test_pope_template_uses_the_label():
    pope = load_templates("pope")
    contrast = pope.resolve("adversarial", fields={"correct": "No", "wrong": "Yes"})
    assert contrast.positive.startswith("No,") and contrast.negative.startswith("Yes,")


def test_bad_template_files(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("name: t\nbehaviours:\n  a: {positive: x}\ncategories: {c: a}\n")
    with pytest.raises(ValueError, match="lacks \\['negative'\\]"):
        load_templates(str(path))
    path.write_text("name: t\nbehaviours:\n  a: {positive: x, negative: y}\ncategories: {c: b}\n")
    with pytest.raises(ValueError, match="unknown behaviour 'b'"):
        load_templates(str(path))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_templates("no_such_templates")


def test_mm_safetybench_renders_typo_images_when_absent(tmp_path):
    data = PromptDataModule(
        MMSafetyBenchSource(str(MMSB), scenarios=["03"]), templates="safety", split_file=str(tmp_path / "s.json"),
        limit_per_category=2,
    )
    item = data.predict_dataloader().dataset[0]
    assert item.image is not None and item.image.size[0] == 1024
    assert item.category == "03-Malware_Generation" and item.behaviour == "refuse"
    image = render_typo_image("bomb making")
    assert image.getpixel((0, 0)) == (255, 255, 255) and min(image.convert("L").getdata()) < 50


def test_split_is_seeded_stratified_and_saved(tmp_path):
    ids = [f"{c}/{i}" for c in "ab" for i in range(50)]
    cats = [i.split("/")[0] for i in ids]
    split = make_split(ids, cats, 0.2, seed=21)
    assert split == make_split(ids, cats, 0.2, seed=21) != make_split(ids, cats, 0.2, seed=22)
    assert sum(split[i] == "test" for i in ids if i.startswith("a/")) == 10
    path = tmp_path / "split.json"
    assert load_or_make_split(path, ids, cats, 0.2, 21) == split
    assert load_or_make_split(path, ids, cats, 0.2, 21) == split  # reused
    with pytest.raises(ValueError, match="seed=21"):
        load_or_make_split(path, ids, cats, 0.2, 5)
    with pytest.raises(ValueError, match="does not cover"):
        load_or_make_split(path, [*ids, "c/new"], [*cats, "c"], 0.2, 21)


def test_pope_files_and_jsonl(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "COCO_1.jpg")
    lines = [{"question_id": 1, "image": "COCO_1.jpg", "text": "Is there a dog in the image?", "label": "no"}]
    (tmp_path / "coco_pope_adversarial.json").write_text("\n".join(json.dumps(r) for r in lines))
    data = PopeSource(files=[str(tmp_path / "coco_pope_adversarial.json")], image_root=str(tmp_path)).load()
    assert data[0]["id"] == "adversarial/1" and data[0]["label"] == "no" and data[0]["category"] == "adversarial"
    module = PromptDataModule(PopeSource(files=[str(tmp_path / "coco_pope_adversarial.json")]), templates="pope",
                              split_file=str(tmp_path / "s.json"), test_fraction=0.0)
    item = module.predict_dataloader().dataset[0]
    assert item.positive == "No, the image" and item.negative == "Yes, the image"
    (tmp_path / "bad.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: missing field 'question'"):
        JsonlSource(str(tmp_path / "bad.jsonl")).load()
    (tmp_path / "dup.jsonl").write_text('{"id": "x", "question": "q"}\n{"id": "x", "question": "r"}\n')
    with pytest.raises(ValueError, match="duplicate sample ids"):
        JsonlSource(str(tmp_path / "dup.jsonl")).load()


def test_qwen_processor_loads_without_torchvision(tiny_qwen2_vl_dir):
    from PIL import Image

    from l2s_lightning.models.processor import has_working_torchvision, load_processor

    processor = load_processor(tiny_qwen2_vl_dir)
    if not has_working_torchvision():
        assert type(processor).__name__ == "Qwen2VLProcessorImageOnly"
    out = processor(text=["<|vision_start|><|image_pad|><|vision_end|>hi"], images=[Image.new("RGB", (56, 56))], return_tensors="pt")
    assert {"image_grid_thw", "mm_token_type_ids", "pixel_values"} <= set(out)
    assert int((out["input_ids"] == processor.image_token_id).sum()) == int(out["image_grid_thw"].prod() // 4)


def test_pope_from_a_datasets_folder(tmp_path):
    """The `hf_dataset` path: any `datasets.load_dataset` target (a hub id online; here a local parquet folder)."""
    import datasets
    from PIL import Image

    folder = tmp_path / "pope_hf"
    folder.mkdir()
    data = datasets.Dataset.from_dict(
        {"question_id": ["1", "2"], "question": ["Is there a cat?", "Is there a dog?"], "answer": ["yes", "no"],
         "category": ["random", "popular"], "image": [Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8), (255, 0, 0))]},
        features=datasets.Features({"question_id": datasets.Value("string"), "question": datasets.Value("string"),
                                    "answer": datasets.Value("string"), "category": datasets.Value("string"), "image": datasets.Image()}),
    )
    data.to_parquet(str(folder / "test.parquet"))
    rows = PopeSource(hf_dataset=str(folder), hf_split="test", image_cache=str(tmp_path / "cache")).load()
    assert rows["id"] == ["random/1", "popular/2"] and rows["label"] == ["yes", "no"]
    assert Path(rows[1]["image"]).is_file()
