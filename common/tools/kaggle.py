"""The Kaggle upload folder: a notebook generated from 05_infer/run.py and a dataset it reads offline.

`build_bundle` writes
    <out>/dataset/    -> attached to the notebook, mounted at /kaggle/input/<infer.artifacts_dataset>/
        dataset-metadata.json
        code/         common/ (the library, as source), 05_infer/run.py, params.yaml (this run's)
        train/<model>/folds/<member>/   what each member inference averages needs to predict (weights, configs,
                                        tokenizer): fold_<k>[_seed<s>], full[_seed<s>]
        backbones/    the base backbone of LoRA models (their folds point at it by a relative path)
        ensemble/artifacts/       ensemble.json, stacker, text vocabulary
        wheels/       newer wheels of the libraries the Kaggle image may have too old (optional)
        requirements.json         the oldest version of each library the artifacts work with
    <out>/notebook/   -> pushed as the kernel
        <notebook>.ipynb, kernel-metadata.json (GPU on, internet off, competition + dataset as sources)
    <out>/UPLOAD.md   the kaggle CLI commands that upload both

The notebook is generated here with nbformat, never edited by hand: cell 1 checks library versions and
installs what is too old from the dataset's wheels (`pip install --no-index --find-links`, before any
of them is imported), cell 2 runs the shipped 05_infer/run.py exactly as it runs locally.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import nbformat
import yaml

from common.config import layout
from common.config.loader import to_dict
from common.config.params import Params, PathsParams
from common.core.artifact_checks import ENSEMBLE_FILE, escapes
from common.core.errors import PipelineError
from common.core.io import staged_dir, write_json
from common.core.offline import OFFLINE_VARIABLES
from common.ensemble.ensemble_artifact import ENSEMBLE_DIR, VOCABULARY_FILE
from common.ensemble.stacker import LGBMStacker
from common.infer.artifacts import ArtifactSet
from common.prepare.clusters import PromptAssigner

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = "aes-pipeline-infer.ipynb"
# The oldest versions the saved artifacts and the inference code are tested with (import name -> version).
REQUIREMENTS = {
    "torch": "2.3", "transformers": "5.0", "tokenizers": "0.22", "huggingface_hub": "1.0",
    "safetensors": "0.4.3", "lightgbm": "4.3", "scikit-learn": "1.4", "pandas": "2.1", "numpy": "1.26",
    "scipy": "1.11", "pyyaml": "6.0", "tqdm": "4.66",
}
# What the bundle leaves out of common/ (paths under it): the tools (demo and backbone generators, report, this
# packager), training, the 01 stage and 04's search (its target weights, selection rules and the stacker's optuna
# tuning) with 04's stage module; common/infer imports none of them, nor optuna.
LEFT_OUT = ("tools/", "train/", "pseudo/", "ensemble/search.py", "ensemble/selection.py", "ensemble/target.py",
            "ensemble/tuning.py", "ensemble/ensemble_stage.py")
# Wheels shipped by default: pure-Python or manylinux libraries that move fast and that old Kaggle
# images lack in the versions above. torch is never shipped (the image's CUDA build must stay).
SHIPPED_WHEELS = ("transformers", "tokenizers", "huggingface_hub", "safetensors", "peft")
TORCH_DEPENDENT = {"peft"}
# What 05_infer reads of a fold folder (EssayScorer.load, TokenCache, ArtifactSet.check): these files, the
# tokenizer's (by prefix) and the two sub-folders; the OOF file, logs and anything else stay home.
FOLD_FILES = {"scorer.json", "train_config.json", "model.safetensors", "head.safetensors",
              "text_model.json", "text_model.npz", "lightgbm.txt"}  # the last three: a text model's (kind: tfidf)
TOKENIZER_PREFIXES = ("tokenizer", "special_tokens", "spm", "vocab", "added_tokens", "merges", "sentencepiece")
FOLD_SUBFOLDERS = {"backbone": ("config.json",), "adapter": ("adapter_config.json", "adapter_model.safetensors",
                                                             "adapter_model.bin")}


def fold_files(src: Path) -> list[Path]:
    """The files of fold folder `src` that 05_infer reads (paths relative to `src`): nothing else is shipped."""
    wanted = []
    for path in sorted(src.iterdir()):
        if path.name in FOLD_SUBFOLDERS and path.is_dir():
            wanted.extend(Path(path.name) / name for name in FOLD_SUBFOLDERS[path.name]
                          if (path / name).is_file() or (path / name).is_symlink())
        elif path.name in FOLD_FILES or path.name.startswith(TOKENIZER_PREFIXES):
            wanted.append(Path(path.name))
    return wanted


def ensemble_files(src: Path) -> list[Path]:
    """The files of the ensemble's artifacts folder `src` that 05_infer may read (relative to `src`): ensemble.json,
    the text vocabulary, the prompt assigner, and stacker.json with the boosters it names inside stacker/."""
    wanted = [Path(name) for name in (ENSEMBLE_FILE, VOCABULARY_FILE, PromptAssigner.FILE) if (src / name).exists()]
    meta_file = src / LGBMStacker.DIR / LGBMStacker.META_FILE
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        files = meta.get("model_files") if isinstance(meta, dict) else None
        wanted.append(meta_file.relative_to(src))
        for file in (files or {}).values() if isinstance(files, dict) else []:
            if escapes(meta_file.parent, file) is not None:
                raise PipelineError(f"{meta_file}: 'model_files' entry {escapes(meta_file.parent, file)}: refused "
                                    "(an artifact names only files inside its folder). Fix: re-run python "
                                    "04_ensemble/run.py")
            wanted.append(Path(LGBMStacker.DIR) / file)
    return wanted


def copy_inside(src: Path, dst: Path, files: list[Path]) -> None:
    """Copy `files` (relative to `src`) to `dst`. A symlink is copied as its target's contents only when the target
    lies inside `src`; one that leads out is an error, so nothing from elsewhere on this machine is shipped."""
    base = src.resolve()
    for rel in files:
        target = (src / rel).resolve()
        if base not in target.parents:
            raise PipelineError(f"{src / rel} leads to {target}, outside {src}: make kaggle ships nothing from "
                                "elsewhere on this machine. Fix: replace the link by a copy of the file (under DVC: "
                                "dvc config cache.type copy, then dvc checkout)")
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(target, dst / rel)


def _local_folder(name_or_path: str) -> Path:
    """A backbone's local folder: the path itself, or its snapshot in the Hugging Face cache."""
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception as exc:  # any hub error means: not available offline
        raise FileNotFoundError(f"LoRA base backbone {name_or_path!r} is neither a folder nor in the Hugging Face "
                                "cache, so it cannot be shipped to Kaggle") from exc


