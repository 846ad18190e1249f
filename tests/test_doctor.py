from __future__ import annotations

import json

from typer.testing import CliRunner

from tuneloop.cli.main import app


def test_doctor_reports_every_check_on_a_cpu_machine():
    result = CliRunner().invoke(app, ["doctor", "--json"])
    checks = {c["name"]: c for c in json.loads(result.output)}
    assert {"python", "torch", "gpu", "bf16", "attention", "memory", "engines", "default model"} <= set(checks)
    assert checks["attention"]["details"]["sdpa"] is True
    for check in checks.values():
        if check["level"] in ("warn", "fail"):
            assert check["fix"], f"{check['name']} failed without saying what to do"
