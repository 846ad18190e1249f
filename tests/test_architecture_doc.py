"""docs/architecture.md matches the code: every module it names exists, and the import rule it states holds."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "tuneloop"
DOC = ROOT / "docs" / "architecture.md"

# the layers of the import rule, lowest first; a module may import its own layer and the ones below it
LAYERS = [
    {"records", "answers", "tools", "files", "manifest", "progress", "html", "llm_client", "models", "project", "testing"},
    {"data"},
    {"train", "eval", "decoding"},
    {"export", "serve"},
    {"traces", "annotate", "examples"},
    {"loop", "loop_stage", "loop_summary", "loop_traffic", "loop_intake", "loop_canary", "loop_export",
     "loop_rounds"},
    {"cli", "doctor"},
]
ALLOWED_UPWARD = {("serve", "traces")}  # serve writes every call through traces.store, by design


def layer_of(top: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if top in names)


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tuneloop."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("tuneloop.")}
    return found


def test_every_module_the_page_names_exists():
    named = set(re.findall(r"`((?:[a-z_]+/)*[a-z_]+\.py)`", DOC.read_text()))
    assert len(named) > 40
    missing = sorted(n for n in named if not (PACKAGE / n).exists() and not (ROOT / n).exists())
    assert missing == []


def test_every_stage_folder_is_on_the_page():
    text = DOC.read_text()
    folders = [p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    assert [f for f in folders if f"{f}/" not in text and f not in {"testing", "examples"}] == []


def test_imports_flow_one_way():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",):
            continue  # the public API names entry points of every stage, imported lazily
        top = parts[0]
        for target in imports_of(path):
            if layer_of(target) > layer_of(top) and (top, target) not in ALLOWED_UPWARD:
                wrong.append(f"{path.relative_to(PACKAGE)} imports tuneloop.{target}")
    assert wrong == []


def test_the_rule_catches_an_upward_import(tmp_path):
    module = tmp_path / "backends.py"
    module.write_text("def f():\n    from tuneloop.serve.server import create_app\n    import tuneloop.records\n")
    assert imports_of(module) == {"serve", "records"}
    assert layer_of("serve") > layer_of("eval") and ("eval", "serve") not in ALLOWED_UPWARD
