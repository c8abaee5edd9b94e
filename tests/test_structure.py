"""The package's shape: no import cycle anywhere in revgn_cli (imports inside functions count too — a lazy import
still ties two modules together), and no function of the training loop longer than a screen."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "revgn_cli"
MAX_TRAIN_FUNCTION_LINES = 60


def module_name(path: Path, root: Path = PKG) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PKG) -> dict[str, set[str]]:
    """module → the revgn_cli modules it imports anywhere in its body (``from pkg import mod`` counts as ``pkg.mod``;
    a relative import is resolved against the module's package)."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names}
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_sees_a_planted_cycle(tmp_path):
    pkg = tmp_path / "revgn_cli"
    (pkg / "figures").mkdir(parents=True)
    (pkg / "studies").mkdir()
    for d in (pkg, pkg / "figures", pkg / "studies"):
        (d / "__init__.py").write_text("")
    (pkg / "figures" / "registry.py").write_text("def get():\n    from revgn_cli.studies import figures\n")
    (pkg / "studies" / "figures.py").write_text("from ..figures.registry import get\n")
    (pkg / "studies" / "other.py").write_text("import revgn_cli.figures.registry\n")
    g = import_graph(pkg)
    assert g["revgn_cli.figures.registry"] == {"revgn_cli.studies.figures"}
    assert g["revgn_cli.studies.figures"] == {"revgn_cli.figures.registry"}
    assert cycles(g) == [["revgn_cli.figures.registry", "revgn_cli.studies.figures"]]


def test_no_import_cycles_in_the_package():
    g = import_graph()
    assert {"revgn_cli.figures.catalog", "revgn_cli.studies.figures", "revgn_cli.figures.claims"} <= set(g)
    assert "revgn_cli.studies.figures" in g["revgn_cli.figures.catalog"]  # the graph sees lazy imports
    assert cycles(g) == []
    # The paper's figure list and the studies' figures share only the FigureSpec type.
    assert not {m for m in g["revgn_cli.figures.registry"] if m.startswith("revgn_cli.studies")}
    assert not {m for m in g["revgn_cli.studies.figures"] if m in ("revgn_cli.figures.registry",
                                                                 "revgn_cli.figures.catalog")}


def long_functions(root: Path, limit: int) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_long_function_finder_counts_lines(tmp_path):
    (tmp_path / "m.py").write_text("def short():\n    pass\n\n\ndef long():\n" + "    x = 1\n" * 5)
    assert long_functions(tmp_path, 6) == []
    assert [s.split()[1] for s in long_functions(tmp_path, 5)] == ["long"]


def test_training_functions_fit_a_screen():
    assert long_functions(PKG / "train", MAX_TRAIN_FUNCTION_LINES) == []
