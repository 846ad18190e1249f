"""The data side imports one way: no cycle through `records` or `data/`, not even a type-only or function-level one."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import tuneloop

SRC = Path(next(iter(tuneloop.__path__))).parent  # tuneloop is a namespace package: no __file__


def import_graph(src: Path) -> dict[str, set[str]]:
    """module → the tuneloop modules it imports anywhere in its text (TYPE_CHECKING blocks and functions included)."""
    files = {".".join(f.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): f
             for f in (src / "tuneloop").rglob("*.py")}

    def module_of(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        names: list[str] = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1], *filter(None, [base])])
                names += [base, *(f"{base}.{alias.name}" for alias in node.names)]
        graph[module] = {m for n in names if n.startswith("tuneloop") and (m := module_of(n)) and m != module}
    return graph


def cycle_through(graph: dict[str, set[str]], prefixes: tuple[str, ...]) -> list[str] | None:
    """One import cycle among the modules under `prefixes` (and what they import), or None."""
    inside = {m: {d for d in deps if d.startswith(prefixes)} for m, deps in graph.items() if m.startswith(prefixes)}
    try:
        TopologicalSorter(inside).prepare()
    except CycleError as err:
        return list(err.args[1])
    return None


def test_no_import_cycle_runs_through_records_or_the_data_stages():
    assert cycle_through(import_graph(SRC), ("tuneloop.records", "tuneloop.data")) is None


def test_records_import_nothing_from_the_stages():
    assert {d for d in import_graph(SRC)["tuneloop.records"] if d != "tuneloop"} == set()


def test_a_type_only_cycle_is_found(tmp_path):
    gate = tmp_path / "tuneloop" / "data" / "gate"
    gate.mkdir(parents=True)
    for name in ("__init__.py", "../__init__.py", "../../__init__.py"):
        (gate / name).write_text("", encoding="utf-8")
    (gate / "round.py").write_text("def gate():\n    from tuneloop.data.gate.report import build\n", encoding="utf-8")
    (gate / "report.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                    "    from tuneloop.data.gate.round import GateRun\n", encoding="utf-8")
    cycle = cycle_through(import_graph(tmp_path), ("tuneloop.data",))
    assert cycle is not None and set(cycle) == {"tuneloop.data.gate.round", "tuneloop.data.gate.report"}
