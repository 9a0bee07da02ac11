"""Classical text models as ensemble members: TF-IDF word and character n-grams plus essay counts -> ridge or LightGBM.

Why a member without a backbone: on real essays a LightGBM on TF-IDF features alone scores about what a fine-tuned
small transformer scores, ahead of it on some prompts and behind on others (benchmarks/ASAP.md). Its errors are not
the transformer's, which is what a stacker or a blend feeds on, and it trains in seconds to minutes on a CPU.

A model of `kind: tfidf` (`train.models.<name>.tfidf` holds its settings) trains fold by fold in 02_train like any
other model and writes the same fold folders and `oof.parquet`, so 03, 04, 05, the report and the Kaggle bundle take
it as they take a transformer. Per essay, the features are:
- word 1..n-grams and char_wb a..b-grams (lower-cased), each weighted by sublinear tf (1 + log count) times the
  smoothed idf of the training rows (log((1 + n) / (1 + df)) + 1), rows l2-normalised (one block per analyzer);
- `TextFeaturizer`'s essay counts (length, structure, punctuation, spelling, readability; its spelling vocabulary
  learnt from the training rows), standardised by the training rows' mean and deviation and clipped to +-5.
Learners: ridge (scikit-learn's `Ridge`, a linear fit on every column) or LightGBM (L2 regression for a fixed
number of rounds on the `top_features` columns most correlated with the training rows' scores: the held-out fold
is never used to stop it, only to log its loss). LightGBM runs on one thread, as the stacker does: its result then
does not depend on the machine, and OpenMP threads that spin on a busy CPU make it many times slower, not faster.

Tokenised once: an essay's n-gram counts depend on the essay alone, so `CorpusCounts` counts every train essay once
over every n-gram they hold; a fold keeps the n-grams of its training rows (`min_df`, then the `max_features` most
frequent in those rows) and takes the idf from them, which is what a vectorizer fitted on the training folds alone
would hold, without tokenising the essays again for each fold. Held-out and test essays go through
`TextModel.predict` (a CountVectorizer with the fold's fixed vocabulary): 02's OOF predictions and 05's test
predictions come from one code path, so a fold predicts in 05 exactly what it predicted in 02.

Saved without pickle in the fold folder: `text_model.json` (settings, the n-gram vocabularies, the spelling
vocabulary), `text_model.npz` (idf per block, the counts' mean and deviation, the ridge coefficients; read with
allow_pickle=False) and, for LightGBM, `lightgbm.txt` (the booster's own text format).
"""

from __future__ import annotations

import json
import logging
import time
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.preprocessing import normalize

from common.config.model_params import ModelParams, TextModelParams
from common.core.io import write_json
from common.prepare.text_features import FEATURE_COLUMNS, TextFeaturizer
from common.scoring.metrics import qwk
from common.scoring.thresholds import round_scores

log = logging.getLogger(__name__)

MODEL_FILE = "text_model.json"
ARRAYS_FILE = "text_model.npz"
BOOSTER_FILE = "lightgbm.txt"
FORMAT_VERSION = 1
COUNT_CLIP = 5.0
LOG_EVERY = 25
"""LightGBM: rounds between two rows of the fold's log.csv."""


def vectorizer_settings(p: TextModelParams) -> dict[str, dict]:
    """CountVectorizer arguments per n-gram block ('word', 'char'), in column order; a block that is off is absent."""
    blocks: dict[str, dict] = {}
    if p.word_ngrams > 0:
        blocks["word"] = {"analyzer": "word", "ngram_range": [1, p.word_ngrams], "lowercase": True,
                          "token_pattern": r"(?u)\b\w+\b"}
    if p.char_ngrams:
        blocks["char"] = {"analyzer": "char_wb", "ngram_range": list(p.char_ngrams), "lowercase": True}
    return blocks


def _vectorizer(settings: dict, vocabulary: list[str] | None = None) -> CountVectorizer:
    kwargs = {**settings, "ngram_range": tuple(settings["ngram_range"])}
    return CountVectorizer(**kwargs, vocabulary=vocabulary, dtype=np.float64)


