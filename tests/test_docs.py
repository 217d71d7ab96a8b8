"""The README's guess table and the code's `Assumption:` / `Deviation:` markers match both ways: every marker's place
(file and enclosing function or class, or the file for a module-level marker) has a row, and every row points at a
place that carries a marker. Also: the README stays a page a reader finishes."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def marker_places() -> set[str]:
    places = set()
    for f in sorted(ROOT.rglob("*.py")):
        rel = f.relative_to(ROOT).as_posix()
        if rel.startswith(("tests/", ".")) or "/." in rel:
            continue
        src = f.read_text(encoding="utf-8")
        spans = []
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                spans.append((node.lineno, node.end_lineno, node.name))
            if isinstance(node, ast.ClassDef):
                spans += [(m.lineno, m.end_lineno, f"{node.name}.{m.name}") for m in node.body
                          if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for i, line in enumerate(src.split("\n"), 1):
            if re.search(r"\b(Assumption|Deviation):", line):
                inner = [s for s in spans if s[0] <= i <= s[1]]
                places.add(f"{rel}:{min(inner, key=lambda s: s[1] - s[0])[2]}" if inner else rel)
    return places


def table_places() -> set[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## What we had to guess", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.split("\n") if line.startswith("| `")]
    return {place for row in rows for place in re.findall(r"`([^`]+\.py(?::[\w.]+)?)`", row.split(" | ")[0])}


def test_every_marker_has_a_row_and_every_row_a_marker():
    markers, rows = marker_places(), table_places()
    unlisted, stale = sorted(markers - rows), sorted(rows - markers)
    assert not unlisted, f"markers without a row in the README's guess table: {unlisted}"
    assert not stale, f"rows naming a place with no Assumption:/Deviation: marker: {stale}"


def test_readme_is_a_page_a_reader_finishes():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").split("\n")) <= 250


def test_every_code_reference_in_the_readme_exists():
    """`file.py:name` in the README (paper -> code map, guess table) names a function, class, method or constant that
    is in that file: the map a reader follows does not drift from the code."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = []
    for path, name in sorted(set(re.findall(r"`([\w/]+\.py):([\w.]+)", readme))):
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names |= {f"{node.name}.{m.name}" for m in node.body if isinstance(m, ast.FunctionDef)}
            if isinstance(node, ast.Assign):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        if name not in names:
            missing.append(f"{path}:{name}")
    assert not missing, f"README names code that is not there: {missing}"
