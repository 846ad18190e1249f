"""The public Python API: every promised name resolves, and docs/python-api.md's example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def test_every_public_name_resolves_to_a_real_object():
    import tuneloop

    assert re.fullmatch(r"\d+\.\d+\.\d+.*", tuneloop.__version__)
    for name in tuneloop.__all__:
        assert getattr(tuneloop, name) is not None, name
    with pytest.raises(AttributeError):
        tuneloop.no_such_entry_point  # noqa: B018


def test_import_tuneloop_loads_no_torch():
    code = "import sys, tuneloop; tuneloop.Project; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_documented_table_names_only_real_entry_points():
    import tuneloop

    table_names = set(re.findall(r"^\| `(\w+)", DOC.read_text(), flags=re.M))
    assert table_names and table_names <= set(tuneloop.__all__)


def test_the_documented_example_runs(tiny_model_dir, tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1
    code, replaced = re.subn(r'^MODEL = "default".*$', f"MODEL = {str(tiny_model_dir)!r}", blocks[0], flags=re.M)
    assert replaced == 1
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                               "TUNELOOP_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "round r0001" in done.stdout
    assert "schema_valid" in done.stdout
    assert done.stdout.strip().splitlines()[-1].startswith("{"), done.stdout
