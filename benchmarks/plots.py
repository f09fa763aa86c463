"""The benchmarks' figures, each drawn from its results JSON (benchmarks/results/<name>.json -> <name>.png):
the runner redraws a benchmark's figure every time it saves the results."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the file-only backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mauve_bars(ax, rows: dict, colour: str, labels: bool = True) -> None:
    """MAUVE (mpnet) bars with their std and the coherence ratio as dots, one per row."""
    names = list(rows)
    ax.bar(names, [rows[n]["mauve_mpnet"] for n in names], yerr=[rows[n]["mauve_mpnet_std"] for n in names], color=colour,
           label="MAUVE (mpnet)" if labels else None)
    ax.plot(names, [rows[n]["coherence_ratio"] for n in names], "o", color="tab:red", label="coherence ratio" if labels else None)


def save(fig, path: Path, dpi: int) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


def autoencoder(results: dict, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, res in results["modes"].items():
        xs = [p["train_minutes"] for p in res["curve"]]
        axes[0].plot(xs, [p["bleu"] for p in res["curve"]], marker="o", label=f"{name} mode")
        axes[1].plot(xs, [p["latent_gap"] for p in res["curve"]], marker="o", label=f"{name} mode")
    axes[0].axhline(80, color="grey", linestyle="--", linewidth=1, label="segment-mode target")
    axes[0].set(xlabel="training minutes (2 CPU cores)", ylabel="held-out BLEU", title="Reconstruction on ROCStories dev")
    axes[1].set(xlabel="training minutes (2 CPU cores)", ylabel="NLL(shuffled z) - NLL(z), nats", title="Latent usage (0 = collapse)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    save(fig, path, 120)


def summarization(results: dict, path: Path) -> None:
    plt = pyplot()
    names = list(results["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        res = results["datasets"][name]
        scales = [r["guidance_scale"] for r in res["sweep"]]
        for metric, colour in (("rouge1", "tab:blue"), ("rouge2", "tab:green"), ("rougeL", "tab:red")):
            ax.plot(scales, [r[metric] for r in res["sweep"]], marker="o", color=colour, label=f"latentdlm {metric}")
            ax.axhline(res["lead1"][metric], color=colour, linestyle=":", linewidth=1)
            ax.axhline(res["ar_baseline"][metric], color=colour, linestyle="--", linewidth=1)
        ax.set(xlabel="guidance scale", ylabel="ROUGE F1", title=f"{name}: sweep on validation; dotted lead-1, dashed AR (test)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save(fig, path, 120)


def text_to_text(results: dict, path: Path) -> None:
    """Per summary task: validation ROUGE-L against the guidance scale (each DiT and decoding rule, one candidate),
    the peer's validation ROUGE-L per rule dashed."""
    tasks = [name for name in ("debian", "xsum", "dialogsum") if "validation" in results.get(name, {})]
    if not tasks:
        return
    plt = pyplot()
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, name in zip(axes[0], tasks):
        sweep = results[name]["validation"]["sweep"]
        arm = lambda r: (r["granularity"], r["source_dropout"], r["rule"])  # noqa: E731
        for granularity, dropout, rule in sorted({arm(r) for r in sweep if r["system"] == "latentdlm"}):
            rows = [r for r in sweep if r["system"] == "latentdlm" and arm(r) == (granularity, dropout, rule) and r["candidates"] == 1]
            ax.plot([r["guidance_scale"] for r in rows], [r["rougeL"] for r in rows], marker="o",
                    label=f"DiT {granularity}, source dropout {dropout}, {rule}")
        for row in (r for r in sweep if r["system"] == "peer"):
            ax.axhline(row["rougeL"], linestyle="--", linewidth=1, color="grey")
            ax.annotate(f"peer {row['rule']}", (ax.get_xlim()[0], row["rougeL"]), fontsize=7, va="bottom")
        ax.set(xlabel="guidance scale", ylabel="ROUGE-L F1 (validation)", title=f"{name}: source-aware latentdlm vs the peer")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save(fig, path, 120)


def speed(results: dict, path: Path) -> None:
    """Stories per second against MAUVE (mpnet, with its seed spread), at batch 1 and at batch 32."""
    systems = results.get("frontier", {}).get("systems", {})
    if not systems:
        return
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, batch in zip(axes, (1, 32)):
        for name, row in systems.items():
            quality, peer = row["quality"], name.startswith("peer")
            label = {"peer": "peer (AR)", "peer_transformers_generate": "peer (AR, HF generate)"}.get(name, f"design ({name})")
            ax.errorbar(row[f"batch_{batch}"]["stories_per_s"], quality["mauve_mpnet"], yerr=quality["mauve_mpnet_std"], marker="o",
                        color="tab:grey" if peer else "tab:blue", capsize=3)
            ax.annotate(label, (row[f"batch_{batch}"]["stories_per_s"], quality["mauve_mpnet"]), textcoords="offset points",
                        xytext=(6, -10 if name == "peer_transformers_generate" else 4), fontsize=8)
        fastest = max(row[f"batch_{batch}"]["stories_per_s"] for row in systems.values())
        ax.set(xlabel="stories per second", ylabel="MAUVE (mpnet, test)", title=f"batch {batch}", ylim=(0, 1), xlim=(0, 1.3 * fastest))
        ax.grid(alpha=0.3)
    fig.suptitle("Speed against quality: latentdlm designs and the AR peer (LoRA merged, bf16 base, same decoding rule)")
    save(fig, path, 120)


