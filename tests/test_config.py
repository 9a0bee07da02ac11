"""params.yaml loading, typed validation and dotted.key=value overrides."""

import contextlib
from pathlib import Path

import pytest

from common.config.fields import ParamsError
from common.config.loader import load_params, parse_cli

REPO = Path(__file__).resolve().parents[1]


def test_typed_defaults_are_a_real_run_and_the_demo_lives_in_params_yaml():
    defaults = load_params(None)
    assert defaults.backbone == "microsoft/deberta-v3-large"
    assert list(defaults.train.models) == ["deberta-v3-large"] and not defaults.train.students
    spec = defaults.train.models["deberta-v3-large"]
    assert 1e-5 <= spec.lr <= 3e-5 and spec.max_length >= 1024 and spec.layerwise_lr_decay < 1.0
    demo = load_params(REPO / "params.yaml")
    assert demo.backbone == "input/tiny-deberta-v2"
    assert all(s.lr > 1e-4 for s in demo.train.all_models.values() if s.kind == "transformer")  # tiny backbone rates
    assert [s.kind for s in demo.train.all_models.values()].count("tfidf") == 1  # one classical text member
    # params.yaml spells out every section, but only the backbone and the models differ from the defaults.
    for section in ("seed", "paths", "prepare", "pseudo", "thresholds", "ensemble", "infer"):
        assert getattr(demo, section) == getattr(defaults, section), section


def test_competition_params_are_deberta_v3_two_stage():
    params = load_params(REPO / "params" / "competition.yaml")
    assert params.prepare.n_folds == 4
    for spec in params.train.all_models.values():
        backbone = spec.backbone or params.backbone
        assert backbone.startswith("microsoft/deberta-v3-")
        assert spec.max_length >= 1024 and 1e-5 <= spec.lr <= 2e-5 and spec.layerwise_lr_decay < 1.0
        assert [stage.rows for stage in spec.stages][-2:] == ["persuade", "other"]
        assert spec.mixed_precision in ("auto", "fp16", "bf16")


def test_override_applies_on_top_of_the_file():
    params = load_params(REPO / "params.yaml", ["prepare.n_folds=7", "paths.output=/tmp/x", "seed=3"])
    assert params.prepare.n_folds == 7
    assert params.paths.output == "/tmp/x"
    assert params.seed == 3
    assert params.prepare.train_file == "train.csv"  # untouched keys keep the file's value


def test_unknown_key_names_the_key_and_the_allowed_keys():
    with pytest.raises(ParamsError) as err:
        load_params(REPO / "params.yaml", ["prepare.nfolds=3"])
    message = str(err.value)
    assert "prepare.nfolds" in message
    assert "n_folds" in message and "group_by" in message


def test_unknown_key_in_the_file_is_an_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("prepare:\n  n_fold: 3\n")
    with pytest.raises(ParamsError, match=r"prepare\.n_fold.*allowed keys under 'prepare'"):
        load_params(path)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("prepare.n_folds=three", "must be an integer"),
        ("prepare.n_folds=2.5", "must be an integer"),
        ("prepare.n_folds=true", "must be an integer"),
        ("prepare.group_by=random", "must be one of"),
        ("prepare.near_duplicate_threshold=high", "must be a number"),
        ("ensemble.text_features=maybe", "must be true or false"),
        ("ensemble.models=abc", "must be a list"),
        ("paths=here", "must be a mapping"),
    ],
)
def test_wrong_type_is_an_error_naming_the_key(override, expected):
    key = override.split("=")[0]
    with pytest.raises(ParamsError) as err:
        load_params(REPO / "params.yaml", [override])
    assert key in str(err.value)
    assert expected in str(err.value)


def test_numbers_in_scientific_notation_are_floats():
    # YAML 1.1 reads "1e-4" as a string; float fields still accept it.
    params = load_params(None, ["prepare.near_duplicate_threshold=9e-1",
                                "train.models.deberta-v3-large.mlm.probability=2e-1"])
    assert params.prepare.near_duplicate_threshold == pytest.approx(0.9)
    assert params.train.models["deberta-v3-large"].mlm.probability == pytest.approx(0.2)


