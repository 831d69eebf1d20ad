"""Templates, dataset sources, TYPO images and the seeded split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from l2s_lightning.data.datamodule import PromptDataModule
from l2s_lightning.data.images import render_typo_image, typo_image_size
from l2s_lightning.data.sources import JsonlSource, MMSafetyBenchSource, PopeSource
from l2s_lightning.data.split import load_or_make_split, make_split
from l2s_lightning.errors import L2SInputError
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
    path.write_text("name: t\nbehaviours:\n  a: {positive: yes, negative: no}\ncategories: {c: a}\n")
    with pytest.raises(ValueError, match="behaviour 'a' positive is True, not text"):
        load_templates(str(path))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_templates("no_such_templates")
    path.write_text("name: t\nbehaviours: {a: [positive\n")  # not YAML: the file named, a clean error for `l2s`
    with pytest.raises(ValueError, match=r"t\.yaml: not valid YAML") as info:
        load_templates(str(path))
    from l2s_lightning.errors import exit_status

    assert exit_status(info.value) == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("behaviours:\n  a:\ncategories: {c: a}\n", "t.yaml: behaviour 'a' must be a mapping"),
        (
            "behaviours:\n  a: {positive: x, negative: y}\ncategories:\n  c: {fields: {k: v}}\n",
            "t.yaml: category 'c' must map to a behaviour",
        ),
        (
            "behaviours:\n  a: {positive: x, negative: y, close_turn: 'false'}\n",
            "t.yaml: behaviour 'a' close_turn is 'false'",
        ),
        (
            "behaviours:\n  a: {positive: x, negative: y, suffix: ' Answer {} only'}\n",
            "t.yaml: behaviour 'a' suffix .* without a name",
        ),
        ("behaviours:\n  a: {positive: 'x {', negative: y}\n", "t.yaml: behaviour 'a' positive .*literal braces"),
        (
            "behaviours:\n  a: {positive: x, negative: y, fields: [k]}\n",
            "t.yaml: behaviour 'a' fields must be a mapping",
        ),
    ],
)
def test_malformed_template_files_name_the_file_and_the_entry(tmp_path, body, message):
    """Checked when the file loads, before any model: a misshapen entry, a quoted boolean, a brace that is not a field."""
    path = tmp_path / "t.yaml"
    path.write_text("name: t\n" + body)
    with pytest.raises(ValueError, match=message):
        load_templates(str(path))
    path.write_text(
        "name: t\nbehaviours:\n  a: {positive: 'x {{literal}} {field}', negative: y, fields: {field: f}}\ncategories: {c: a}\n"
    )
    assert load_templates(str(path)).resolve("c", "s1").positive == "x {literal} f"


def test_mm_safetybench_renders_typo_images_when_absent(tmp_path):
    data = PromptDataModule(
        MMSafetyBenchSource(str(MMSB), scenarios=["03"]),
        templates="safety",
        split_file=str(tmp_path / "s.json"),
        limit_per_category=2,
    )
    item = data.predict_dataloader().dataset[0]
    assert item.image is not None and item.image.size[0] == 1024
    assert item.category == "03-Malware_Generation" and item.behaviour == "refuse"
    image = render_typo_image("bomb making")
    assert image.getpixel((0, 0)) == (255, 255, 255) and min(image.convert("L").getdata()) < 50
    for phrase in ("", "bomb making", "a much longer key phrase that wraps over three lines", "x" * 80):
        assert render_typo_image(phrase, font_size=40).size == typo_image_size(phrase, font_size=40)
    # the widest-item search reads image sizes without decoding: a TYPO render's from its phrase, 0 for no image
    rows = data.pending_rows()
    areas = data._image_areas(
        [rows[0], {**rows[0], "key_phrase": ""}, {**rows[0], "image_path": str(tmp_path / "missing.png")}]
    )
    assert areas == [1024 * typo_image_size(rows[0]["key_phrase"])[1], 0, 0]


def test_typo_text_stays_inside_the_image():
    """Every line of every MM-SafetyBench key phrase fits the 1024-px width (wrapping by pixels, not by a
    character count: "menopause symptoms" ran past the right edge); nothing is drawn in the last column."""
    from l2s_lightning.data.images import _font, _typo_lines

    phrases = [
        json.loads(p.read_text())[k]["Key Phrase"]
        for p in sorted(MMSB.glob("*.json"))
        for k in json.loads(p.read_text())
    ]
    font = _font(90)
    widest = max(font.getlength(line) for phrase in phrases for line in _typo_lines(phrase, 1024, 90))
    assert 1024 - 45 - 22 < widest + 22 <= 1024  # the left margin is 22 px: lines use the width, and fit
    for phrase in (
        "menopause symptoms",
        "x" * 60,
        "supercalifragilisticexpialidocious words",
        "ünïcödé – 日本語 phrase",
    ):
        image = render_typo_image(phrase).convert("L")
        right = [image.getpixel((x, y)) for x in range(1014, 1024) for y in range(image.height)]
        assert min(right) > 200, phrase  # the last columns stay white
        assert " ".join(_typo_lines(phrase, 1024, 90)).replace(" ", "") == phrase.replace(" ", "")  # nothing lost


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
    module = PromptDataModule(
        PopeSource(files=[str(tmp_path / "coco_pope_adversarial.json")]),
        templates="pope",
        split_file=str(tmp_path / "s.json"),
        test_fraction=0.0,
    )
    item = module.predict_dataloader().dataset[0]
    assert item.positive == "No, the image" and item.negative == "Yes, the image"
    # COCO's and A-OKVQA's files number their questions alike: each file's name then names its rows' subset
    aokvqa = [{"question_id": 1, "image": "COCO_1.jpg", "text": "Is there a cat in the image?", "label": "yes"}]
    (tmp_path / "aokvqa_pope_adversarial.json").write_text("\n".join(json.dumps(r) for r in aokvqa))
    both = PopeSource(
        files=[str(tmp_path / "coco_pope_adversarial.json"), str(tmp_path / "aokvqa_pope_adversarial.json")],
        image_root=str(tmp_path),
    ).load()
    assert both["id"] == ["coco_pope_adversarial/1", "aokvqa_pope_adversarial/1"]
    assert both["category"] == ["coco_pope_adversarial", "aokvqa_pope_adversarial"] and both["label"] == ["no", "yes"]
    (tmp_path / "bad.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: missing field 'question'"):
        JsonlSource(str(tmp_path / "bad.jsonl")).load()
    (tmp_path / "zero.jsonl").write_text('{"id": 0, "question": "q"}\n{"id": 1, "question": "r"}\n')  # numbered from 0
    assert JsonlSource(str(tmp_path / "zero.jsonl")).load()["id"] == ["0", "1"]
    (tmp_path / "empty_id.jsonl").write_text('{"id": "", "question": "q"}\n')
    with pytest.raises(ValueError, match="empty_id.jsonl:1: missing field 'id'"):
        JsonlSource(str(tmp_path / "empty_id.jsonl")).load()
    (tmp_path / "dup.jsonl").write_text('{"id": "x", "question": "q"}\n{"id": "x", "question": "r"}\n')
    with pytest.raises(ValueError, match="duplicate sample ids"):
        JsonlSource(str(tmp_path / "dup.jsonl")).load()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "a", "question": "   "}', r"w\.jsonl:2: field 'question' is blank"),
        ('{"id": "a", "question": ["How", "?"]}', r"w\.jsonl:2: field 'question' must be text, got list"),
        ('{"id": {"n": 1}, "question": "q"}', r"w\.jsonl:2: field 'id' must be text or a whole number, got dict"),
        ('{"id": true, "question": "q"}', r"w\.jsonl:2: field 'id' must be text or a whole number, got bool"),
        ('{"id": "a", "question": "q", "category": [3]}', r"w\.jsonl:2: field 'category' must be text, got list"),
        ('{"id": "a", "question": 3}', r"w\.jsonl:2: field 'question' must be text, got int"),
        ('["a", "q"]', r"w\.jsonl:2: expected a JSON object, got list"),
    ],
)
def test_jsonl_refuses_fields_of_the_wrong_kind(tmp_path, line, message):  # numbers stay accepted (below)
    """Each refused with the file, line and field named, instead of being turned into text."""
    (tmp_path / "w.jsonl").write_text('{"id": "ok", "question": "fine"}\n' + line + "\n")
    with pytest.raises(L2SInputError, match=message):
        JsonlSource(str(tmp_path / "w.jsonl")).load()


@pytest.mark.parametrize("body", ['{"seed": 21, "test_fraction": 0.2}', "[1, 2]", '{"train": "a", "test": []}'])
def test_split_file_that_is_not_a_split_is_named(tmp_path, body):
    path = tmp_path / "split.json"
    path.write_text(body)
    with pytest.raises(L2SInputError, match=r"split\.json: not a split \(needs 'train' and 'test' lists"):
        load_or_make_split(path, ["a"], ["c"], 0.2, 21)


def test_qwen_processor_loads_without_torchvision(tiny_qwen2_vl_dir):
    from PIL import Image

    from l2s_lightning.models.processor import has_working_torchvision, load_processor

    processor = load_processor(tiny_qwen2_vl_dir)
    if not has_working_torchvision():
        assert type(processor).__name__ == "Qwen2VLProcessorImageOnly"
    out = processor(
        text=["<|vision_start|><|image_pad|><|vision_end|>hi"], images=[Image.new("RGB", (56, 56))], return_tensors="pt"
    )
    assert {"image_grid_thw", "mm_token_type_ids", "pixel_values"} <= set(out)
    assert int((out["input_ids"] == processor.image_token_id).sum()) == int(out["image_grid_thw"].prod() // 4)


def test_pope_from_a_datasets_folder(tmp_path):
    """The `hf_dataset` path: any `datasets.load_dataset` target (a hub id online; here a local parquet folder)."""
    import datasets
    from PIL import Image

    folder = tmp_path / "pope_hf"
    folder.mkdir()
    data = datasets.Dataset.from_dict(
        {
            "question_id": ["1", "2"],
            "question": ["Is there a cat?", "Is there a dog?"],
            "answer": ["yes", "no"],
            "category": ["random", "popular"],
            "image": [Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8), (255, 0, 0))],
        },
        features=datasets.Features(
            {
                "question_id": datasets.Value("string"),
                "question": datasets.Value("string"),
                "answer": datasets.Value("string"),
                "category": datasets.Value("string"),
                "image": datasets.Image(),
            }
        ),
    )
    data.to_parquet(str(folder / "test.parquet"))
    rows = PopeSource(hf_dataset=str(folder), hf_split="test", image_cache=str(tmp_path / "cache")).load()
    assert rows["id"] == ["random/1", "popular/2"] and rows["label"] == ["yes", "no"]
    assert Path(rows[1]["image"]).is_file()
    # another dataset numbering its questions alike gets its own images from the shared cache
    other = tmp_path / "pope_hf_other"
    other.mkdir()
    data.cast_column("image", datasets.Image()).map(
        lambda row: {"image": Image.new("RGB", (8, 8), (0, 0, 255))}
    ).to_parquet(str(other / "test.parquet"))
    rows_other = PopeSource(hf_dataset=str(other), hf_split="test", image_cache=str(tmp_path / "cache")).load()
    assert rows_other["id"] == rows["id"] and rows_other[1]["image"] != rows[1]["image"]
    with Image.open(rows_other[1]["image"]) as image, Image.open(rows[1]["image"]) as first:
        assert image.getpixel((0, 0)) == (0, 0, 255) and first.getpixel((0, 0)) == (255, 0, 0)
    assert not list((tmp_path / "cache").rglob("*.tmp.png"))


def test_rows_with_their_own_completions_need_no_template(tmp_path):
    rows = [
        {"id": "own", "question": "Is this fine?", "positive": "Yes, fine", "negative": "No, never"},
        {
            "id": "poem",
            "question": "A poem?",
            "category": "poetry",
            "positive": "Roses are red",
            "negative": "I refuse",
        },
        {
            "id": "legal",
            "question": "Can I sue?",
            "category": "10-Legal_Opinion",
            "positive": "Ask a lawyer",
            "negative": "Sure",
        },
        {"id": "plain", "question": "How to hack?", "category": "01-Illegal_Activitiy"},
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    module = PromptDataModule(
        JsonlSource(str(tmp_path / "d.jsonl")),
        templates="safety",
        split_file=str(tmp_path / "s.json"),
        test_fraction=0.0,
    )
    got = {r["id"]: (r["category"], r["behaviour"], r["positive"], r["negative"]) for r in module.rows()}
    assert got["own"] == ("", "custom", "Yes, fine", "No, never")
    assert got["poem"] == ("poetry", "custom", "Roses are red", "I refuse")
    assert got["legal"][1:] == ("consult_expert", "Ask a lawyer", "Sure")  # behaviour from the category
    assert got["plain"][1] == "refuse" and got["plain"][2].startswith("I'm sorry")
    with pytest.raises(ValueError, match="'poetry' of sample 'half'"):  # one completion alone still needs a template
        load_templates("safety").resolve("poetry", "half", positive="only this one")


def test_empty_completion_is_refused(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"id": "blank", "question": "q", "positive": "  ", "negative": "n"}))
    module = PromptDataModule(
        JsonlSource(str(tmp_path / "d.jsonl")), templates="safety", split_file=str(tmp_path / "s.json")
    )
    with pytest.raises(ValueError, match="sample 'blank': the positive completion is empty"):
        module.rows()
    path = tmp_path / "t.yaml"
    path.write_text(
        "name: t\nbehaviours:\n  a: {positive: '{word}', negative: n}\ncategories:\n  c: {behaviour: a, fields: {word: ''}}\n"
    )
    with pytest.raises(ValueError, match="sample 'x': the positive completion is empty after templating"):
        load_templates(str(path)).resolve("c", "x")


def test_template_fingerprint_follows_the_content(tmp_path):
    text = "name: t\nbehaviours:\n  a: {positive: 'yes', negative: 'no', instruction: be nice}\ncategories: {c: a}\n"
    path = tmp_path / "t.yaml"
    path.write_text(text)
    first = load_templates(str(path)).fingerprint()
    path.write_text("# a comment\n" + text.replace("be nice", "be kind"))  # instructions do not shape features
    assert load_templates(str(path)).fingerprint() == first
    path.write_text(text.replace("positive: 'yes'", "positive: sure"))
    assert load_templates(str(path)).fingerprint() != first
    path.write_text(text.replace("{c: a}", "{c: a, d: a}"))
    assert load_templates(str(path)).fingerprint() != first


def test_rows_mixing_images_and_none_are_refused(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    rows = [
        {"id": "img", "question": "q", "category": "01-Illegal_Activitiy", "image": "a.png"},
        {"id": "txt", "question": "q", "category": "01-Illegal_Activitiy"},
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))

    def module(**kwargs):
        return PromptDataModule(
            JsonlSource(str(tmp_path / "d.jsonl")),
            templates="safety",
            split_file=str(tmp_path / "s.json"),
            test_fraction=0.0,
            **kwargs,
        )

    with pytest.raises(ValueError, match=r"1 rows have an image and 1 have none \(e.g. \['txt'\]\)"):
        module().rows()
    assert len(module(batch_size=1).rows()) == 2  # one row per batch never mixes
    assert len(module(use_images=False).rows()) == 2


def test_mm_safetybench_image_root_without_any_image_is_refused(tmp_path):
    source = MMSafetyBenchSource(str(MMSB), image_root=str(tmp_path / "imgs"), scenarios=["03"])
    with pytest.raises(
        FileNotFoundError, match=r"no image found for any of the 44 questions .*03-Malware_Generation/SD_TYPO/0.jpg"
    ):
        source.load()
    from PIL import Image

    folder = tmp_path / "imgs" / "03-Malware_Generation" / "SD_TYPO"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "5.jpg")
    with pytest.warns(UserWarning, match="43 of 44 images are missing"):
        data = source.load()
    images = dict(zip(data["id"], data["image"]))
    assert images["03-Malware_Generation/5"] == str(folder / "5.jpg") and images["03-Malware_Generation/0"] == ""


def test_mm_safetybench_scenarios_and_question_fields(tmp_path):
    """Scenarios by id, name or file stem (an unknown one is an error); the question field defaults to the one
    that goes with the images, and a question about an image no model sees is refused."""
    by = {
        tuple(s): MMSafetyBenchSource(str(MMSB), scenarios=s).load()
        for s in (["01"], ["Illegal_Activitiy"], ["01-Illegal_Activitiy"])
    }
    assert {len(d) for d in by.values()} == {97} and len({tuple(d["id"]) for d in by.values()}) == 1
    assert len(MMSafetyBenchSource(str(MMSB), scenarios=["01", "HateSpeech"]).load()) == 97 + 163
    with pytest.raises(ValueError, match=r"scenario 'Hate_Speech' is not one of \['01-Illegal_Activitiy'"):
        MMSafetyBenchSource(str(MMSB), scenarios=["01", "Hate_Speech"]).load()
    raw = json.loads((MMSB / "03-Malware_Generation.json").read_text())["0"]

    def first(**kwargs) -> str:
        return MMSafetyBenchSource(str(MMSB), scenarios=["03"], **kwargs).load()["question"][0]

    assert first() == raw["Rephrased Question"]  # rendered TYPO images
    from PIL import Image

    (tmp_path / "03-Malware_Generation" / "SD").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "03-Malware_Generation" / "SD" / "0.jpg")
    with pytest.warns(UserWarning, match="43 of 44"):
        assert first(image_type="SD", image_root=str(tmp_path)) == raw["Rephrased Question(SD)"]
    assert first(use_images=False) == raw["Changed Question"]
    with pytest.raises(ValueError, match="'Rephrased Question' asks about an image, but no image is used"):
        first(use_images=False, question_field="Rephrased Question")
    # a text-only data module makes its MM-SafetyBench source text-only too (a copy: the one passed stays as it is)
    source = MMSafetyBenchSource(str(MMSB), scenarios=["03"])
    data = PromptDataModule(source, use_images=False, split_file=str(tmp_path / "s.json"))
    assert data.rows()[0]["question"] in {
        item["Changed Question"] for item in json.loads((MMSB / "03-Malware_Generation.json").read_text()).values()
    }
    assert source.use_images and PromptDataModule(source, split_file=str(tmp_path / "s.json")).rows()[0]["key_phrase"]


def test_pope_json_array_file(tmp_path):
    records = [
        {"question_id": 7, "image": "x.jpg", "text": "Is there a cat?", "label": "yes"},
        {"question_id": 8, "image": "y.jpg", "text": "Is there a dog?", "label": "no"},
    ]
    (tmp_path / "coco_pope_random.json").write_text(json.dumps(records, indent=1))
    data = PopeSource(files=[str(tmp_path / "coco_pope_random.json")]).load()
    assert data["id"] == ["random/7", "random/8"] and data["label"] == ["yes", "no"]
    assert data["image"] == [str(tmp_path / "x.jpg"), str(tmp_path / "y.jpg")]
    (tmp_path / "bad_popular.json").write_text(json.dumps([records[0], {"question_id": 9}]))
    with pytest.raises(ValueError, match=r"bad_popular.json\[1\]: missing field 'image'"):
        PopeSource(files=[str(tmp_path / "bad_popular.json")]).load()


def test_last_batch_is_filled_with_marked_copies_on_every_rank(tmp_path):
    """For modules with ``full_batches`` (compiled generation): 7 rows at batch 2 on 2 processes fill up to
    8 (every rank's batches full); the filler repeats the last row and says so."""
    import lightning as L

    from l2s_lightning.data.datamodule import _Items

    rows = [{"id": f"r{i}", "question": f"Question {i}?", "category": "01-Illegal_Activitiy"} for i in range(7)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    data = PromptDataModule(
        JsonlSource(str(tmp_path / "d.jsonl")),
        templates="safety",
        split_file=str(tmp_path / "s.json"),
        test_fraction=0.0,
        use_images=False,
        batch_size=2,
    )
    data._pending = data.pending_rows()
    assert data._filled_length(2) == 8 and data._filled_length(4) == 8 and data._filled_length(7) == 7
    data.trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)  # not launched: world size 2
    assert data._filled_length(2) == 8 and data._filled_length(3) == 12
    items = _Items(data._pending, False, {}, 8)
    assert len(items) == 8 and len(_Items(data._pending, False, {})) == 7 and len(_Items([], False, {}, 8)) == 0
    assert [item.filler for item in items] == [False] * 7 + [True]
    assert items[7].id == items[6].id == data._pending[-1]["id"] and items[7].question == items[6].question


def test_check_image_decodes_the_whole_file_and_load_image_turns_it_upright(tmp_path):
    """A truncated JPEG passes PIL's verify() alone: the up-front check decodes it (at 1/8 scale) and names
    the sample. An EXIF orientation tag is applied, as transformers' own loader does."""
    import io

    from PIL import Image

    from l2s_lightning.data.images import check_image, load_image

    buffer = io.BytesIO()
    Image.frombytes("RGB", (200, 100), bytes(range(256)) * 234 + bytes(96)).save(buffer, "JPEG")
    (tmp_path / "good.jpg").write_bytes(buffer.getvalue())
    (tmp_path / "cut.jpg").write_bytes(
        buffer.getvalue()[: int(len(buffer.getvalue()) * 0.7)]
    )  # header whole: verify() passes
    with Image.open(tmp_path / "cut.jpg") as image:
        image.verify()
    check_image(tmp_path / "good.jpg", "s0")
    with pytest.raises(ValueError, match=r"image of sample 's1' is unreadable: .*cut.jpg \(.*(?i:truncated)"):
        check_image(tmp_path / "cut.jpg", "s1")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.new("RGB", (200, 100)).save(tmp_path / "phone.jpg", exif=exif)
    assert load_image(tmp_path / "phone.jpg").size == (100, 200)


def test_a_misspelt_category_or_limit_key_is_an_error(tmp_path):
    """`--data.categories '[medicl, weapons]'` extracted the weapons rows alone; a limit key 'trian' was ignored."""
    source = MMSafetyBenchSource(str(MMSB), scenarios=["01", "03"], use_images=False)
    with pytest.raises(
        ValueError,
        match=r"categories \['01-Ilegal'\] are not in .*its categories: \['01-Illegal_Activitiy', '03-Malware_Generation'\]",
    ):
        PromptDataModule(
            source, categories=["01-Ilegal", "03-Malware_Generation"], split_file=str(tmp_path / "s.json")
        ).rows()
    with pytest.raises(ValueError, match=r"keys must be among"):
        PromptDataModule(source, limit_per_category={"trian": 2, "test": 1}, split_file=str(tmp_path / "s.json")).rows()
    rows = PromptDataModule(
        source,
        categories=["03-Malware_Generation"],
        limit_per_category={"train": 2, "test": 1},
        split_file=str(tmp_path / "s.json"),
    ).rows()
    assert len(rows) == 3 and {r["category"] for r in rows} == {"03-Malware_Generation"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("- a\n- b\n", r"a template set must be a mapping \(name, behaviours, categories\), got \['a', 'b'\]"),
        ("name: t\nbehaviours: [a, b]\n", r"behaviours must be a mapping of names, got \['a', 'b'\]"),
        (
            "name: t\nbehaviours:\n  a: {positive: x, negative: y}\ncategories: [c]\n",
            r"categories must be a mapping of names, got \['c'\]",
        ),
        (
            "name: t\nbehaviours:\n  a: {positive: x, negative: y}\ncategories:\n  c: {behaviour: a, fields: 3}\n",
            r"category 'c' fields must be a mapping, got 3",
        ),
    ],
)
def test_template_file_of_the_wrong_shape_is_named(tmp_path, body, message):
    path = tmp_path / "t.yaml"
    path.write_text(body)
    with pytest.raises(L2SInputError, match=rf"t\.yaml: {message}"):
        load_templates(str(path))


