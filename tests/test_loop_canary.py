"""Stopping the canary a loop round started: the process group it named ends, its record is kept, and a pid that
now belongs to another process is never signalled."""

from __future__ import annotations

import subprocess
import sys
import time

from tuneloop.files import read_json, write_json
from tuneloop.loop_canary import running_canaries, stop_canary


def sleeper(port: int) -> subprocess.Popen:
    # stands in for `tuneloop serve --port PORT`: what the stop checks is the port on its command line
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "--port", str(port)],
                            start_new_session=True)


def record(folder, process, port: int):
    folder.mkdir(parents=True)
    write_json(folder / "canary.json", {"pid": process.pid, "port": port, "url": f"http://127.0.0.1:{port}/v1"})
    return folder / "canary.json"


def test_stop_ends_the_canary_and_keeps_its_record(tmp_path):
    process = sleeper(41001)
    try:
        canary_file = record(tmp_path / "loop" / "r0002", process, 41001)
        assert running_canaries(tmp_path / "loop") == [canary_file]
        state = stop_canary(canary_file)
        process.wait(timeout=20)
        assert state["was_running"] and process.returncode is not None
        assert not canary_file.exists() and read_json(canary_file.with_name("canary.stopped.json"))["stopped_at"]
        assert running_canaries(tmp_path / "loop") == []
    finally:
        if process.poll() is None:
            process.kill()


def test_a_pid_that_now_runs_something_else_is_not_signalled(tmp_path):
    process = sleeper(41002)
    try:
        canary_file = record(tmp_path / "loop" / "r0003", process, 41999)  # the record names another port
        state = stop_canary(canary_file)
        time.sleep(0.3)
        assert state["was_running"] is False and process.poll() is None
    finally:
        process.kill()
        process.wait()
