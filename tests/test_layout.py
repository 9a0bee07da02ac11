"""common/'s layout: its import graph has no circle and no import from a lower layer to a higher one, and the
inference side (what 05_infer and the Kaggle bundle run) loads neither optuna nor training code.

The graph is read from the source (ast, nothing imported): every `import common...` / `from common... import`
anywhere in a module, at module level, inside a function or under `if TYPE_CHECKING:` alike.
"""

import ast
import functools
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

LAYERS = ("core", "models.parts", "config", "prepare", "scoring", "models", "train", "ensemble", "infer", "pseudo",
          "tools")
"""common/'s packages, lowest first: a module may import its own layer and the layers before it. A module's layer
is the longest entry its dotted path (below `common.`) starts with, so `models.parts` (the registries `config`
checks names against) sits below `config` while the rest of `models` sits above it."""

INFERENCE_SIDE = sorted(f"common.infer.{p.stem}" for p in (REPO / "common" / "infer").glob("*.py")
                        if p.name != "__init__.py")
"""What 05_infer/run.py (and so the Kaggle notebook) imports its work from: every module of common/infer."""

NOT_FOR_INFERENCE = ("optuna", "common.train", "common.pseudo", "common.tools", "common.ensemble.search",
                     "common.ensemble.selection", "common.ensemble.target", "common.ensemble.tuning",
                     "common.ensemble.ensemble_stage")
