"""The latent-space benchmark's AG News parts (benchmarks/latent_space.py --only agnews|guidance|map): the
AG News DiTs on the flagship's autoencoder, classifier guidance against classifier-free guidance, and
the PCA map of the flagship's latents."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from flagship import autoencoder_dir, flagship_pipeline
from runner import RESULTS_DIR, ROOT, last_record, load_pipeline, log, run_cli
from scoring import rocstories

from latentdlm.data.sources import data_root, load_labeled_texts

AGNEWS_NAMES = {"1": "World", "2": "Sports", "3": "Business", "4": "Sci/Tech"}
AGNEWS_DIT_MINUTES, CLASSIFIER_MINUTES = 10.0, 5.0
NUM_VALIDATION, NUM_TEST = 100, 500  # generated items per guidance setting
CLASSIFIER_SCALES, CFG_SCALES = [1.0, 3.0, 10.0], [1.5, 2.0, 4.0]
APG_SCALES = {"cfg": [2.0, 4.0, 8.0], "apg": [4.0, 8.0, 15.0]}  # APG is made for larger scales


def agnews_splits() -> dict[str, list[tuple[str, str]]]:
    pairs = load_labeled_texts(str(data_root() / "ag_news" / "train.csv"), "content", "label")
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0)).tolist()
    rows = [(pairs[i][0], AGNEWS_NAMES[pairs[i][1].strip()]) for i in order]
    return {"train": rows[:-1000], "validation": rows[-1000:-500], "test": rows[-500:]}


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["content", "label"])
        writer.writerows(rows)
    return path


def part_agnews(args, results: dict) -> None:
    work = args.work_dir
    train = write_csv(work / "agnews-train.csv", agnews_splits()["train"])
    for kind, extra in (("uncond", []), ("class", ["data.label_names=null"])):
        run = work / f"agnews-{kind}"
        if not (run / "pipeline").exists():
            print(f"== AG News {kind} DiT: {AGNEWS_DIT_MINUTES} min", flush=True)
            run_cli(["train-diffusion", "--config", str(ROOT / f"configs/diffusion/flagship/concept_agnews_{kind}.yaml"),
                     f"autoencoder={autoencoder_dir(args.ladder_dir, args.flagship)}", f"data.source={train}", f"training.output_dir={run}",
                     f"training.max_minutes={AGNEWS_DIT_MINUTES}", "training.eval_every=0", "training.overwrite_output_dir=true", *extra],
                    run.with_suffix(".log"))
        results.setdefault("agnews", {})[kind] = last_record(run)
        results.save()


def topic_judge(train_rows):
    """The independent judge: logistic regression on mpnet features of real AG News items."""
    from sklearn.linear_model import LogisticRegression

    from latentdlm.evaluation.generation import sentence_features

    judge = LogisticRegression(max_iter=2000).fit(sentence_features([t for t, _ in train_rows], "mpnet"), [c for _, c in train_rows])
    return lambda texts: judge.predict(sentence_features(texts, "mpnet"))


def guided_texts(pipe, count: int, seed: int, **kwargs) -> tuple[list[str], list[str]]:
    wanted = [AGNEWS_NAMES[str(1 + i % 4)] for i in range(count)]
    return pipe(num_samples=count, class_labels=wanted, num_inference_steps=20, seed=seed, show_progress=False, **kwargs).texts, wanted


def guided_at_best_scale(pipe, knob: str, scales: list[float], judge, real_features, **extra) -> dict:
    """`knob`'s scale chosen on validation by topic accuracy, then the test once: accuracy, MAUVE on mpnet
    features, set diversity and examples."""
    from latentdlm.evaluation.generation import diversity, mauve_seeds, sentence_features

    accuracy = lambda texts, wanted: float((judge(texts) == wanted).mean())  # noqa: E731
    sweep = {str(s): accuracy(*guided_texts(pipe, NUM_VALIDATION, 1, **{knob: s}, **extra)) for s in scales}
    best = float(max(sweep, key=sweep.get))
    texts, wanted = guided_texts(pipe, NUM_TEST, 0, **{knob: best}, **extra)
    mauve = mauve_seeds(real_features, sentence_features(texts, "mpnet"))
    return {"validation_accuracy_by_scale": sweep, knob: best, "accuracy": accuracy(texts, wanted),
            "mauve_mpnet": mauve["mean"], "mauve_mpnet_std": mauve["std"], "diversity_set": diversity(texts),
            "examples": [{"class": c, "text": t} for t, c in list(zip(texts, wanted))[:6]]}


def part_guidance(args, results: dict) -> None:
    from latentdlm.diffusion.classifier import LatentClassifier
    from latentdlm.evaluation.generation import sentence_features
    from latentdlm.training.classifier import train_latent_classifier

    work = args.work_dir
    data = agnews_splits()
    uncond = load_pipeline(work / "agnews-uncond" / "pipeline")
    conditional = load_pipeline(work / "agnews-class" / "pipeline")
    folder = work / "agnews-classifier"
    if not folder.exists():
        rows = data["train"][:4000]
        model, record = train_latent_classifier(uncond, [t for t, _ in rows], [c for _, c in rows], CLASSIFIER_MINUTES)
        model.save_pretrained(folder)
        (folder / "training.json").write_text(json.dumps(record, indent=2))
    classifier = LatentClassifier.from_pretrained(folder)
    judge = topic_judge(data["train"][:4000])
    real = data["test"]
    rows = results["guidance"] = {"classifier": json.loads((folder / "training.json").read_text()),
                                  "judge_accuracy_on_real_test": float((judge([t for t, _ in real]) == [c for _, c in real]).mean())}
    systems = {"classifier_guidance": (uncond, "classifier_scale", CLASSIFIER_SCALES, {"classifier": classifier}),
               "cfg": (conditional, "guidance_scale", CFG_SCALES, {})}
    real_features = sentence_features([t for t, _ in real], "mpnet")
    for name, (pipe, knob, scales, extra) in systems.items():
        rows[name] = guided_at_best_scale(pipe, knob, scales, judge, real_features, **extra)
        log(rows[name], name)
        results.save()
    unguided, wanted = guided_texts(uncond, NUM_TEST, 0, classifier=classifier, classifier_scale=0.0)
    rows["unguided_accuracy"] = float((judge(unguided) == wanted).mean())  # chance level is 0.25: what guidance adds


def part_apg(args, results: dict) -> None:
    """Adaptive projected guidance against classifier-free guidance on one class-conditional AG News DiT
    (trained here on --apg-autoencoder, the shipped demo adapter by default): each method's scale chosen
    on validation by topic accuracy, then the test once (accuracy, MAUVE on mpnet features, set diversity)."""
    from latentdlm.evaluation.generation import sentence_features

    work, data = args.work_dir, agnews_splits()
    run = work / "agnews-class-apg"
    if not (run / "pipeline").exists():
        train = write_csv(work / "agnews-train.csv", data["train"])
        print(f"== AG News class-conditional DiT on {args.apg_autoencoder}: {AGNEWS_DIT_MINUTES} min", flush=True)
        run_cli(["train-diffusion", "--config", str(ROOT / "configs/diffusion/flagship/concept_agnews_class.yaml"),
                 f"autoencoder={args.apg_autoencoder}", f"data.source={train}", f"training.output_dir={run}", "data.label_names=null",
                 f"training.max_minutes={AGNEWS_DIT_MINUTES}", "training.eval_every=0", "training.overwrite_output_dir=true"],
                run.with_suffix(".log"))
    pipe, judge = load_pipeline(run / "pipeline"), topic_judge(data["train"][:4000])
    real = data["test"]
    real_features = sentence_features([t for t, _ in real], "mpnet")
    rows = results["apg"] = {"dit": last_record(run), "autoencoder": str(args.apg_autoencoder)}
    for method, scales in APG_SCALES.items():
        rows[method] = guided_at_best_scale(pipe, "guidance_scale", scales, judge, real_features, guidance_method=method)
        log(rows[method], method)
        results.save()


# ---- the picture -----------------------------------------------------------------------------------
def part_map(args, results: dict) -> None:
    """A PCA map of paragraph latents (the concept designs: mean sentence embedding) of AG News test items by topic
    and ROCStories validation stories, with the slerp path from a story to a Sports item drawn on it."""
    from latentdlm.evaluation.plots import paragraph_vectors, plot_latent_map

    pipe = load_pipeline(flagship_pipeline(args))
    news = agnews_splits()["test"][:300]
    stories = rocstories().validation[-100:]
    texts, labels = [t for t, _ in news] + stories, [c for _, c in news] + ["ROCStories"] * len(stories)
    encoded = pipe.encode(texts)
    source, target = stories[0], next(t for t, c in news if c == "Sports")
    path = pipe.interpolate(source, target, num_points=7)
    png = RESULTS_DIR / "latent_space_map.png"
    plot_latent_map(png, paragraph_vectors(encoded.latents, encoded.segment_mask), labels,
                    paragraph_vectors(path.latents, path.segment_mask), [f"{t:.2f}" for t in path.positions],
                    title=f"design ({args.flagship}) latents (mean sentence embedding), PCA\na story -> Sports path")
    results["map"] = {"png": str(png.relative_to(ROOT)), "points": len(texts), "path": {"source": source, "target": target,
                                                                                       "texts": path.texts}}