def test_models_are_keyed_by_name_and_overridable_one_field_at_a_time():
    params = load_params(REPO / "params.yaml", ["train.models.tiny-regression.max_length=256", "ensemble.models=[a, b]",
                                                "train.students.tiny-student.mlm.lr=1e-4"])
    assert params.train.models["tiny-regression"].max_length == 256
    assert params.train.models["tiny-regression"].name == "tiny-regression"
    assert params.train.models["tiny-ordinal"].max_length == 192  # the others keep theirs
    assert params.train.students["tiny-student"].mlm.lr == pytest.approx(1e-4)
    assert params.ensemble.models == ["a", "b"]
    with pytest.raises(ParamsError, match=r"train\.models\.tiny-regression\.heads"):
        load_params(REPO / "params.yaml", ["train.models.tiny-regression.heads=regression"])


def test_a_student_can_teach_the_next_round(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  models: {a: {}}\n  students:\n    s1: {teacher: a, stages: [{with_pseudo: true}]}\n"
                    "    s2: {teacher: s1, stages: [{with_pseudo: true}]}\n")
    assert load_params(path).train.students["s2"].teacher == "s1"


@pytest.mark.parametrize(("text", "message"), [
    ("train:\n  models:\n    a: {stages: [{rows: pseudo}, {rows: all}], teacher: b}\n", r"goes under train\.students"),
    ("train:\n  models: {a: {}}\n  students:\n    s: {teacher: nobody, stages: [{rows: pseudo}, {rows: all}]}\n",
     r"'train\.students\.s\.teacher': 'nobody' is not in train\.models"),
    ("train:\n  models: {a: {}}\n  students:\n    s: {teacher: a}\n", "no stage trains on the pseudo-labels"),
    ("train:\n  models:\n    a: {stages: []}\n", r"'train\.models\.a\.stages': empty: list at least one stage"),
    ("train:\n  models: {a: {}}\n  students:\n    s: {teacher: a, stages: [{rows: all}, {rows: pseudo}]}\n",
     "the last stage .* trains on pseudo-labels alone"),
    ("train:\n  models: {a: {}}\n  students:\n    s: {teacher: t, stages: [{with_pseudo: true}]}\n"
     "    t: {teacher: s, stages: [{with_pseudo: true}]}\n", r"go round in a circle \(s -> t -> s\)"),
    ("train:\n  models: {a: {}}\n  students:\n    s: {teacher: s, stages: [{with_pseudo: true}]}\n",
     "go round in a circle"),
    ("train:\n  models:\n    a: {seeds: [1, 2, 1]}\n", "lists a seed twice"),
    ("train:\n  models:\n    a: {seeds: [-1]}\n",
     r"'train\.models\.a\.seeds': \[-1\]: seed -1 is out of range: allowed \[0, 4294967295\]"),
    ("train:\n  students:\n    s: {teacher: a, seeds: [3, 4294967296], stages: [{with_pseudo: true}]}\n  models: {a: {}}\n",
     r"'train\.students\.s\.seeds': \[3, 4294967296\]: seed 4294967296 is out of range"),
    ("train:\n  models: {a: {}}\n  students:\n    a: {teacher: a, stages: [{with_pseudo: true}]}\n", "both in"),
    ("train:\n  models:\n    a: {name: b}\n", "a model's name is its key"),
    ("train:\n  models:\n    a.b: {}\n", "letters, digits"),
    ("train:\n  models:\n    - a\n", "must be a mapping"),
    ("train:\n  folds: [4]\n", r"do not exist with prepare\.n_folds=4"),
    ("train:\n  fold_workers: -1\n", "fold_workers"),
    ("train:\n  models:\n    a: {batch_size: 8, effective_batch_size: 12}\n", "is not a multiple of batch_size=8"),
])
def test_model_mistakes_are_named(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=message):
        load_params(path)


