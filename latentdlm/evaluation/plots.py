"""PNG plots of a training run's metrics.jsonl (losses and held-out scores against steps)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional


def plot_training_curves(metrics_path: str | Path, png_path: str | Path, title: str = "") -> Optional[Path]:
    """One panel per metric family: training losses, then each `eval/...` score (None, and no file, for a
    run too short to have logged anything)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics_path = Path(metrics_path)
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()] if metrics_path.exists() else []
    if not records:
        return None
    losses = sorted({k for r in records if "loss" in r for k in r if k not in ("step", "train_minutes", "lr")})
    evals = sorted({k for r in records for k in r if k.startswith("eval/")})
    panels = [("training losses", losses)] + [(name.removeprefix("eval/"), [name]) for name in evals]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (label, keys) in zip(axes[0], panels):
        for key in keys:
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                ax.plot(*zip(*points), marker="o" if label != "training losses" else None, markersize=3, label=key)
        ax.set(title=label, xlabel="optimizer step")
        ax.grid(alpha=0.3)
        if label == "training losses":
            ax.set_yscale("symlog", linthresh=1e-3)
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return Path(png_path)


def paragraph_vectors(latents, segment_mask):
    """(N, S, k, d) latents with their (N, S) mask -> one vector per text: the mean of its segments' k x d latents."""
    flat = latents.reshape(*latents.shape[:2], -1)
    keep = segment_mask[..., None].to(flat.dtype)
    return ((flat * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1)).numpy()


def plot_latent_map(png_path: str | Path, background=None, background_labels=None, path=None, path_labels=None,
                    title: str = "latent space (PCA)", highlight: Optional[int] = None) -> Path:
    """A PCA map (scikit-learn) of paragraph vectors: `background` (N, D) points coloured by
    `background_labels` (classes or sources), and an interpolation `path` (P, D) drawn on top as a line
    with its points annotated by `path_labels` (e.g. t), point `highlight` marked. The PCA is fitted on
    everything shown."""
    import matplotlib
    import numpy as np
    from sklearn.decomposition import PCA

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in (background, path) if p is not None and len(p)]
    if not parts:
        raise ValueError("nothing to plot: give background points, a path, or both")
    pca = PCA(n_components=2, random_state=0).fit(np.concatenate(parts))
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    if background is not None and len(background):
        xy = pca.transform(background)
        labels = list(background_labels) if background_labels is not None else ["texts"] * len(xy)
        for name in sorted(set(labels), key=str):
            rows = [i for i, label in enumerate(labels) if label == name]
            ax.scatter(xy[rows, 0], xy[rows, 1], s=8, alpha=0.5, label=str(name))
    if path is not None and len(path):
        xy = pca.transform(path)
        ax.plot(xy[:, 0], xy[:, 1], "-o", color="black", markersize=4, linewidth=1.2, label="interpolation path")
        for i, label in enumerate(path_labels if path_labels is not None else range(len(xy))):
            ax.annotate(str(label), xy[i], fontsize=7, xytext=(3, 3), textcoords="offset points")
        if highlight is not None:
            ax.plot(*xy[highlight], "*", color="crimson", markersize=16, label="this point")
    ratio = pca.explained_variance_ratio_
    ax.set(title=title, xlabel=f"PC1 ({ratio[0]:.0%} of variance)", ylabel=f"PC2 ({ratio[1]:.0%})")
    ax.legend(fontsize=7, markerscale=1.5)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return Path(png_path)