def _ship_lora_base(fold_src: Path, fold_dst: Path, dataset: Path, shipped: dict[str, str]) -> None:
    """Copy a LoRA fold's base backbone into dataset/backbones/ (once) and point the fold at it.

    The copied scorer.json names the base by a path relative to the fold folder, which EssayScorer.load
    resolves wherever Kaggle mounts the dataset.
    """
    if not (fold_src / "scorer.json").is_file():  # a text model: no backbone
        return
    config = json.loads((fold_src / "scorer.json").read_text(encoding="utf-8"))
    if config.get("lora_r", 0) <= 0:
        return
    base = config["backbone"]
    if base not in shipped:
        slug = f"base_{len(shipped)}"
        shutil.copytree(_local_folder(base), dataset / "backbones" / slug,
                        ignore=shutil.ignore_patterns("*.msgpack", "*.h5", "flax_model*", "tf_model*", ".git*"))
        shipped[base] = slug
    config["backbone"] = Path(os.path.relpath(dataset / "backbones" / shipped[base], fold_dst)).as_posix()
    (fold_dst / "scorer.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _copy_code(dst: Path, params: Params) -> None:
    # The library's Python files without what 05_infer never imports (tests/test_layout.py checks it does not),
    # nor any other file that lies in the working tree (.env, notes, caches).
    for source in sorted((REPO / "common").rglob("*.py")):
        inside = source.relative_to(REPO / "common").as_posix()
        if not inside.startswith(LEFT_OUT) and not source.is_symlink():
            rel = source.relative_to(REPO)
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dst / rel)
    (dst / "05_infer").mkdir(parents=True)
    shutil.copyfile(REPO / "05_infer" / "run.py", dst / "05_infer" / "run.py")
    shipped = to_dict(params)
    shipped["paths"] = to_dict(PathsParams())  # this machine's folders: on Kaggle 05 reads /kaggle/, writes working/
    shipped["infer"]["artifacts"] = ""  # on Kaggle the artifacts are this dataset, wherever it was built
    (dst / "params.yaml").write_text(yaml.safe_dump(shipped, sort_keys=False), encoding="utf-8")


