"""`tuneloop annotate` from the command line: one URL per user with its token, the seed set queued, bad users refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import httpx
import pytest
from typer.testing import CliRunner

from tuneloop.cli.main import app
from tuneloop.examples import init_example


def test_the_command_prints_a_url_per_user_and_serves_the_queues(tmp_path):
    root = tmp_path / "proj"
    init_example(root, size=30)
    command = [sys.executable, "-m", "tuneloop.cli.main", "annotate", "--port", "0", "--user", "ann:annotator",
               "--user", "rev:reviewer", "--token", "a-configured-token-123"]
    process = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "COLUMNS": "200"})
    try:
        lines = []
        deadline = time.monotonic() + 60
        while len([line for line in lines if "#token=" in line]) < 2:
            assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
            lines.append(process.stdout.readline())
        urls = dict(re.findall(r"^(\w+) \(\w+\): (http://\S+)$", "".join(lines), re.MULTILINE))
        assert urls["ann"].endswith("#token=a-configured-token-123")
        generated = urls["rev"].split("#token=")[1]
        assert len(generated) >= 24 and generated != "a-configured-token-123"
        base = urls["ann"].split("/#")[0]
        assert any("seed set: " in line and "new samples queued" in line for line in lines)
        assert httpx.get(base + "/").status_code == 200
        assert httpx.get(base + "/api/session").status_code == 401
        session = httpx.get(base + "/api/session", headers={"Authorization": f"Bearer {generated}"}).json()
        assert (session["user"], session["role"]) == ("rev", "reviewer")
        seed = httpx.get(base + "/api/items?queue=seed", headers={"Authorization": "Bearer a-configured-token-123"})
        assert seed.json()["total"] > 20
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.mark.parametrize("args, message", [
    (["--user", "ann"], "write NAME:ROLE"),
    (["--user", "ann:admin"], "write NAME:ROLE"),
    (["--user", "ann:annotator", "--token", "short"], "at least 16 characters"),
    (["--user", "a:annotator", "--user", "b:reviewer", "--token", "same-token-0123456", "--token",
      "same-token-0123456"], "the same token twice"),
    (["--user", "a:annotator", "--token", "one-token-01234567", "--token", "two-token-01234567"], "one token per user"),
])
def test_bad_users_and_tokens_are_refused_in_one_line(tmp_path, monkeypatch, args, message):
    init_example(tmp_path / "proj", size=30)
    monkeypatch.chdir(tmp_path / "proj")
    result = CliRunner().invoke(app, ["annotate", *args])
    assert result.exit_code == 2 and message in result.output, result.output
