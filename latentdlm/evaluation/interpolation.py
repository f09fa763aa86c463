"""Interpolation experiments over many (A, B) pairs: how the decoded text moves from A to B.

Per path position t: similarity of the decoded text to A and to B (MiniLM sentence-embedding cosine and
sentence BLEU), the decoder's own per-token loss on what it wrote (a fluency proxy: off-manifold latents
decode with low confidence), and whether the text is new (neither A, B, nor the decoded endpoints).
Per path: monotonic if its similarity to B never drops by more than MONOTONIC_TOLERANCE between points.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import sacrebleu
from tqdm.auto import tqdm

MONOTONIC_TOLERANCE = 0.02


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()).lower() == " ".join(b.split()).lower()


def path_record(pipe, source: str, target: str, num_points: int, method: str, through_noise: Optional[float],
                num_inference_steps: int = 20, feature_model: Optional[str] = None) -> dict:
    """One pair's path: its texts and per-point measures."""
    from latentdlm.evaluation.generation import row_cosines, sentence_features

    out = pipe.interpolate(source, target, num_points, method, through_noise, num_inference_steps)
    features = sentence_features([source, target, *out.texts], feature_model)
    to_a, to_b = row_cosines(features[2:], features[0]), row_cosines(features[2:], features[1])
    nll = pipe.autoencoder.decoder_nll(out.latents[out.segment_mask], out.segments)
    per_point, start = [], 0
    for row in out.segments:
        per_point.append(float(nll[start : start + len(row)].mean()) if row else float("nan"))
        start += len(row)
    ends = (out.texts[0], out.texts[-1])
    new = [not any(_same(text, other) for other in (source, target, *ends)) for text in out.texts]
    return {
        "source": source, "target": target, "positions": out.positions, "texts": out.texts,
        "cosine_to_a": to_a.tolist(), "cosine_to_b": to_b.tolist(),
        "bleu_to_a": [sacrebleu.sentence_bleu(t, [source]).score for t in out.texts],
        "bleu_to_b": [sacrebleu.sentence_bleu(t, [target]).score for t in out.texts],
        "decoder_nll": per_point, "new_text": new,
        "monotonic": bool(all(b - a >= -MONOTONIC_TOLERANCE for a, b in zip(to_b, to_b[1:]))),
    }


def interpolation_experiment(pipe, pairs: Sequence[tuple[str, str]], num_points: int = 7, method: str = "slerp",
                             through_noise: Optional[float] = None, num_inference_steps: int = 20, progress: bool = True) -> dict:
    """Every pair's path and the summary: per-position means and the two rates."""
    paths = [path_record(pipe, a, b, num_points, method, through_noise, num_inference_steps)
             for a, b in tqdm(pairs, desc="interpolating", disable=not progress)]
    curves = {key: np.nanmean([p[key] for p in paths], axis=0).tolist()
              for key in ("cosine_to_a", "cosine_to_b", "bleu_to_a", "bleu_to_b", "decoder_nll", "new_text")}
    interior = [flag for p in paths for flag in p["new_text"][1:-1]]
    return {
        "settings": {"pairs": len(paths), "num_points": num_points, "method": method, "through_noise": through_noise,
                     "num_inference_steps": num_inference_steps, "monotonic_tolerance": MONOTONIC_TOLERANCE},
        "positions": paths[0]["positions"] if paths else [],
        "curves": curves,
        "new_text_rate": float(np.mean(interior)) if interior else float("nan"),
        "monotonic_rate": float(np.mean([p["monotonic"] for p in paths])) if paths else float("nan"),
        "paths": paths,
    }


def plot_interpolation_curves(results: dict[str, dict], png_path) -> None:
    """One line per experiment (a label -> interpolation_experiment result): similarity to A and B, BLEU,
    the decoder's loss and the share of new texts against the path position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("MiniLM cosine to A (solid) / B (dashed)", ("cosine_to_a", "cosine_to_b")),
              ("BLEU to A (solid) / B (dashed)", ("bleu_to_a", "bleu_to_b")),
              ("decoder per-token loss on its output", ("decoder_nll",)), ("share of new texts", ("new_text",))]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6))
    for index, (label, result) in enumerate(results.items()):
        colour = f"C{index}"
        for ax, (title, keys) in zip(axes, panels):
            for key, style in zip(keys, ("-", "--")):
                ax.plot(result["positions"], result["curves"][key], style, marker="o", markersize=3, color=colour,
                        label=label if style == "-" else None)
            ax.set(title=title, xlabel="t (0 = A, 1 = B)")
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