def download_wheels(dst: Path, python_version: str) -> list[str]:
    """`pip download` this environment's versions of SHIPPED_WHEELS for Kaggle's Linux and Python.

    Their dependencies come too (an old image may lack what a new transformers needs), except for
    packages that depend on torch (peft), which come alone: torch itself is never shipped. [] on failure.
    """
    pins = {}
    for name in SHIPPED_WHEELS:
        try:
            pins[name] = f"{name}=={metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    platform = ["--only-binary=:all:", "--dest", str(dst), "--python-version", python_version,
                "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
                "--platform", "manylinux_2_28_x86_64"]
    alone = [pin for name, pin in pins.items() if name in TORCH_DEPENDENT]
    with_deps = [pin for name, pin in pins.items() if name not in TORCH_DEPENDENT]
    for extra, group in (([], with_deps), (["--no-deps"], alone)):
        if not group:
            continue
        command = [sys.executable, "-m", "pip", "download", *extra, *platform, *group]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            log.warning("could not download wheels (%s); the notebook then needs an image that meets "
                        "requirements.json:\n%s", " ".join(group), result.stderr[-2000:])
            return []
    return sorted(p.name for p in dst.glob("*.whl"))


SETUP_CELL = '''\
# Generated by `make kaggle` (common/tools/kaggle.py) from 05_infer/run.py: edit those, not this notebook.
import json, os, subprocess, sys
from importlib import metadata
from pathlib import Path

KAGGLE_ROOT = Path(os.environ.get("AES_KAGGLE_ROOT", "/kaggle"))
DATASET = KAGGLE_ROOT / "input" / {dataset!r}
CODE, WHEELS = DATASET / "code", DATASET / "wheels"
os.environ.update({offline!r})


def version_tuple(text):
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


required = json.loads((DATASET / "requirements.json").read_text())
too_old = {{}}
for name, floor in required.items():
    try:
        found = metadata.version(name)
    except metadata.PackageNotFoundError:
        found = None
    print(f"{{name:16s}} found {{found or 'none':14s}} needs >= {{floor}}")
    if found is None or version_tuple(found) < version_tuple(floor):
        too_old[name] = found
shipped = {{p.name.split("-")[0].lower().replace("_", "-"): p for p in WHEELS.glob("*.whl")}}
installable = [n for n in too_old if n.lower().replace("_", "-") in shipped]
if installable:
    print("installing from the dataset's wheels:", installable)
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(WHEELS),
                    *[str(shipped[n.lower().replace("_", "-")]) for n in installable]], check=True)
missing = [f"{{n}} (found {{v or 'none'}}, needs >= {{required[n]}})" for n, v in too_old.items()
           if n not in installable]
if missing:
    raise RuntimeError("this Kaggle image lacks " + "; ".join(missing) + ". Rebuild the dataset with "
                       "`make kaggle` where pip can download wheels, or pick a newer Kaggle image.")
sys.path.insert(0, str(CODE))
'''

def setup_cell(dataset: str) -> str:
    return SETUP_CELL.format(dataset=dataset, offline=OFFLINE_VARIABLES)


RUN_CELL = '''\
# 05_infer/run.py as shipped in the dataset, run as on the command line.
import runpy

sys.argv = ["run.py", "--params", str(CODE / "params.yaml"), f"infer.kaggle_root={{KAGGLE_ROOT}}"]
try:
    runpy.run_path(str(CODE / "05_infer" / "run.py"), run_name="__main__")
except SystemExit as stop:
    if stop.code:
        raise RuntimeError(f"05_infer failed (exit {{stop.code}}); its message is in the log above") from None
import common

print("common loaded from", Path(common.__file__).parent)
'''

SHOW_CELL = '''\
import pandas as pd

submission = pd.read_csv(KAGGLE_ROOT / "working" / "submission.csv")
print(submission.shape, submission["score"].value_counts().sort_index().to_dict())
submission.head()
'''


