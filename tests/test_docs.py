"""The README stays short and points at docs/; every relative link in README.md and docs/*.md resolves.

A link is `[text](target)` outside code (fenced blocks and inline code spans are skipped). A relative target
must name an existing file or folder; a `#anchor` into a markdown file (or into the same file) must name one of
its headings, slugged as GitHub does.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_LINES = 150

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+).*?\1")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a `# comment` in a bash block is no heading, a link there no link)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its rendered text lower-cased, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, repeated headings numbered -1, -2, ... as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[str]:
    """The link targets of a markdown file, outside code."""
    return [target for line in prose_lines(path.read_text(encoding="utf-8"))
            for target in LINK.findall(INLINE_CODE.sub("", line))]


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def broken_link(source: Path, target: str) -> str | None:
    """Why `target` (a link in `source`) does not resolve, or None when it does or is not relative."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto:, ...
        return None
    file_part, _, anchor = target.partition("#")
    dest = (source.parent / file_part).resolve() if file_part else source
    if not dest.exists():
        return f"{target}: no file {dest}"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}"
    return None


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n < MAX_README_LINES, f"README.md has {n} lines; move detail into docs/ (under {MAX_README_LINES})"


def test_readme_links_every_docs_page():
    pages = sorted(DOCS.glob("*.md"))
    assert pages, "docs/ holds no pages"
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README) if t.partition("#")[0]}
    missing = [p.name for p in pages if p.resolve() not in linked]
    assert not missing, f"README.md does not link these docs/ pages: {missing}"
    others = [p.name for p in DOCS.iterdir() if p.suffix != ".md"]
    assert not others, f"docs/ holds files that are not markdown pages: {others}"


@pytest.mark.parametrize("source", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(source):
    assert source.exists(), f"{source.relative_to(REPO)} is missing"
    broken = [why for target in links(source) if (why := broken_link(source, target))]
    assert not broken, f"{source.relative_to(REPO)}: broken links:\n" + "\n".join(broken)


def test_slug_matches_github():
    assert slug("Run on the real data") == "run-on-the-real-data"
    assert slug("Text members (`kind: tfidf`)") == "text-members-kind-tfidf"
    assert slug("Under `paths.output`") == "under-pathsoutput"
    assert slug("Experiments, plots and diagnostics") == "experiments-plots-and-diagnostics"
    assert slug("Which method is kept: the noise-aware rule") == "which-method-is-kept-the-noise-aware-rule"


def test_readme_says_how_to_bring_back_every_tracked_file_a_run_rewrites():
    """A real run (make competition, dvc repro) rewrites the tracked params.yaml, dvc.lock and the headline
    figures under paths.metrics, and adds one per new model: the README's way back to the demo names them all."""
    import yaml

    metrics = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["paths"]["metrics"]
    text = " ".join(README.read_text(encoding="utf-8").split())
    spans = [s.strip("`") for s in re.findall(r"`[^`]*git checkout[^`]*`", text)]
    assert spans, "README.md: no `git checkout ...` bringing the demo's files back after a real run"
    words = {w for s in spans for w in re.split(r"[\s;&|]+", s)}
    missing = [f for f in ("params.yaml", "dvc.lock", metrics) if f not in words]
    assert not missing, f"README.md's {spans} leaves {missing} holding the real run's files"
    assert any("git clean" in s and metrics in s.split("git clean", 1)[1] for s in spans), (
        f"README.md's {spans}: a new model's {metrics}/train/<model>.json is untracked; git clean it too")
