"""PNG plots of a training run's metrics.jsonl (losses and held-out scores against steps)."""

from __future__ import annotations

import json
from pathlib import Path


def plot_training_curves(metrics_path: str | Path, png_path: str | Path, title: str = "") -> Path:
    """One panel per metric family: training losses, then each `eval/...` score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
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