def notebook(params: Params) -> nbformat.NotebookNode:
    """The Kaggle notebook: version check and offline installs, then 05_infer/run.py."""
    doc = (REPO / "05_infer" / "run.py").read_text(encoding="utf-8").split('"""')[1].strip()
    cells = [
        nbformat.v4.new_markdown_cell(
            "# aes-pipeline: inference\n\nGenerated by `make kaggle` from `05_infer/run.py`; internet off, GPU on. "
            f"Reads the competition files and the `{params.infer.artifacts_dataset}` dataset (trained fold models, "
            "ensemble, the `common` library as source) and writes `/kaggle/working/submission.csv`.\n\n"
            "```\n" + doc + "\n```"),
        nbformat.v4.new_code_cell(setup_cell(params.infer.artifacts_dataset)),
        nbformat.v4.new_code_cell(RUN_CELL.format()),
        nbformat.v4.new_code_cell(SHOW_CELL),
    ]
    book = nbformat.v4.new_notebook(cells=cells)
    book.metadata.update({"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                          "language_info": {"name": "python"}})
    nbformat.validate(book)
    return book


def build_bundle(params: Params, out: Path, wheels: bool = True, python_version: str = "3.11") -> Path:
    """Write the upload folder for the artifacts under `params.output_dir` to `out` (atomically)."""
    artifacts = ArtifactSet.open(Path(params.infer.artifacts) if params.infer.artifacts else params.output_dir)
    needs_peft = any(json.loads((d / "scorer.json").read_text()).get("lora_r", 0) > 0
                     for dirs in artifacts.fold_dirs.values() for d in dirs if (d / "scorer.json").is_file())
    user = params.infer.kaggle_user
    with staged_dir(out) as tmp:
        dataset = tmp / "dataset"
        bases: dict[str, str] = {}
        for name, dirs in artifacts.fold_dirs.items():
            for fold_dir in dirs:  # the members 05_infer averages: fold models per seed, full fits
                target = layout.model_dir(dataset, name) / "folds" / fold_dir.name
                copy_inside(fold_dir, target, fold_files(fold_dir))
                _ship_lora_base(fold_dir, target, dataset, bases)
        ensemble = artifacts.root / ENSEMBLE_DIR
        copy_inside(ensemble, dataset / ENSEMBLE_DIR, ensemble_files(ensemble))
        _copy_code(dataset / "code", params)
        requirements = dict(REQUIREMENTS)
        if needs_peft:
            requirements["peft"] = "0.15"
        write_json(dataset / "requirements.json", requirements)
        (dataset / "wheels").mkdir()
        shipped = download_wheels(dataset / "wheels", python_version) if wheels else []
        if any("torch" in name.lower() for name in shipped):
            raise RuntimeError(f"a torch wheel was downloaded into {dataset / 'wheels'}; it must not be shipped")
        write_json(dataset / "dataset-metadata.json", {
            "title": params.infer.artifacts_dataset, "id": f"{user}/{params.infer.artifacts_dataset}",
            "licenses": [{"name": "other"}]})
        book_dir = tmp / "notebook"
        book_dir.mkdir()
        nbformat.write(notebook(params), str(book_dir / NOTEBOOK))
        write_json(book_dir / "kernel-metadata.json", {
            "id": f"{user}/aes-pipeline-infer", "title": "aes-pipeline infer", "code_file": NOTEBOOK,
            "language": "python", "kernel_type": "notebook", "is_private": True, "enable_gpu": True,
            "enable_tpu": False, "enable_internet": False,
            "dataset_sources": [f"{user}/{params.infer.artifacts_dataset}"],
            "competition_sources": [params.infer.competition_dataset], "kernel_sources": [], "model_sources": []})
        (tmp / "UPLOAD.md").write_text(upload_instructions(out, user, params.infer.artifacts_dataset, shipped),
                                       encoding="utf-8")
    log.info("Kaggle bundle in %s: %d models, %d member models, %d wheels; upload with the commands in %s",
             out, len(artifacts.models), sum(len(d) for d in artifacts.fold_dirs.values()), len(shipped),
             out / "UPLOAD.md")
    return out


def upload_instructions(out: Path, user: str, dataset: str, wheels: list[str]) -> str:
    shipped = ", ".join(wheels) or "none (the image must already meet requirements.json)"
    return f"""# Upload to Kaggle

Needs the `kaggle` CLI with an API token (~/.kaggle/kaggle.json); nothing here is uploaded automatically.
Set your user name first: `make kaggle KAGGLE_USER=<you>` (now: `{user}`).

    # first time: create the dataset (sub-folders are zipped), then push the notebook
    kaggle datasets create -p {out}/dataset --dir-mode zip
    kaggle kernels push -p {out}/notebook

    # later runs: a new dataset version, then push the notebook again
    kaggle datasets version -p {out}/dataset --dir-mode zip -m "new models"
    kaggle kernels push -p {out}/notebook

Then submit the notebook's output to the competition from its Kaggle page (the hidden test is scored
only on submission). The dataset mounts at /kaggle/input/{dataset}/; if Kaggle mounts it elsewhere, set
`infer.artifacts` in the dataset's code/params.yaml.

Wheels shipped for images whose libraries are too old: {shipped}.
"""