def test_every_model_mistake_is_reported_at_once_with_its_key_path(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  models:\n    a: {windows: 2, max_length: 512, window_overlap: 300, seeds: [1, 1]}\n"
                    "    c: {batch_size: 8, effective_batch_size: 12}\n"
                    "  students:\n    b: {teacher: a, stages: [{rows: all}]}\n")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    message = str(err.value)
    for problem in ("'train.models.a.window_overlap': 300 must be below half of max_length=512",
                    "'train.models.a.seeds': [1, 1] lists a seed twice; list each once",
                    "'train.models.c.effective_batch_size': 12 is not a multiple of batch_size=8",
                    "'train.students.b.stages': no stage trains on the pseudo-labels; add one"):
        assert problem in message, message
    assert message.endswith(f"(in {path} or the command-line overrides)")


def test_every_ensemble_mistake_is_reported_at_once_with_its_key_path(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("ensemble:\n  target: -1.0\n  target_weights: [1, 0]\n  prompt_mix: {x: -1.0}\n")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    message = str(err.value)
    for problem in ("'ensemble.target': -1.0: a weight of other-origin rows must be a positive number",
                    "'ensemble.target_weights': [1.0, 0.0]: give positive finite weights",
                    "'ensemble.prompt_mix': {'x': -1.0}: shares must be >= 0 with a positive sum"):
        assert problem in message, message


@pytest.mark.parametrize(("override", "message"), [
    ("scorer.pooling=median", r"'train\.models\.tiny-ordinal\.scorer\.pooling': unknown pooling 'median'; choose one of "
                              r"cls, mean, max, mean_max, attention, weighted_layer, gem"),
    ("scorer.head=poisson", r"'train\.models\.tiny-ordinal\.scorer\.head': unknown head 'poisson'; choose one of "
                            r"regression, classification, ordinal"),
    ("scorer.loss=huber", r"'train\.models\.tiny-ordinal\.scorer\.loss': unknown loss 'huber'; choose one of mse, "
                          r"smooth_l1, cross_entropy, cumulative_bce"),
    ("scorer.loss=cross_entropy", r"'train\.models\.tiny-ordinal\.scorer\.loss': loss 'cross_entropy' works with the "
                                  r"classification head only, not 'ordinal'; choose another loss or leave loss empty "
                                  r"for the head's default \('cumulative_bce'\)"),
    ("scorer.dropout=1.5", r"'train\.models\.tiny-ordinal\.scorer\.dropout': 1\.5 is out of range: allowed \[0, 1\)"),
    ("scorer.lora_r=4", r"'train\.models\.tiny-ordinal\.scorer\.lora_r': .*"),
])
def test_scorer_mistakes_fail_at_load_with_the_key_path_and_the_choices(override, message):
    overrides = [f"train.models.tiny-ordinal.{override}"]
    if override == "scorer.lora_r=4":  # a combination: LoRA with re-initialised layers
        overrides.append("train.models.tiny-ordinal.scorer.reinit_layers=1")
        message = r"'train\.models\.tiny-ordinal\.scorer\.reinit_layers': 1 with lora_r=4: LoRA freezes the backbone"
    with pytest.raises(ParamsError, match=message):
        load_params(REPO / "params.yaml", overrides)


def test_a_scorer_name_error_exits_2_with_the_message():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "common.config.params_file", "--from", "params.yaml", "--to",
                             "/dev/null", "train.models.tiny-regression.scorer.pooling=median"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "'train.models.tiny-regression.scorer.pooling': unknown pooling 'median'; choose one of" in result.stderr


def test_old_model_keys_are_named_as_unknown():
    with pytest.raises(ParamsError, match=r"unknown key 'train\.models\.tiny-regression\.head'.* scorer"):
        load_params(REPO / "params.yaml", ["train.models.tiny-regression.head=ordinal"])


def test_plain_params_load_back_equal(tmp_path):
    import yaml

    from common.config.loader import plain

    params = load_params(REPO / "params.yaml")
    path = tmp_path / "copy.yaml"
    path.write_text(yaml.safe_dump(plain(params)))
    assert load_params(path) == params


def test_override_syntax_errors():
    with pytest.raises(ParamsError, match=r"dotted\.key=value"):
        load_params(None, ["prepare.n_folds"])
    with pytest.raises(ParamsError, match="single value"):
        load_params(None, ["seed.value=3"])


def test_missing_params_file_is_a_clear_error(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_cli_reads_params_file_and_overrides(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("prepare:\n  n_folds: 3\n")
    params = parse_cli(["--params", str(path), "prepare.max_clusters=9"])
    assert params.prepare.n_folds == 3 and params.prepare.max_clusters == 9
    assert params.paths.input == "input"


def test_cli_help_lists_every_key(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_cli(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for key in ("paths.input", "paths.output", "prepare.n_folds", "prepare.group_by", "ensemble.target",
                "train.models.<name>.lr (float in (0, inf), default 2e-05)", "train.models.<name>.mlm.epochs (float in [0, inf)",
                "train.models.<name>.scorer.head (str, default 'regression'): Prediction head, by its name in HEADS",
                "train.models.<name>.scorer.dropout (float in [0, 1), default 0.1)",
                "train.students (mapping", "train.fold_workers (int in [0, inf)"):
        assert key in out
    assert "train.models.tiny-regression.lr=1e-5" in out  # the override syntax of one field of one model
    assert "ModelParams(" not in out and max(len(line) for line in out.splitlines()) < 400


@pytest.mark.parametrize("stage", ["00_prepare/run.py", "01_pseudo_label/run.py", "01_pseudo_label/mlm.py",
                                   "02_train/run.py", "03_oof_thresholds/run.py", "04_ensemble/run.py",
                                   "05_infer/run.py"])
def test_help_and_params_errors_come_before_torch_is_imported(stage):
    import subprocess
    import sys

    probe = ("import runpy, sys\n"
             f"sys.argv = [{stage!r}, *sys.argv[1:]]\n"
             "try:\n"
             f"    runpy.run_path({stage!r}, run_name='__main__')\n"
             "except SystemExit as exc:\n"
             "    print('exit', exc.code, 'torch' in sys.modules)\n")
    for args in (["--help"], ["train.models.tiny-regression.lr=fast"]):
        result = subprocess.run([sys.executable, "-c", probe, *args], cwd=REPO, capture_output=True, text=True,
                                env={"PYTHONPATH": str(REPO), "PATH": ""}, timeout=120)
        expected = "exit 0 False" if args == ["--help"] else "exit 2 False"
        assert expected in result.stdout, result.stdout[-500:] + result.stderr[-2000:]


STAGE_SCRIPTS = ["00_prepare/run.py", "01_pseudo_label/run.py", "01_pseudo_label/mlm.py", "02_train/run.py",
                 "03_oof_thresholds/run.py", "04_ensemble/run.py", "05_infer/run.py", "05_infer/package.py"]


@pytest.mark.parametrize("with_common", [False, True])
@pytest.mark.parametrize("stage", STAGE_SCRIPTS)
def test_a_python_without_the_projects_libraries_says_the_fix(stage, with_common):
    """`dvc repro` outside the venv runs the stages with a system python: one line with the fix, exit 2."""
    import subprocess
    import sys

    # -S: no site-packages, as a system python without the project's libraries (nor `common`, unless on the path)
    env = {"PATH": "", **({"PYTHONPATH": str(REPO)} if with_common else {})}
    result = subprocess.run([sys.executable, "-S", stage, "--help"], cwd=REPO, capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "has no module" in result.stderr and "source .venv/bin/activate" in result.stderr


def test_a_library_imported_late_and_missing_says_the_fix(tmp_path, capfd):
    from common.config.stage import run_stage

    def main(params):
        import not_an_installed_library  # noqa: F401

    assert run_stage(main, "", [f"paths.output={tmp_path}", f"paths.metrics={tmp_path}/m"]) == 2
    logged = capfd.readouterr().err
    assert "no module 'not_an_installed_library'" in logged and "source .venv/bin/activate" in logged


def _leaves(data: dict, prefix: str = "") -> list[str]:
    """Dotted paths of the leaf values of raw params data (a model entry's keys, not the entry itself)."""
    paths = []
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        paths.extend(_leaves(value, path) if isinstance(value, dict) and value else [path])
    return paths


def _without(data: dict, path: str) -> dict:
    import copy

    data = copy.deepcopy(data)
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[part]
    del node[last]
    return data


@pytest.mark.parametrize("source", ["params/competition.yaml", "params/first-try.yaml", "params.yaml"])
def test_the_written_params_file_is_minimal_commented_and_loads_back_the_same(source, tmp_path):
    import yaml

    from common.config.params_file import DVC_KEYS, write_params_file

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for name in ("train.csv", "test.csv", "sample_submission.csv"):
        (data_dir / name).write_text("x\n")
    overrides = [f"paths.input={data_dir}", "paths.output=runs/x", "prepare.external_file=", "prepare.n_folds=2",
                 "ensemble.n_trials=8"]
    target = REPO / f".test-params-{tmp_path.name}.yaml"  # beside dvc.yaml: paths.output must be inside the repo
    try:
        params = write_params_file(REPO / source, target, overrides)
        text = target.read_text()
    finally:
        target.unlink(missing_ok=True)
    written = tmp_path / "params.yaml"
    written.write_text(text)
    assert load_params(written) == params == load_params(REPO / source, overrides)
    raw = yaml.safe_load(text)
    for path in _leaves(raw):
        model_entry = path.startswith(("train.models.", "train.students.")) and path.count(".") == 2  # all defaults
        if path in DVC_KEYS or path.split(".")[0] == "paths" or model_entry:
            continue
        stripped = tmp_path / "stripped.yaml"
        stripped.write_text(yaml.safe_dump(_without(raw, path)))
        with contextlib.suppress(ParamsError):  # a ParamsError: needed as written (e.g. a student's teacher)
            assert load_params(stripped) != params, f"{path} is at its default: the written file should leave it out"
    assert "n_trials" not in raw.get("ensemble", {})  # set to its default by an override: left out
    assert raw["prepare"]["external_file"] == ""
    if source.startswith("params/"):  # what the presets say about their keys stays with them
        comments = [line.strip() for line in (REPO / source).read_text().splitlines() if line.strip().startswith("#")]
        assert all(comment in text for comment in comments)
    assert len(text.splitlines()) < len((REPO / source).read_text().splitlines()) or source == "params/first-try.yaml"


def test_the_keys_a_written_file_always_keeps_cover_what_dvc_yaml_reads():
    import re

    import yaml

    from common.config.params_file import DVC_KEYS

    text = (REPO / "dvc.yaml").read_text()
    used = set(re.findall(r"\$\{([a-z_.]+)\}", text)) - {"key"}
    for stage in yaml.safe_load(text)["stages"].values():
        used |= {p for p in (stage.get("do", stage).get("params") or []) if "$" not in p}
    used = {u for u in used if not u.startswith("item.")}
    assert used and all(u in DVC_KEYS or any(k.startswith(u + ".") for k in DVC_KEYS) for u in used), used


def test_a_python_tag_in_params_yaml_is_refused_by_name(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ParamsError, match=rf"{path}: not plain YAML .*python/object/apply.*Fix:"):
        load_params(path)
    path.write_text("train:\n  models: {a: {stages: [\n")
    with pytest.raises(ParamsError, match=rf"{path}: not valid YAML .*line \d+.*Fix:"):
        load_params(path)


def test_an_unclosed_override_is_refused_by_name():
    override = "train.models.tiny-regression.stages=[{rows: all"
    with pytest.raises(ParamsError, match=r"override 'train\.models\.tiny-regression\.stages=\[\{rows: all': its "
                                          r"value is not valid YAML .*Fix:"):
        load_params(REPO / "params.yaml", [override])
    with pytest.raises(ParamsError, match=r"override 'seed=!!python/object/apply:os\.system \[x\]': its value is not "
                                          "plain YAML"):
        load_params(REPO / "params.yaml", ["seed=!!python/object/apply:os.system [x]"])
    from tests.conftest import run_cli

    result = run_cli("00_prepare", override)
    assert result.returncode == 2 and "Traceback" not in result.stderr and f"override '{override}'" in result.stderr
