"""params.yaml loading, typed validation and dotted.key=value overrides."""

from pathlib import Path

import pytest

from common.config import ParamsError, load_params, parse_cli

REPO = Path(__file__).resolve().parents[1]


def test_repository_params_match_the_typed_defaults():
    # params.yaml is the documented default run; drift between it and the dataclasses would surprise users.
    assert load_params(REPO / "params.yaml") == load_params(None)


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
    params = load_params(None, ["prepare.near_duplicate_threshold=9e-1", "pseudo.mlm_probability=2e-1"])
    assert params.prepare.near_duplicate_threshold == pytest.approx(0.9)
    assert params.pseudo.mlm_probability == pytest.approx(0.2)


def test_list_items_are_typed_and_indexable():
    params = load_params(REPO / "params.yaml", ["train.models.0.max_length=256", "ensemble.models=[a, b]"])
    assert params.train.models[0].max_length == 256
    assert params.ensemble.models == ["a", "b"]
    with pytest.raises(ParamsError, match="past the end"):
        load_params(REPO / "params.yaml", ["train.models.5.max_length=256"])
    with pytest.raises(ParamsError, match=r"train\.models\.0\.heads"):
        load_params(REPO / "params.yaml", ["train.models.0.heads=regression"])


def test_model_config_needs_a_name(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  models:\n    - head: regression\n")
    with pytest.raises(ParamsError, match=r"missing required key 'train\.models\.0\.name'"):
        load_params(path)


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
    for key in ("paths.input", "paths.output", "prepare.n_folds", "prepare.group_by", "ensemble.select_on"):
        assert key in out
