"""Typed params from `params.yaml` plus `dotted.key=value` command-line overrides: load, check, describe.

`load_params` reads the YAML file, applies overrides, and builds Params (common.config.params) checking every
key, type and range against the dataclasses, so a typo or a value of the wrong type fails at start-up with a
message that names the key and the allowed keys. `parse_cli` is a stage's command line; `describe` its --help.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from common.config.fields import FieldErrors, ParamsError, in_range, ranges
from common.config.model_params import ModelParams
from common.config.params import Params

# --------------------------------------------------------------------------------------------------
# Building dataclasses from plain data, with type and range checks


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"dict[{_type_name(k)}, {_type_name(v)}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def convert_value(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and return it converted (int -> float, str -> float)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ParamsError(f"'{key}' must be a mapping of {_type_name(tp)} fields, got {value!r}")
        return build_dataclass(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ParamsError(f"'{key}' must be one of {_type_name(tp)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert_value(value, arg, key)
            except ParamsError as exc:
                errors.append(str(exc))
        raise ParamsError(f"'{key}' must be {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"'{key}' must be a list ({_type_name(tp)}), got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [convert_value(v, item_tp, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"'{key}' must be a mapping ({_type_name(tp)}), got {value!r}")
        _, v_tp = typing.get_args(tp)
        return {str(k): convert_value(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"'{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"'{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ParamsError(f"'{key}' must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ParamsError(f"'{key}' must be a number, got {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"'{key}' must be a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise ParamsError(f"'{key}': unsupported parameter type {tp!r}")  # pragma: no cover - schema bug


def build_dataclass(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Dataclass `cls` (at key path `prefix`) from plain `data`, every key, type and range checked: ParamsError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        where = f"under '{prefix}'" if prefix else "at the top level"
        raise ParamsError(
            f"unknown key '{join_key(prefix, unknown[0])}'; allowed keys {where}: {', '.join(sorted(fields))}"
        )
    required = [
        name for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in data]
    if missing:
        raise ParamsError(f"missing required key '{join_key(prefix, missing[0])}'")
    kwargs = {name: convert_value(value, hints[name], join_key(prefix, name)) for name, value in data.items()}
    try:
        built = cls(**kwargs)
    except FieldErrors as exc:
        raise ParamsError("; ".join(f"'{join_key(prefix, name)}': {why}" for name, why in exc.problems.items())) from None
    _check_ranges(built, prefix)
    return built


def _check_ranges(obj: Any, prefix: str) -> None:
    """ParamsError for the first field of dataclass `obj` (at `prefix`) outside the range its declaration allows."""
    for name, spec in ranges(type(obj)).items():
        value = getattr(obj, name)
        if not in_range(value, spec):
            raise ParamsError(f"'{join_key(prefix, name)}' = {value!r} is out of range: allowed {spec}. Fix: set it "
                              "within that range")


def join_key(prefix: str, name: str) -> str:
    """The dotted key path of `name` under `prefix` ('' at the top level)."""
    return f"{prefix}.{name}" if prefix else name


def to_dict(params: Any) -> Any:
    """Plain-data view of a params object (for saving the resolved config next to an artifact)."""
    return dataclasses.asdict(params)


# --------------------------------------------------------------------------------------------------
# Overrides


def _schema_type(cls: type, path: list[str]) -> Any:
    """Annotation of the dotted `path` inside dataclass `cls`, or ParamsError naming the allowed keys."""
    tp: Any = cls
    walked: list[str] = []
    for part in path:
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            if part not in hints:
                where = f"under '{'.'.join(walked)}'" if walked else "at the top level"
                raise ParamsError(
                    f"unknown key '{'.'.join([*walked, part])}'; allowed keys {where}: "
                    f"{', '.join(sorted(hints))}"
                )
            tp = hints[part]
        elif origin is list:
            if not part.isdigit():
                raise ParamsError(f"'{'.'.join(walked)}' is a list: index it with a number, got '{part}'")
            tp = typing.get_args(tp)[0]
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        else:
            raise ParamsError(f"'{'.'.join(walked)}' is a single value and has no key '{part}'")
        walked.append(part)
    return tp


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """'is not plain YAML (...)' for a tag safe_load refuses (`!!python/object/apply:...`), else 'is not valid YAML
    (...)', with yaml's reason and place on one line."""
    kind = "plain" if isinstance(exc, yaml.constructor.ConstructorError) else "valid"
    return f"is not {kind} YAML ({' '.join(str(exc).split())})"


def apply_override(data: dict[str, Any], override: str, parse: typing.Callable[[str], Any] = yaml.safe_load) -> None:
    """Apply one `dotted.key=value` override to raw params data in place (value parsed as YAML by `parse`)."""
    if "=" not in override:
        raise ParamsError(f"override '{override}' must look like dotted.key=value (e.g. prepare.n_folds=5)")
    key, raw = override.split("=", 1)
    key = key.strip()
    path = key.split(".")
    _schema_type(Params, path)
    try:
        value = parse(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ParamsError(f"override '{override}': its value {_yaml_problem(exc)}. Fix: quote or complete the value, "
                          "e.g. 'stages=[{rows: all, epochs: 2}]' (the shell needs the quotes)") from None
    node: Any = data
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            idx = int(part)
            if idx >= len(node):
                raise ParamsError(f"'{key}': index {idx} is past the end of '{'.'.join(path[:i])}'")
            node = node[idx]
        else:
            node = node.setdefault(part, {})
    last = path[-1]
    if isinstance(node, list):
        idx = int(last)
        if idx >= len(node):
            raise ParamsError(f"'{key}': index {idx} is past the end of the list")
        node[idx] = value
    else:
        node[last] = value


def load_params(path: str | Path | None = "params.yaml", overrides: typing.Sequence[str] = ()) -> Params:
    """Read params (YAML file, or defaults when `path` is None), apply overrides, validate, return Params."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ParamsError(f"params file {path} not found; run from the repository root or pass --params")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ParamsError(f"{path}: not {_yaml_problem(exc).removeprefix('is not ')}. Nothing ran. Fix: correct "
                              "the place it names (params hold plain values: no tags such as !!python/...)") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ParamsError(f"{path} must hold a mapping of sections, got {type(loaded).__name__}")
        data = loaded or {}
    for override in overrides:
        apply_override(data, override)
    try:
        return build_dataclass(Params, data)
    except ParamsError as exc:
        source = f" (in {path} or the command-line overrides)" if path is not None else ""
        raise ParamsError(f"{exc}{source}") from None


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return "required"