def generation(results: dict, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    arms = results.get("ablation", {}).get("arms", {})
    if arms:
        mauve_bars(axes[0], arms, "tab:blue")
        axes[0].set(title="Ablation (validation, one factor at a time)", ylim=(0, 1))
        axes[0].tick_params(axis="x", labelrotation=40)
        axes[0].legend(fontsize=8)
    final = results.get("final")
    if final:
        bars = {**{k: v for k, v in final["samplers"].items()}, "AE recon.": final["ceilings"]["autoencoder_reconstructions"],
                "human": final["ceilings"]["human"]}
        if results.get("ar"):
            bars["AR baseline"] = results["ar"]
        mauve_bars(axes[1], bars, "tab:gray", labels=False)
        axes[1].set(title="Test: MAUVE (mpnet, bars) and coherence (dots)", ylim=(0, 1.05))
        axes[1].tick_params(axis="x", labelrotation=30)
    speed_ = results.get("speed")
    if speed_:
        x = range(2)
        axes[2].bar([i - 0.2 for i in x], [speed_["latentdlm"][k] for k in ("batch_1", "batch_32")], width=0.4, label="latentdlm DPM-20")
        axes[2].bar([i + 0.2 for i in x], [speed_["ar"][k] for k in ("batch_1", "batch_32")], width=0.4, label="AR baseline")
        axes[2].set_xticks(list(x), ["batch 1", "batch 32"])
        axes[2].set(ylabel="paragraphs / second", title="Speed", yscale="log")
        axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    save(fig, path, 110)


def quality_ladder(results: dict, path: Path) -> None:
    plt = pyplot()
    systems = results.get("uncond", {}).get("systems", {})
    recon = results.get("recon", {}).get("systems", {})
    if not systems and not recon:
        return
    fig, axes = plt.subplots(1, 3, figsize=(16, 3.8))
    if not recon:
        axes[0].text(0.5, 0.5, "reconstruction: not run yet", ha="center", va="center")
        axes[0].set_axis_off()
    if recon:
        names = list(recon)
        places = range(len(names))
        axes[0].bar([x - 0.2 for x in places], [recon[n]["bleu"] / 100 for n in names], 0.4, color="tab:blue", label="BLEU / 100")
        axes[0].bar([x + 0.2 for x in places], [recon[n]["cosine_minilm"] for n in names], 0.4, color="tab:green", label="MiniLM cosine")
        axes[0].set_xticks(list(places), names)
        axes[0].set(title="reconstruction (held-out stories)", ylim=(0, 1))
        axes[0].legend(fontsize=8)
    if systems:
        mauve_bars(axes[1], systems, "tab:blue")
        axes[1].set(title="unconditional stories (test)")
        axes[1].legend(fontsize=8)
    for system, colour in zip(results.get("curve", {}), ("tab:blue", "tab:orange")):
        curve = {float(m): row["mauve_mpnet"] for m, row in results["curve"][system].items()}
        if system in systems:
            curve[results["setup"]["budget_minutes_per_system"]] = systems[system]["mauve_mpnet"]
        if curve:
            minutes = sorted(curve)
            axes[2].plot(minutes, [curve[m] for m in minutes], "o-", color=colour, label=f"{system} (MAUVE mpnet)")
    axes[2].set(title="quality against training minutes", xlabel="training minutes (both stages)", ylim=(0, 1))
    axes[2].legend(fontsize=8)
    save(fig, path, 110)


def latent_space(results: dict, path: Path) -> None:
    from latentdlm.evaluation.interpolation import plot_interpolation_curves

    curves = {f"{name} {setting}": row for name, settings in results.get("interp", {}).get("systems", {}).items()
              for setting, row in settings.items()}
    if curves:
        plot_interpolation_curves(curves, path)


def latent_space_vary(rows: dict, png: Path) -> None:
    plt = pyplot()
    strengths = [r["strength"] for r in rows["curve"]]
    fig, left = plt.subplots(figsize=(6, 3.8))
    left.plot(strengths, [r["cosine_to_input"] for r in rows["curve"]], "o-", color="tab:blue", label="MiniLM cosine to input")
    left.plot(strengths, [r["bleu_to_input"] / 100 for r in rows["curve"]], "s--", color="tab:blue", label="BLEU to input / 100")
    left.set(xlabel="strength (share of the noise schedule)", ylabel="similarity to the input", ylim=(0, 1))
    right = left.twinx()
    right.plot(strengths, [r["perplexity_smollm2"] for r in rows["curve"]], "^-", color="tab:red", label="perplexity (SmolLM2)")
    right.axhline(rows["perplexity_smollm2_of_inputs"], color="tab:red", linestyle=":", linewidth=1)
    right.set_ylabel("perplexity under SmolLM2 (dotted: the inputs)", color="tab:red")
    left.legend(fontsize=7, loc="upper right")
    left.set_title("variations (SDEdit): distance from the input against strength")
    save(fig, png, 110)