def weigh(counts: sp.spmatrix, idf: np.ndarray) -> sp.csr_matrix:
    """Sublinear tf x idf, rows l2-normalised: counts (n, k) -> the block's features (n, k)."""
    X = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    X.sort_indices()
    X.data = (1.0 + np.log(X.data)) * idf[X.indices]
    return normalize(X, norm="l2", copy=False)


class CorpusCounts:
    """Every n-gram count of a set of essays per block, computed once: blocks[name] is (n essays, all their n-grams),
    terms[name] the n-grams in column order (sorted)."""

    def __init__(self, texts: list[str], blocks: dict[str, dict]):
        self.n = len(texts)
        self.blocks: dict[str, sp.csr_matrix] = {}
        self.terms: dict[str, np.ndarray] = {}
        for name, settings in blocks.items():
            start = time.perf_counter()
            vectorizer = _vectorizer(settings)
            self.blocks[name] = sp.csr_matrix(vectorizer.fit_transform(texts))
            self.terms[name] = vectorizer.get_feature_names_out()
            log.info("%s n-grams %s of %d essays: %d distinct in %.1f s", name, settings["ngram_range"], len(texts),
                     len(self.terms[name]), time.perf_counter() - start)

    def select(self, name: str, rows: np.ndarray, min_df: int, max_features: int
               ) -> tuple[list[str], np.ndarray, sp.csr_matrix]:
        """A fold's vocabulary of block `name` from its training `rows` alone: (terms, idf, the rows' counts)."""
        X = self.blocks[name][rows]
        n_terms = X.shape[1]
        df = np.bincount(X.indices, minlength=n_terms)
        total = np.bincount(X.indices, weights=X.data, minlength=n_terms)
        keep = np.flatnonzero(df >= min_df)
        if keep.size > max_features:  # the most frequent in the training rows; ties to the earlier term
            order = np.lexsort((keep, -total[keep]))
            keep = np.sort(keep[order[:max_features]])
        idf = np.log((1.0 + X.shape[0]) / (1.0 + df[keep])) + 1.0
        return self.terms[name][keep].tolist(), idf, X[:, keep]


