"""The canary a loop round starts: `tuneloop serve --stable <current> --canary <new>` as a detached process.

```
free loopback port ─▶ python -m tuneloop.cli.main serve --stable A --canary B --weight W --port P (own session,
                      log in loop/<round>/canary.log) ─▶ GET /v1/models answers ─▶ loop/<round>/canary.json
                      {pid, url, stable, canary, weight, log_file, started_at}
`tuneloop canary stop` ─▶ SIGTERM to the process group (SIGKILL after a grace period) ─▶ canary.json → canary.stopped.json
```
A process that exits before it answers, or does not answer in time, is an error that quotes the end of its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tuneloop.files import pid_alive, read_json, write_json

STARTUP_TIMEOUT_S = 600.0  # two models load on a CPU before the router answers
STOP_GRACE_S = 15.0


class CanaryError(RuntimeError):
    """A canary that did not start or stop, with what to do."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def start_canary(stable: str, canary: str, weight: float, folder: Path, project_root: Path, traces: Path,
                 timeout_s: float = STARTUP_TIMEOUT_S) -> dict[str, Any]:
    """Start the canary router detached from this process; wait until it answers; write `folder`/canary.json."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    log_file = folder / "canary.log"
    command = [sys.executable, "-m", "tuneloop.cli.main", "serve", "--stable", stable, "--canary", canary,
               "--weight", str(weight), "--host", "127.0.0.1", "--port", str(port), "--traces", str(traces)]
    with open(log_file, "ab") as log:
        process = subprocess.Popen(command, cwd=project_root, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout_s
    while True:
        if process.poll() is not None:
            raise CanaryError(f"the canary process exited with code {process.returncode} before it answered; "
                              f"its log ({log_file}) ends: {_tail(log_file)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/models", timeout=2.0).status_code == 200:
                break
        if time.time() > deadline:
            _terminate(process.pid)
            raise CanaryError(f"the canary did not answer on {url} within {timeout_s:.0f}s (stopped it); its log "
                              f"({log_file}) ends: {_tail(log_file)}")
        time.sleep(0.5)
    state = {"pid": process.pid, "url": url, "port": port, "stable": stable, "canary": canary, "weight": weight,
             "log_file": str(log_file), "traces": str(traces), "started_at": time.time(), "command": command}
    write_json(folder / "canary.json", state)
    return state


def running_canaries(loop_dir: Path) -> list[Path]:
    """canary.json files of the rounds under `loop_dir` (loop/), newest round first."""
    return sorted(loop_dir.glob("r*/canary.json"), reverse=True) if loop_dir.exists() else []


def stop_canary(canary_file: Path) -> dict[str, Any]:
    """End the canary that `canary_file` names (if it still runs) and move the file to canary.stopped.json."""
    state = read_json(canary_file)
    pid = int(state["pid"])
    was_running = pid_alive(pid) and _is_our_canary(pid, state)
    if was_running:
        _terminate(pid)
    state.update(stopped_at=time.time(), was_running=was_running)
    write_json(canary_file.with_name("canary.stopped.json"), state)
    canary_file.unlink()
    return state


def _is_our_canary(pid: int, state: dict[str, Any]) -> bool:
    """A recycled pid must not be signalled: the process's command line must be the one we started."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():
        return True  # no /proc (macOS): trust the pid
    return f"--port\0{state['port']}" in cmdline.read_bytes().decode(errors="replace")


def _terminate(pid: int) -> None:
    """SIGTERM to the canary's process group, SIGKILL after the grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.time() + STOP_GRACE_S
    while time.time() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not pid_alive(pid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _tail(path: Path, chars: int = 600) -> str:
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return " ".join(text[-chars:].split()) or "(empty)"
