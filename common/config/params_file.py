"""The params file of a run (`make competition`): a preset plus overrides, checked, written as params.yaml.

    python -m common.config.params_file --from params/first-try.yaml --to params.yaml paths.input=/data/aes2

`write_params_file` edits the preset's YAML in place (its comments kept), leaves out what is at its typed default
but the keys dvc.yaml reads (DVC_KEYS), and checks that the data and the output folder suit a DVC run.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
import typing
from pathlib import Path
from typing import Any

from common.config.fields import ParamsError
from common.config.loader import (
    apply_override,
    build_dataclass,
    convert_value,
    field_default,
    join_key,
    plain,
)
from common.config.params import Params

DVC_KEYS = ("seed", "backbone", "paths.input", "paths.output", "paths.metrics", "prepare.train_file",
            "prepare.test_file", "prepare.sample_submission_file", "prepare.external_file", "prepare.n_folds",
            "pseudo.regression_sigma", "train.models", "train.students", "thresholds", "ensemble.models", "infer")
"""The keys dvc.yaml interpolates or lists as params: a params file written for DVC keeps them at their default."""


def write_params_file(source: str | Path, target: str | Path, overrides: typing.Sequence[str] = ()) -> Params:
    """Validate `source` with `overrides` and write it to `target` as the run's params file.

    The file written is `source` with the overrides applied as edits, its comments kept, and every key at its
    typed default left out (but the keys dvc.yaml reads, DVC_KEYS): it loads back to the same Params and shows
    what this run chose. For a DVC run on other data: `paths.input` must hold the competition files and
    `paths.output` must be a folder inside the repository (DVC 3 tracks no output outside it).
    """
    from ruamel.yaml import YAML  # comes with dvc, which runs what this file is written for

    rt = YAML()
    rt.width = 110
    rt.indent(mapping=2, sequence=4, offset=2)
    data = rt.load(Path(source).read_text(encoding="utf-8")) or {}
    try:
        for override in overrides:
            _apply_as_edit(data, override, rt.load)
        params = build_dataclass(Params, data)
    except ParamsError as exc:
        raise ParamsError(f"{exc} (in {source} or the command-line overrides)") from None
    data_dir, prep = Path(params.paths.input), params.prepare
    names = [prep.train_file, prep.test_file, prep.sample_submission_file, prep.external_file]
    missing = [n for n in names if n and not (data_dir / n).is_file()]
    if missing:
        raise ParamsError(f"paths.input={params.paths.input}: {', '.join(missing)} not found there. Put the "
                          "competition files (and the PERSUADE corpus) in that folder, or run without the corpus: "
                          "make competition ... ARGS=prepare.external_file= (python -m common.config.params_file ... "
                          "prepare.external_file=)")
    root = Path(target).resolve().parent
    output = (root / params.paths.output).resolve()
    if output != root and root not in output.parents:
        raise ParamsError(f"paths.output={params.paths.output} is outside the repository ({root}); DVC keeps "
                          "outputs inside it: use a folder such as runs/first")
    for key in DVC_KEYS:
        _ensure_key(data, key, plain(params))
    _drop_defaults(data, Params, "")
    body = io.StringIO()
    rt.dump(data, body)
    Path(target).write_text(f"# Written from {source} with {' '.join(overrides) or 'no overrides'} (python -m "
                            "common.config.params_file): only what differs from the typed defaults (--help lists them)\n"
                            + body.getvalue(), encoding="utf-8")
    return params


def _ensure_key(data: Any, key: str, values: dict) -> None:
    """Add the dotted `key` to round-trip YAML `data` where it is missing, with its value in `values` (a whole
    section as an empty mapping)."""
    from ruamel.yaml.comments import CommentedMap

    node, cls, value = data, Params, values
    parts = key.split(".")
    for depth, part in enumerate(parts):
        value = value[part]
        if part not in node:
            leaf = depth == len(parts) - 1 and not dataclasses.is_dataclass(typing.get_type_hints(cls)[part])
            node[part] = value if leaf else CommentedMap()
            _place_added_key(node, part, cls)
        node, cls = node[part], typing.get_type_hints(cls)[part]


def _apply_as_edit(data: Any, override: str, parse: typing.Callable[[str], Any]) -> None:
    """`apply_override` on round-trip YAML data, a key it adds put in its place (`_place_added_key`)."""
    path = override.split("=", 1)[0].strip().split(".")
    known = []
    node: Any = data
    for part in path:
        known.append(isinstance(node, dict) and part in node)
        node = node.get(part) if isinstance(node, dict) else None
    from ruamel.yaml.comments import CommentedMap

    apply_override(data, override, parse=parse)
    node, cls = data, Params
    for part, existed in zip(path, known, strict=True):
        if not dataclasses.is_dataclass(cls) or not isinstance(node, dict):
            break
        if type(node[part]) is dict:  # a mapping apply_override made on the way
            node[part] = CommentedMap(node[part])
        if not existed:
            _place_added_key(node, part, cls)
        node, cls = node[part], typing.get_type_hints(cls).get(part)


def _place_added_key(node: Any, key: str, cls: type) -> None:
    """Move `key`, just added at the end of the mapping `node` (of dataclass `cls`), to its place in the schema's
    order; when it stays last, the blank and comment lines after the former last key (introducing what comes
    next) follow it instead."""
    order = [f.name for f in dataclasses.fields(cls)]
    others = [k for k in node if k != key]
    position = sum(1 for k in others if k in order and order.index(k) < order.index(key))
    if position < len(others):
        node.insert(position, key, node.pop(key))
        return
    if not others or not hasattr(node, "ca") or isinstance(node[others[-1]], dict):
        return
    token = node.ca.items.get(others[-1], [None] * 4)[2]
    if token is not None and "\n" in token.value:
        end_of_line, rest = token.value.split("\n", 1)
        if rest:
            token.value = end_of_line + "\n"
            node.ca.items[key] = [None, None, type(token)("\n" + rest, token.start_mark), None]


def _drop_defaults(node: Any, cls: type, prefix: str) -> str:
    """Remove from the mapping `node` (of dataclass `cls` at `prefix`) every key at its typed default, except
    DVC_KEYS and their parents; the comments that followed a removed key go before the next key kept.

    Returns the comment lines still to place (a removed key was the mapping's last): its parent places them.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    carry = ""
    for key in list(node):
        path = join_key(prefix, key)
        value, tp = node[key], hints[key]
        kept = path in DVC_KEYS or any(k.startswith(path + ".") for k in DVC_KEYS)
        inner = typing.get_args(tp)[1] if typing.get_origin(tp) is dict else None
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            pending = _drop_defaults(value, tp, path)
            drop = not value and not kept
        elif dataclasses.is_dataclass(inner) and isinstance(value, dict):  # models by name: each entry stays
            pending = ""
            for name, spec in value.items():
                if pending:
                    _comment_before(value, name, pending)
                pending = _drop_defaults(spec, inner, f"{path}.{name}") if isinstance(spec, dict) else ""
            drop = False
        else:
            pending = ""
            drop = not kept and convert_value(value, tp, path) == field_default(fields[key])
        if drop:
            carry += pending + _comments_after(node, key)
            del node[key]
            continue
        if carry:
            _comment_before(node, key, carry)
            carry = ""
        carry = pending
    return carry


def _comments_after(node: Any, key: str) -> str:
    """The full comment lines after `key`'s value (which introduce what follows), without its end-of-line one."""
    value = node[key]
    if isinstance(value, dict) and value:
        return _comments_after(value, list(value)[-1])
    token = getattr(node, "ca", None) and node.ca.items.get(key, [None] * 4)[2]
    if token is None:
        return ""
    lines = token.value.split("\n")[1:-1]  # after the end-of-line part, up to the last newline
    return "".join(line.strip() + "\n" for line in lines if not line.strip() or line.strip().startswith("#"))


def _comment_before(node: Any, key: str, lines: str) -> None:
    """Put comment `lines` ("# ..." each) before `key` of the mapping `node`."""
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    indent = node.lc.col if getattr(node, "lc", None) is not None and node.lc.col is not None else 0
    before = node.ca.items.setdefault(key, [None, [], None, None])
    before[1] = (before[1] or []) + [CommentToken(line + "\n", CommentMark(indent))
                                     for line in lines.splitlines()]


def main(argv: typing.Sequence[str] | None = None) -> int:
    """python -m common.config.params_file --from FILE [--to params.yaml] [dotted.key=value ...]"""
    parser = argparse.ArgumentParser(description="Write a validated params file for a run (make competition).")
    parser.add_argument("--from", dest="source", required=True, help="params file to start from")
    parser.add_argument("--to", dest="target", default="params.yaml", help="file to write (default: params.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. paths.input=/data/aes2")
    args = parser.parse_args(argv)
    try:
        params = write_params_file(args.source, args.target, args.overrides)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.target}: {len(params.train.all_models)} model(s) ({', '.join(params.train.all_models)}), "
          f"data {params.paths.input}, outputs {params.paths.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