@dataclass
class TextModel:
    """One fitted fold model: the vocabularies and weights of its feature blocks and its learner.

    `predict(texts)` gives one continuous score per essay (the 1-6 scale); `save` / `load` write and read the fold
    folder's files (no pickle); `problem(folder)` says what is wrong with a saved one, or None.
    """

    settings: dict  # asdict(TextModelParams)
    vocabularies: dict[str, list[str]]  # block -> n-grams in column order
    idf: dict[str, np.ndarray]
    spelling: list[str] | None  # TextFeaturizer's vocabulary (counts on), else None
    count_mean: np.ndarray | None
    count_std: np.ndarray | None
    coef: np.ndarray | None = None  # ridge
    columns: np.ndarray | None = None  # LightGBM: the feature columns it sees (`top_features`), None: all
    intercept: float = 0.0
    booster_text: str | None = None  # LightGBM's model_to_string()

    def features(self, texts: list[str]) -> sp.csr_matrix:
        """Every feature block of `texts`, side by side: (n, features), float64."""
        blocks = vectorizer_settings(TextModelParams(**self.settings))
        parts = [weigh(_vectorizer(blocks[name], self.vocabularies[name]).transform(texts), self.idf[name])
                 for name in blocks]
        if self.spelling is not None:
            counts = TextFeaturizer.from_vocabulary(self.spelling).transform(texts).to_numpy(dtype=np.float64)
            parts.append(sp.csr_matrix(_standardise(counts, self.count_mean, self.count_std)))
        return sp.hstack(parts, format="csr", dtype=np.float64)

    def inputs(self, texts: list[str]) -> sp.csr_matrix:
        """What the learner sees of `texts`: `features`, restricted to `columns` when set."""
        X = self.features(list(texts))
        return X if self.columns is None else X[:, self.columns]

    def predict(self, texts: list[str]) -> np.ndarray:
        """Continuous scores, shape (n,)."""
        if not texts:
            return np.zeros(0)
        X = self.inputs(list(texts))
        if self.booster_text is not None:
            return np.asarray(_booster(self.booster_text).predict(X), dtype=np.float64)
        return np.asarray(X @ self.coef, dtype=np.float64) + self.intercept

    @property
    def n_features(self) -> int:
        return sum(len(v) for v in self.vocabularies.values()) + (len(FEATURE_COLUMNS) if self.spelling else 0)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / MODEL_FILE, {"format": FORMAT_VERSION, "settings": self.settings,
                                         "vocabularies": self.vocabularies, "spelling": self.spelling,
                                         "intercept": self.intercept, "learner": self.settings["learner"]})
        arrays = {f"idf__{name}": values for name, values in self.idf.items()}
        if self.spelling is not None:
            arrays.update(count_mean=self.count_mean, count_std=self.count_std)
        if self.coef is not None:
            arrays["coef"] = self.coef
        if self.columns is not None:
            arrays["columns"] = self.columns.astype(np.int64)
        with open(folder / ARRAYS_FILE, "wb") as handle:
            np.savez(handle, **arrays)
        if self.booster_text is not None:
            (folder / BOOSTER_FILE).write_text(self.booster_text, encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> TextModel:
        spec = json.loads((folder / MODEL_FILE).read_text(encoding="utf-8"))
        with np.load(folder / ARRAYS_FILE, allow_pickle=False) as arrays:
            values = {key: np.asarray(arrays[key], dtype=np.int64 if key == "columns" else np.float64)
                      for key in arrays.files}
        booster = (folder / BOOSTER_FILE).read_text(encoding="utf-8") if spec["learner"] == "lightgbm" else None
        return cls(settings=spec["settings"], vocabularies=spec["vocabularies"],
                   idf={name: values[f"idf__{name}"] for name in spec["vocabularies"]}, spelling=spec["spelling"],
                   count_mean=values.get("count_mean"), count_std=values.get("count_std"), coef=values.get("coef"),
                   intercept=float(spec["intercept"]), booster_text=booster, columns=values.get("columns"))

    @staticmethod
    def problem(folder: Path) -> str | None:
        """What keeps the saved model in `folder` from loading (file by file), or None. Reads every file."""
        try:
            model = TextModel.load(folder)
        except FileNotFoundError as exc:
            return f"{exc.filename}: not found"
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # truncated
            return f"not a readable text model ({type(exc).__name__}: {exc})"
        lengths = {name: (len(words), model.idf[name].size) for name, words in model.vocabularies.items()}
        bad = [name for name, (a, b) in lengths.items() if a != b]
        if bad:
            return f"{ARRAYS_FILE}: idf of block(s) {bad} do not match the vocabulary"
        if model.booster_text is None and (model.coef is None or model.coef.size != model.n_features):
            return f"{ARRAYS_FILE}: ridge coefficients do not match the {model.n_features} features"
        if model.columns is not None and (model.columns.size == 0 or model.columns.min() < 0
                                          or model.columns.max() >= model.n_features):
            return f"{ARRAYS_FILE}: LightGBM's columns lie outside the {model.n_features} features"
        if model.booster_text is not None:
            from common.core.lightgbm_files import lightgbm_model_problem

            # Checked before LightGBM parses it: its parser crashes the process on some cut files, and takes a
            # file cut in its last line without a word.
            if (cut := lightgbm_model_problem(folder / BOOSTER_FILE)) is not None:
                return f"{BOOSTER_FILE}: {cut}"
            try:
                _booster(model.booster_text)
            except Exception as exc:  # lightgbm raises its own LightGBMError on a damaged model file
                return f"{BOOSTER_FILE}: not a readable LightGBM model ({exc})"
        return None


def is_text_model(folder: Path) -> bool:
    """True for a fold folder of a text model (its text_model.json is there)."""
    return (Path(folder) / MODEL_FILE).is_file()


def _booster(text: str):
    import lightgbm as lgb

    return lgb.Booster(model_str=text)


def _standardise(values: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return np.clip((values - mean) / std, -COUNT_CLIP, COUNT_CLIP)


# --------------------------------------------------------------------------------------------------
# Training one fold


@dataclass
class TextData:
    """A text model's rows: essays and labels in folds.parquet order, their n-gram counts (`CorpusCounts`)."""

    essay_ids: np.ndarray
    texts: list[str]
    scores: np.ndarray
    folds: np.ndarray
    counts: CorpusCounts
    folds_hash: str = ""
    source: str = ""  # fingerprint of the folds table and essay texts (`fingerprints.data_fingerprint`)


def text_data(spec: ModelParams, folds_frame: pd.DataFrame, texts: list[str]) -> TextData:
    """Count the n-grams of every train essay once (the slow part: seconds per thousand essays)."""
    from common.prepare.folds import folds_fingerprint

    counts = CorpusCounts(texts, vectorizer_settings(spec.tfidf))
    return TextData(essay_ids=folds_frame["essay_id"].to_numpy(), texts=list(texts),
                    scores=folds_frame["score"].to_numpy(dtype=np.int64), folds=folds_frame["fold"].to_numpy(),
                    counts=counts, folds_hash=folds_fingerprint(folds_frame))


def fit_text_model(p: TextModelParams, data: TextData, train: np.ndarray, seed: int, held_out: np.ndarray | None = None,
                   threads: int = 1) -> tuple[TextModel, pd.DataFrame]:
    """Fit on the rows `train` (indices) only: vocabularies, idf, count scaling and the learner. Returns the model and
    its training log (step, train_loss, and eval_loss on `held_out` for LightGBM: logged, never used to stop)."""
    blocks = vectorizer_settings(p)
    vocabularies, idf, parts = {}, {}, []
    for name in blocks:
        terms, weights, counts = data.counts.select(name, train, p.min_df, p.max_features)
        vocabularies[name], idf[name] = terms, weights
        parts.append(weigh(counts, weights))
    spelling = mean = std = None
    if p.counts:
        featurizer = TextFeaturizer().fit([data.texts[i] for i in train])
        values = featurizer.transform([data.texts[i] for i in train]).to_numpy(dtype=np.float64)
        mean, std = values.mean(axis=0), values.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        spelling = sorted(featurizer.vocabulary_)
        parts.append(sp.csr_matrix(_standardise(values, mean, std)))
    X = sp.hstack(parts, format="csr", dtype=np.float64)
    y = data.scores[train].astype(np.float64)
    model = TextModel(settings=asdict(p), vocabularies=vocabularies, idf=idf, spelling=spelling, count_mean=mean,
                      count_std=std)
    if p.learner == "ridge":
        from sklearn.linear_model import Ridge

        ridge = Ridge(alpha=p.alpha, solver="sparse_cg", tol=1e-6, max_iter=2000).fit(X, y)
        model.coef, model.intercept = np.asarray(ridge.coef_, dtype=np.float64), float(ridge.intercept_)
        loss = float(np.mean((X @ model.coef + model.intercept - y) ** 2))
        return model, pd.DataFrame([{"stage": 1, "step": 1, "train_loss": loss}])
    if 0 < p.top_features < X.shape[1]:
        model.columns = most_correlated(X, y, p.top_features)
        X = X[:, model.columns]
    held = model.inputs([data.texts[i] for i in held_out]) if held_out is not None and len(held_out) else None
    model.booster_text, steps = _fit_booster(p, X, y, seed, threads, held, data.scores[held_out] if held is not None
                                             else None)
    return model, steps


def most_correlated(X: sp.csr_matrix, y: np.ndarray, k: int) -> np.ndarray:
    """The k columns of X (n, m) with the largest absolute Pearson correlation with y (n,), in column order; a
    constant column correlates 0. One pass over the sparse matrix: seconds for 100k columns."""
    n = X.shape[0]
    mean = np.asarray(X.mean(axis=0)).ravel()
    square = np.asarray(X.multiply(X).mean(axis=0)).ravel()
    std = np.sqrt(np.maximum(square - mean**2, 0.0))
    centred = y - y.mean()
    cov = np.asarray(X.T @ centred).ravel() / n
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.where(std > 1e-12, np.abs(cov) / (std * max(float(centred.std()), 1e-12)), 0.0)
    order = np.lexsort((np.arange(corr.size), -corr))
    return np.sort(order[:k]).astype(np.int64)


def _fit_booster(p: TextModelParams, X: sp.csr_matrix, y: np.ndarray, seed: int, threads: int,
                 X_held: sp.csr_matrix | None, y_held: np.ndarray | None) -> tuple[str, pd.DataFrame]:
    import lightgbm as lgb

    params = {"objective": "regression", "learning_rate": p.learning_rate, "num_leaves": p.num_leaves,
              "feature_fraction": p.feature_fraction, "bagging_fraction": 0.8, "bagging_freq": 1,
              "min_data_in_leaf": 20, "lambda_l2": 1.0, "seed": seed, "deterministic": True, "force_row_wise": True,
              "num_threads": max(threads, 1), "verbose": -1}
    train_set = lgb.Dataset(X, y)
    sets, names = [train_set], ["train"]
    if X_held is not None:  # only logged: the held-out fold never stops or shapes the fit
        sets.append(lgb.Dataset(X_held, np.asarray(y_held, dtype=np.float64), reference=train_set))
        names.append("held_out")
    history: dict = {}
    booster = lgb.train(params, train_set, num_boost_round=p.rounds, valid_sets=sets, valid_names=names,
                        callbacks=[lgb.record_evaluation(history)])
    steps = sorted({*range(LOG_EVERY, p.rounds + 1, LOG_EVERY), p.rounds})
    rows = [{"stage": 1, "step": step, "train_loss": history["train"]["l2"][step - 1],
             **({"eval_loss": history["held_out"]["l2"][step - 1]} if "held_out" in history else {})}
            for step in steps]
    return booster.model_to_string(), pd.DataFrame(rows)


def train_text_fold(spec: ModelParams, data: TextData, fold: int | None, out_dir: Path, seed: int,
                    threads: int = 1) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """Fit fold `fold` (None: every labelled row) and save it to `out_dir`; its held-out rows are predicted by the
    saved model as 05_infer predicts test essays. Returns (oof frame, metrics, log); the caller writes the folder's
    train_config.json."""
    start = time.perf_counter()
    train = np.flatnonzero(data.folds != fold) if fold is not None else np.arange(len(data.scores))
    held_out = np.flatnonzero(data.folds == fold) if fold is not None else np.zeros(0, dtype=np.int64)
    model, steps = fit_text_model(spec.tfidf, data, train, seed, held_out, threads)
    model.save(out_dir)
    preds = TextModel.load(out_dir).predict([data.texts[i] for i in held_out])
    y = data.scores[held_out]
    oof = pd.DataFrame({"essay_id": data.essay_ids[held_out], "fold": fold if fold is not None else -1, "pred": preds})
    score = qwk(y, round_scores(preds)) if len(held_out) else None
    steps.loc[steps.index[-1], "eval_qwk"] = score
    seconds = time.perf_counter() - start
    metrics = {"fold": fold, "qwk_rounded": score,
               "eval_loss": float(np.mean((preds - y) ** 2)) if len(held_out) else None,
               "n_train_rows": int(train.size), "n_pseudo_rows": 0, "n_held_out": int(held_out.size),
               "steps": int(steps["step"].max()), "best_step": None, "n_features": model.n_features,
               "learner": spec.tfidf.learner, "seconds": round(seconds, 1), "train_tokens_per_second": None}
    return oof, metrics, steps
