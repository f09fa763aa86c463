import json

import pytest
from transformers import AutoTokenizer

from latentdlm.data.sources import BUNDLED
from latentdlm.data.tokenization import train_bpe_tokenizer
from latentdlm.errors import LatentDLMError


@pytest.fixture(scope="module")
def austen():
    with BUNDLED["austen"].open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


@pytest.fixture(scope="module")
def tokenizer(austen):
    return train_bpe_tokenizer(austen[:1500], vocab_size=2000)


def test_special_tokens_and_length(tokenizer):
    assert len(tokenizer) == 2000
    names = ["pad_token", "bos_token", "eos_token", "unk_token", "mask_token"]
    assert [getattr(tokenizer, name) for name in names] == ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
    assert [getattr(tokenizer, name + "_id") for name in names] == [0, 1, 2, 3, 4]
    assert tokenizer.model_max_length == 512


def test_encoding_is_wrapped_in_bos_eos(tokenizer):
    ids = tokenizer("It is a truth universally acknowledged.")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    batch = tokenizer(["Short.", "A longer sentence."], padding=True)["input_ids"]
    assert batch[0][-1] == tokenizer.pad_token_id


def test_exact_round_trip_on_real_paragraphs(tokenizer, austen):
    odd = ["  leading and trailing  ", "tabs\tand\nnew lines", "Ünïcode — “quotes” and 日本語 , spaced ."]
    for text in austen[1500:3500] + odd:  # mostly paragraphs the tokenizer did not see
        assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text


def test_save_and_reload(tokenizer, austen, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in austen[:200]:
        assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert reloaded.mask_token_id == tokenizer.mask_token_id and reloaded.model_max_length == 512


def test_lowercase_option(austen):
    tokenizer = train_bpe_tokenizer(austen[:300], vocab_size=600, lowercase=True)
    assert tokenizer.decode(tokenizer("Emma Woodhouse")["input_ids"], skip_special_tokens=True) == "emma woodhouse"


def test_user_mistakes():
    with pytest.raises(LatentDLMError, match="vocab_size=100 is too small"):
        train_bpe_tokenizer(["some text"], vocab_size=100)
    with pytest.raises(LatentDLMError, match="learned no merges"):
        train_bpe_tokenizer([], vocab_size=1000)