def describe(cls: type = Params, prefix: str = "") -> list[str]:
    """One line per leaf parameter: dotted key, type, default and help.

    A mapping of models (train.models, train.students) gets one line of its own, then the per-model keys
    once, as `train.models.<name>.KEY`.
    """
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = join_key(prefix, f.name)
        tp = hints[f.name]
        if cls is ModelParams and f.name == "name":
            continue
        if dataclasses.is_dataclass(tp):
            lines.extend(describe(tp, key))
            continue
        if typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
            # No default shown: building the default models would check their scorer names, importing torch.
            lines.append(f"  {key} (mapping: name -> model): {f.metadata.get('help', '')}")
            if key == "train.models":
                lines.extend(describe(typing.get_args(tp)[1], f"{key}.<name>"))
            continue
        if typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            default = [dataclasses.asdict(item) for item in field_default(f)]
            lines.append(f"  {key} (list, default {default}): {f.metadata.get('help', '')}")
            lines.extend(describe(typing.get_args(tp)[0], f"{key}.<i>"))
            continue
        allowed = f.metadata.get("range")
        kind = f"{_type_name(tp)} in {allowed}" if allowed else _type_name(tp)
        lines.append(f"  {key} ({kind}, default {field_default(f)!r}): {f.metadata.get('help', '')}")
    return lines


EXAMPLES = """examples:
  python 02_train/run.py train.model=tiny-regression train.models.tiny-regression.lr=1e-5
                         one field of one model (train.students.<name>.KEY the same way)
  python 02_train/run.py train.model=tiny-regression train.folds=[0]   one fold only
  python 00_prepare/run.py prepare.n_folds=5 paths.input=/data/aes2 paths.output=runs/five-folds"""


def plain(params: Any) -> Any:
    """Plain data that `load_params` reads back into an equal Params (models without their name key)."""
    data = dataclasses.asdict(params)
    for group in ("models", "students"):
        for spec in data.get("train", {}).get(group, {}).values():
            spec.pop("name", None)
    return data


def parse_cli(argv: typing.Sequence[str] | None = None, description: str = "") -> Params:
    """Parse a stage's command line: `[--params FILE] [dotted.key=value ...]`."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="parameters (override with dotted.key=value):\n" + "\n".join(describe()) + "\n\n" + EXAMPLES,
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides applied on top of the file")
    args = parser.parse_args(argv)
    return load_params(args.params, args.overrides)
