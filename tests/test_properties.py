"""Property-based: arbitrary unicode (control characters, NUL, emoji, right-to-left scripts, very long
words, empty lines) never loses text in segmentation and never crashes encode -> decode."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentdlm.autoencoder.model import ParagraphAutoencoder
from latentdlm.data.segmentation import SegmentationConfig, SentenceSegmenter
from latentdlm.errors import LatentDLMError

PIECES = st.sampled_from([
    "The cat sat.", "Mr. Smith left!", "Why?", "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd.", "\u0645\u0631\u062d\u0628\u0627.",
    "\U0001f600\U0001f680", "\x00", "\x07\x1b", "\u200b\u200f", "\n\n", "\t", "...", "\"Yes,\" she said.", "a" * 300,
    "\u00e9t\u00e9", "\ufeff", "\r\n", "Dr.", "\u2028", " ",
])
TEXTS = st.one_of(st.text(max_size=400), st.lists(st.one_of(PIECES, st.text(max_size=30)), max_size=30).map("".join))
CONFIGS = [
    SegmentationConfig(mode="sentences"),
    SegmentationConfig(mode="sentences", max_segments=3, min_chars=20),
    SegmentationConfig(mode="dialogue_turns"),
    SegmentationConfig(mode="none"),
]


def squeeze(text: str) -> str:
    return "".join(text.split())


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.mode}-{c.max_segments}-{c.min_chars}")
@settings(max_examples=150, deadline=None)
@given(text=TEXTS)
def test_segments_rejoin_to_the_input_up_to_whitespace(config, text):
    segments = SentenceSegmenter(config).split(text)
    assert squeeze("".join(segments)) == squeeze(text)  # nothing lost, added or reordered
    assert all(segment.strip() for segment in segments)
    assert (segments == []) == (not text.strip())


@pytest.fixture(scope="module")
def model(autoencoder):
    return ParagraphAutoencoder.from_pretrained(autoencoder)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(TEXTS, min_size=1, max_size=4))
def test_encode_decode_never_crashes_and_gives_one_text_per_input(model, texts):
    if any(not text.strip() for text in texts):
        with pytest.raises(LatentDLMError):
            model.reconstruct(texts, batch_size=2)
        return
    outputs = model.reconstruct(texts, batch_size=2)
    assert len(outputs) == len(texts) and all(isinstance(o, str) for o in outputs)
