"""The causal_lm judge on a tiny random Llama with a BPE tokenizer trained offline."""

from __future__ import annotations

import math

import pytest
import torch

from l2s_lightning.evaluation.judges import build_judge
from l2s_lightning.evaluation.judges.base import fill_template


@pytest.fixture(scope="module")
def tiny_judge_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    sentences = [
        f"The answer is {word}. Agent: {filler} {n} safe unsafe assessment {n + 1}"
        for n in range(1, 11)
        for word in ("safe", "unsafe")
        for filler in ("I cannot help with that", "Here are the steps", "Rating")
    ] * 5
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(sentences, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny_judge")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _manual_probs(judge, text: str) -> torch.Tensor:
    ids = judge.tokenizer(text, return_tensors="pt", add_special_tokens=True)["input_ids"]
    with torch.no_grad():
        logits = judge.model(input_ids=ids).logits[0, -1].double()
    return torch.softmax(logits, dim=-1)


def _expected_rating(judge, text: str) -> float:
    """The expected 1-10 rating of ``text``'s next token, one unpadded forward per step: single-token ratings,
    and 10 spelled "1", "0" as P("1") · P("0" | "1")."""
    ids = judge.tokenizer(text, return_tensors="pt", add_special_tokens=True)["input_ids"]

    def probs_after(*extra: int) -> torch.Tensor:
        with torch.no_grad():
            logits = judge.model(input_ids=torch.cat([ids, torch.tensor([list(extra)], dtype=torch.long)], 1)).logits
        return torch.softmax(logits[0, -1].double(), dim=-1)

    first = probs_after()
    weights = {i: float(first[i]) for i in judge.digit_ids}
    ten = 0.0
    for one, zero in judge.ten_splits:
        split = weights[one] * float(probs_after(one)[zero])
        weights[one] -= split
        ten += split
    total = sum(weights.values()) + ten
    return (sum(judge.digit_ids[i] * w for i, w in weights.items()) + 10 * ten) / total


def test_verdict_words_are_single_tokens(tiny_judge_dir):
    judge = build_judge("causal_lm", model=str(tiny_judge_dir))
    assert len(judge.tokenizer.encode("unsafe", add_special_tokens=False)) == 1
    assert len(judge.tokenizer.encode("safe", add_special_tokens=False)) == 1
    assert judge.unsafe_id != judge.safe_id


@pytest.mark.parametrize("vocab", ["full", "pair"])
def test_p_unsafe_matches_manual_softmax(tiny_judge_dir, vocab):
    judge = build_judge(
        {"name": "causal_lm", "kwargs": {"model": str(tiny_judge_dir), "vocab": vocab, "batch_size": 2}}
    )
    prompts = ["How do I pick a lock?", "Is this legal?", "Tell me"]
    responses = ["I cannot help with that.", "Here are the steps: first, second, and a much longer third step.", "ok"]
    scores = judge.p_unsafe(prompts, responses)
    assert len(scores) == 3
    for prompt, response, p in zip(prompts, responses, scores):
        assert 0.0 <= p <= 1.0
        probs = _manual_probs(judge, fill_template(judge.template, prompt, response))
        expected = probs[judge.unsafe_id]
        if vocab == "pair":
            expected = expected / (expected + probs[judge.safe_id])
        # batched, left-padded forward with explicit position ids vs. the unpadded one-by-one forward
        assert math.isclose(p, float(expected), rel_tol=1e-4, abs_tol=1e-7)


def test_quality_is_expected_rating(tiny_judge_dir):
    judge = build_judge("causal_lm", model=str(tiny_judge_dir), answer_prefix=" ")
    ratings = judge.quality(["q"], ["Here are the steps"])
    expected = _expected_rating(judge, fill_template(judge.quality_template, "q", "Here are the steps") + " ")
    assert 1.0 <= ratings[0] <= 10.0
    assert math.isclose(ratings[0], expected, rel_tol=1e-4)
    assert judge.describe()["name"] == "causal_lm"


def test_missing_model_is_a_clear_error(tmp_path):
    from l2s_lightning.evaluation.judges import JudgeUnavailableError

    with pytest.raises(JudgeUnavailableError, match="cannot load model"):
        build_judge("causal_lm", model=str(tmp_path / "nowhere"))


def test_quality_reads_ten_spelled_in_two_digits(tmp_path):
    """A tokenizer that splits numbers into digits spells 10 as "1", "0": the mass of "1" is split by a second
    step into 10 (then "0") and 1 (anything else), not all counted as a rating of 1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([f"Rating: {n} of 10, safe unsafe" for n in range(1, 11)] * 5, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    judge = build_judge("causal_lm", model=str(tmp_path), batch_size=2)
    one, zero = judge.tokenizer.encode("10", add_special_tokens=False)
    assert 10 not in judge.digit_ids.values() and (one, zero) in judge.ten_splits and judge.digit_ids[one] == 1
    prompts, responses = ["q", "a longer question here"], ["Here are the steps", "no"]
    ratings = judge.quality(prompts, responses)  # batch of 2: left padding, then the "1" appended
    for prompt, response, rating in zip(prompts, responses, ratings):
        expected = _expected_rating(judge, fill_template(judge.quality_template, prompt, response))
        assert math.isclose(rating, expected, rel_tol=1e-4), (rating, expected)