"""Module prefixes the inference side must not load: optuna (tuning happens in 04 only), training, the 01 stage,
the tools, and 04's search (with its target weights, selection rules and the stacker's tuning)."""


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """{module: the common modules it imports}, for every .py file under root/common (root: a checkout)."""
    modules = {module_name(p, root): p for p in sorted((root / "common").rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                # `from common.x import y`: the module common.x.y when there is one, else common.x
                targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (circle := visit(target)):
                return circle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (circle := visit(node)):
            return circle
    return None


def layer_of(module: str) -> int | None:
    """The index in LAYERS of `module`'s layer; None for a module outside every layer (common's own __init__)."""
    inside = module.removeprefix("common.")
    matches = [entry for entry in LAYERS if inside == entry or inside.startswith(entry + ".")]
    return LAYERS.index(max(matches, key=len)) if matches else None


def layer_problems(graph: dict[str, set[str]]) -> list[str]:
    """Every module outside the layers and every import from a lower layer to a higher one."""
    problems = [f"{m} is in no layer of LAYERS" for m in sorted(graph) if m != "common" and layer_of(m) is None]
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            low, high = layer_of(module), layer_of(target)
            if low is not None and high is not None and high > low:
                problems.append(f"{module} ({LAYERS[low]}) imports {target} ({LAYERS[high]}), a higher layer")
    return problems


def loaded_by(entries: list[str], root: Path) -> list[str]:
    """Every module a fresh python has loaded after importing each of `entries`, with `root` first on its path."""
    code = (f"import sys; sys.path.insert(0, {str(root)!r}); import {', '.join(entries)}; "
            "print('\\n'.join(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    return done.stdout.split()


def test_common_has_no_import_circle() -> None:
    circle = find_circle(import_graph(REPO))
    assert circle is None, "import circle in common/: " + " -> ".join(circle)


def test_common_imports_only_its_own_layer_or_lower_ones() -> None:
    problems = layer_problems(import_graph(REPO))
    assert not problems, "\n".join(problems)


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    package = tmp_path / "common"
    (package / "core").mkdir(parents=True)
    for name in ("__init__.py", "core/__init__.py", "core/b.py", "core/c.py", "core/d.py"):
        (package / name).write_text("")
    (package / "core" / "a.py").write_text(
        "from typing import TYPE_CHECKING\nfrom common.core import b\nif TYPE_CHECKING:\n    from . import c\n"
        "def f():\n    import common.core.d\n")
    (package / "core" / "d.py").write_text("from .a import f\n")
    graph = import_graph(tmp_path)
    assert graph["common.core.a"] == {"common.core.b", "common.core.c", "common.core.d"}
    assert find_circle(graph) == ["common.core.a", "common.core.d", "common.core.a"]


def test_a_lower_layer_importing_a_higher_one_is_named() -> None:
    graph = {"common.core.io": {"common.train.engine"}, "common.train.engine": {"common.core.io"},
             "common.models.parts.heads": set(), "common.config.params": {"common.models.parts.heads"}}
    assert layer_problems(graph) == ["common.core.io (core) imports common.train.engine (train), a higher layer"]


@functools.cache
def inference_side_modules() -> tuple[str, ...]:
    """What a fresh python loads for INFERENCE_SIDE (one process for the tests below, several seconds of imports)."""
    return tuple(loaded_by(INFERENCE_SIDE, REPO))


def test_inference_loads_neither_optuna_nor_training_code() -> None:
    loaded = inference_side_modules()
    assert INFERENCE_SIDE and set(INFERENCE_SIDE) <= set(loaded)
    unwanted = [m for m in loaded if m.startswith(NOT_FOR_INFERENCE)]
    assert not unwanted, f"importing {INFERENCE_SIDE} loads {unwanted}"


def test_the_kaggle_bundle_leaves_out_only_what_inference_never_loads() -> None:
    from common.tools.kaggle import LEFT_OUT

    loaded = [m.removeprefix("common.").replace(".", "/") for m in inference_side_modules()
              if m.startswith("common.")]
    needed = [m for m in loaded if f"{m}/".startswith(LEFT_OUT) or f"{m}.py".startswith(LEFT_OUT)]
    assert not needed, f"the bundle leaves out {needed}, which {INFERENCE_SIDE} import"


MAX_LINES = 450
"""No module of common/ is longer: past that a file tends to hold several jobs (split it by job)."""


def long_modules(root: Path, limit: int = MAX_LINES) -> dict[str, int]:
    """The .py files under `root` with more than `limit` lines, by path relative to `root`."""
    counts = {str(p.relative_to(root)): len(p.read_text(encoding="utf-8").splitlines()) for p in root.rglob("*.py")}
    return {path: n for path, n in sorted(counts.items()) if n > limit}


def test_no_module_in_common_is_over_the_line_limit() -> None:
    assert long_modules(REPO / "common") == {}


def test_the_line_limit_check_names_a_long_module(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "short.py").write_text("x = 1\n" * 3)
    (tmp_path / "pkg" / "long.py").write_text("x = 1\n" * 5)
    assert long_modules(tmp_path, limit=4) == {"pkg/long.py": 5}


STAGE_SCRIPTS = sorted(REPO.glob("0*_*/*.py"))
"""Every stage script: 00_prepare/run.py ... 05_infer/run.py, 01_pseudo_label/mlm.py and 05_infer/package.py."""

SCRIPT_IMPORTS = {"sys", "pathlib", "common.config.params", "common.config.stage", "common.core.offline"}
"""What a stage script may import at module level: the params, the stage runner and (05_infer) the offline switch."""


def stage_script_problems(path: Path) -> list[str]:
    """How the script at `path` departs from the one stage pattern: a docstring (its --help), the guarded imports of
    SCRIPT_IMPORTS, and `main(params)` importing one function from common/ and calling it; the logic lives in common/."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom) and node.col_offset <= 4 and not _inside_main(tree, node):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            problems += [f"imports {n} at module level" for n in names if n not in SCRIPT_IMPORTS]
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)]
    if [f.name for f in functions] != ["main"]:
        problems.append(f"defines {[f.name for f in functions]}, not main alone")
    main = next((f for f in functions if f.name == "main"), None)
    if main is not None:
        body = [s for s in main.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        imported = body[0].names[0].asname or body[0].names[0].name if body and isinstance(body[0], ast.ImportFrom) \
            else None
        if (len(body) != 2 or imported is None or not (body[0].module or "").startswith("common.")
                or not isinstance(body[1], ast.Expr) or not isinstance(body[1].value, ast.Call)
                or getattr(body[1].value.func, "id", None) != imported):
            problems.append("main does more than import one function from common/ and call it")
    return problems


def _inside_main(tree: ast.Module, node: ast.AST) -> bool:
    return any(node in ast.walk(f) for f in tree.body if isinstance(f, ast.FunctionDef))


def test_every_stage_script_only_hands_its_params_to_common() -> None:
    assert len(STAGE_SCRIPTS) >= 8
    problems = {str(p.relative_to(REPO)): stage_script_problems(p) for p in STAGE_SCRIPTS}
    assert not any(problems.values()), {k: v for k, v in problems.items() if v}


def test_a_stage_script_with_logic_of_its_own_is_named(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text('"""Stage."""\nimport sys\nimport pandas as pd\n\n\ndef main(params):\n'
                      '    from common.prepare.prepare_stage import prepare_inputs\n\n    prepare_inputs(params)\n'
                      '    pd.DataFrame().to_csv("x")\n')
    assert stage_script_problems(script) == ["imports pandas at module level",
                                             "main does more than import one function from common/ and call it"]
    script.write_text('"""Stage."""\nimport sys\n\n\ndef main(params):\n'
                      '    from common.prepare.prepare_stage import prepare_inputs\n\n    prepare_inputs(params)\n')
    assert stage_script_problems(script) == []
