"""Crash safety of every write: a process killed (SIGKILL) at any point leaves the old or the new content, never neither.

Each test runs the write in a child process and kills it: either exactly before its k-th file-system step (rename,
exchange, fsync, unlink, rmtree: every k until the write completes), or after a random delay in a loop of attempts.
The path is then read back and must hold one complete version.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tuneloop.files import atomic_dir, recover_dir, write_text

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL and umask are POSIX")

FILES_PER_FOLDER = 12

CHILD = textwrap.dedent(
    """
    import os, shutil, signal, sys, time
    from pathlib import Path
    import tuneloop.files as files

    kind, target, version, kill_at, no_exchange, loops = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1", int(sys.argv[6])
    steps = [0]

    def step(name, real):
        def wrapped(*args, **kwargs):
            steps[0] += 1
            if steps[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return wrapped

    for module, name in ((os, "rename"), (os, "replace"), (os, "fsync"), (os, "unlink"), (shutil, "rmtree")):
        setattr(module, name, step(name, getattr(module, name)))
    files.exchange = step("exchange", (lambda a, b: False) if no_exchange else files.exchange)

    print("ready", flush=True)
    for n in range(loops):
        tag = version if loops == 1 else f"{version}{n}"
        if kind == "dir":
            with files.atomic_dir(target) as staging:
                for i in range(%(count)d):
                    (staging / f"part-{i}.txt").write_text(tag * 2000)
                (staging / "manifest.json").write_text(tag)
        else:
            files.write_text(target, tag * 50000)
    print("finished")
    """
) % {"count": FILES_PER_FOLDER}


def child(kind: str, target: Path, version: str, kill_at: int = 0, no_exchange: bool = False,
          loops: int = 1) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, kind, str(target), version, str(kill_at),
                             "1" if no_exchange else "0", str(loops)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def folder_version(path: Path) -> str:
    """The one version a folder holds; fails when it is missing, partial or mixed."""
    assert path.is_dir(), f"{path} is missing after the kill"
    manifest = (path / "manifest.json").read_text()
    parts = sorted(path.glob("part-*.txt"))
    assert len(parts) == FILES_PER_FOLDER, f"{path}: {len(parts)} of {FILES_PER_FOLDER} files"
    assert {p.read_text() for p in parts} == {manifest * 2000}, f"{path}: files of two versions"
    return manifest


def file_version(path: Path) -> str:
    assert path.is_file(), f"{path} is missing after the kill"
    text = path.read_text()
    tag = text[: len(text) // 50000]
    assert text == tag * 50000, f"{path}: partial content ({len(text)} chars)"
    return tag


def write_old_folder(path: Path) -> None:
    with atomic_dir(path) as staging:
        for i in range(FILES_PER_FOLDER):
            (staging / f"part-{i}.txt").write_text("A" * 2000)
        (staging / "manifest.json").write_text("A")


def kill_at_every_step(tmp_path: Path, kind: str, no_exchange: bool = False) -> list[str]:
    """Kill the write before each of its steps in turn; return the version seen after each kill."""
    seen = []
    for kill_at in range(1, 200):
        target = tmp_path / f"k{kill_at}" / ("export" if kind == "dir" else "data.jsonl")
        if kind == "dir":
            write_old_folder(target)
        else:
            write_text(target, "A" * 50000)
        process = child(kind, target, "B", kill_at, no_exchange)
        out, err = process.communicate(timeout=60)
        if process.returncode == 0:
            assert "finished" in out
            assert (folder_version(target) if kind == "dir" else file_version(target)) == "B"
            return seen
        assert process.returncode == -signal.SIGKILL, err
        if no_exchange:
            recover_dir(target)  # the two-rename fallback repairs itself on the next write to the path
        seen.append(folder_version(target) if kind == "dir" else file_version(target))
    raise AssertionError("the write never finished")


def test_an_export_replaced_in_place_is_old_or_new_at_every_step_of_a_kill(tmp_path):
    seen = kill_at_every_step(tmp_path, "dir")
    assert seen and set(seen) <= {"A", "B"}
    assert seen[0] == "A"  # the kill points include the ones before the swap
    # a killed write may leave its staging folder; the next write to the path removes it
    for folder in tmp_path.iterdir():
        write_old_folder(folder / "export")
        assert [p.name for p in folder.iterdir()] == ["export"]


def test_the_two_rename_fallback_recovers_the_old_folder_after_a_kill_between_renames(tmp_path):
    seen = kill_at_every_step(tmp_path, "dir", no_exchange=True)
    assert seen and set(seen) <= {"A", "B"}


def test_an_atomic_file_write_is_old_or_new_at_every_step_of_a_kill(tmp_path):
    seen = kill_at_every_step(tmp_path, "file")
    assert seen and set(seen) <= {"A", "B"}


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_a_kill_after_a_random_delay_never_leaves_the_path_empty(tmp_path, kind):
    rng = random.Random(11)
    target = tmp_path / ("export" if kind == "dir" else "data.jsonl")
    if kind == "dir":
        write_old_folder(target)
    else:
        write_text(target, "A" * 50000)
    for _ in range(25):
        process = child(kind, target, rng.choice("BCDE"), loops=10_000)
        assert process.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, 0.05))
        process.kill()
        process.communicate()
        version = folder_version(target) if kind == "dir" else file_version(target)
        assert version[:1] in "ABCDE"


def test_written_files_and_folders_follow_the_umask_without_the_process_changing_it(tmp_path):
    script = textwrap.dedent(
        """
        import os, sys
        os.umask(0o027)
        def refuse(mask):
            raise AssertionError("os.umask called: a process-wide change races every thread creating files")
        os.umask = refuse
        from pathlib import Path
        from tuneloop.files import atomic_dir, write_text
        root = Path(sys.argv[1])
        write_text(root / "a.txt", "x")
        with atomic_dir(root / "folder") as staging:
            write_text(staging / "b.txt", "y")
        """
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "folder" / "b.txt").stat().st_mode) == 0o640


def test_an_atomic_write_fsyncs_the_file_and_its_folder(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def record(fd: int) -> None:
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    write_text(tmp_path / "a.json", json.dumps({"a": 1}))
    assert synced == ["file", "folder"]
    synced.clear()
    with atomic_dir(tmp_path / "export") as staging:
        (staging / "weights.bin").write_bytes(b"\0" * 10)
    assert "file" in synced and synced[-1] == "folder"
