"""The tree's boundaries (docs/venues.md): the collector never imports the Dagster half, and the
Dagster half names no venue except through the registry."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_collector_daemon_never_imports_orchestration() -> None:
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in _imports(p) if m.split(".")[0] == "orchestration")
                 for p in (ROOT / "collector_daemon").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_orchestration_imports_only_the_collectors_public_api() -> None:
    """Dagster builds on the registry (``collector_daemon.venues``), the shared core, storage,
    rows and settings; never on a venue's internals or the daemon's moving parts."""
    public = ("collector_daemon.venues", "collector_daemon.core", "collector_daemon.storage",
              "collector_daemon.rows", "collector_daemon.settings")
    bad = {}
    for p in (ROOT / "orchestration").rglob("*.py"):
        mods = [m for m in _imports(p) if m.startswith("collector_daemon")
                and (m not in public and not m.startswith(tuple(x + "." for x in public))
                     or re.match(r"collector_daemon\.venues\.\w+", m))]
        if mods:
            bad[str(p.relative_to(ROOT))] = mods
    assert bad == {}


def test_orchestration_code_names_no_venue() -> None:
    """Outside comments and docstrings, ``orchestration/`` never spells a venue's name."""
    hits = []
    for p in (ROOT / "orchestration").rglob("*.py"):
        tree = ast.parse(p.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                      and n.body and isinstance(n.body[0], ast.Expr)
                      and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in docstrings and re.search(r"deribit|bybit|kraken", node.value, re.I)):
                hits.append(f"{p.relative_to(ROOT)}:{node.lineno}: {node.value[:60]!r}")
            elif isinstance(node, ast.Name) and re.search(r"deribit|bybit|kraken", node.id, re.I):
                hits.append(f"{p.relative_to(ROOT)}:{node.lineno}: {node.id}")
    assert hits == []