def test_jsonl_takes_numbers_as_category_and_label(tmp_path):
    (tmp_path / "n.jsonl").write_text('{"id": 1, "question": "q", "category": 3, "label": 0}\n')
    data = JsonlSource(str(tmp_path / "n.jsonl")).load()
    assert data["category"] == ["3"] and data["label"] == ["0"]


def test_mm_safetybench_mixes_question_fields_one_style_per_question():
    root = MMSB
    mixed = MMSafetyBenchSource(str(root), question_field=["Changed Question", "Question"], use_images=False).load()
    changed = MMSafetyBenchSource(str(root), question_field="Changed Question", use_images=False).load()
    plain = MMSafetyBenchSource(str(root), question_field="Question", use_images=False).load()
    assert mixed["id"] == changed["id"]  # every question once, same ids
    first = [i for i, sample_id in enumerate(mixed["id"]) if sample_id.startswith("01-")]
    for position, row in enumerate(first[:4]):
        expected = changed if position % 2 == 0 else plain
        assert mixed["question"][row] == expected["question"][row]
    assert MMSafetyBenchSource(str(root), question_field=["Changed Question", "Question"]).options()[
        "question_field"
    ] == ["Changed Question", "Question"]
    with pytest.raises(L2SInputError, match="asks about an image"):
        MMSafetyBenchSource(str(root), question_field=["Question", "Rephrased Question"], use_images=False).load()
    with pytest.raises(L2SInputError, match="a list of field names"):
        MMSafetyBenchSource(str(root), question_field=[], use_images=False).load()
