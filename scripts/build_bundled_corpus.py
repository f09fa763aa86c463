"""Regenerate the bundled public-domain corpus in latentdlm/data/corpus/ from the shared data folder.

Usage: python scripts/build_bundled_corpus.py   (reads $LATENTDLM_DATA, default <repo>/../shared/data)
"""

import json
import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "latentdlm" / "data" / "corpus"
MIN_CHARS = 40
SENTENCE_END = re.compile(r"[.!?]")


def is_paragraph(text: str) -> bool:
    """A real paragraph: long enough and with a sentence end (drops headings such as "CHAPTER I")."""
    return len(text) >= MIN_CHARS and SENTENCE_END.search(text) is not None


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{path.relative_to(REPO)}: {len(rows)} rows, {path.stat().st_size:,} bytes")


def main() -> None:
    data = Path(os.environ.get("LATENTDLM_DATA", REPO.parent / "shared" / "data"))
    OUT.mkdir(parents=True, exist_ok=True)

    with (data / "austen" / "paragraphs.jsonl").open(encoding="utf-8") as f:
        austen = [json.loads(line) for line in f if line.strip()]
    write_jsonl(
        OUT / "austen.jsonl",
        [{"book": r["book"], "text": r["text"].strip()} for r in austen if is_paragraph(r["text"].strip())],
    )

    fables = json.loads((data / "aesop" / "fables.json").read_text(encoding="utf-8"))
    write_jsonl(
        OUT / "aesop.jsonl",
        [{"title": r["title"], "lesson": r["lesson"], "text": r["fable"].strip()} for r in fables],
    )


if __name__ == "__main__":
    main()
