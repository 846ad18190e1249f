"""Atomic writes and content hashes: the only way tuneloop puts bytes on disk.

JSONL goes through two functions only: `write_jsonl` (a whole file, atomically) and `append_jsonl` (a journal:
append, flush and fsync per batch).

A file is written to a temporary sibling, flushed and fsync'ed, renamed over the target, and the folder is
fsync'ed so the rename itself survives a power cut: a reader (or a killed process) sees the old file or the
complete new one, never a partial file.

A folder (an export, a round, an adapter) is replaced in place so that at every instant one complete folder sits
at its path, the old one or the new one, never neither and never a mix:
```
1. build      .name.<pid>.<random>.tmp/   every file written and fsync'ed; the old `name/` still serves readers
2. swap       renameat2(RENAME_EXCHANGE)  one system call trades the two entries: `name/` is now the new folder
                                          and the staging name holds the old one (a kill before: old; after: new)
3. clean up   rm -r the staging name      a kill here leaves only a stale `.name.*.tmp`, removed by the next write
```
A first write (no old folder) is a plain rename of the staging folder. On a system without an atomic exchange
(renameat2 needs Linux ≥ 3.15 and a filesystem that supports it) the swap falls back to two renames, old → `.name.old`
then staging → `name`; a kill between them leaves the old folder under `.name.old`, which `recover_dir` (called by
the next write to that path) moves back.

Temporary files and folders are created with mode 0o666 / 0o777 and the kernel applies the user's umask, as open()
and mkdir() do; tuneloop never changes the process umask (that would race every other thread creating files).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

CHUNK = 1 << 20
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _temp_name(target: Path) -> Path:
    """A sibling name no reader mistakes for the target; the pid tells a later write whether its owner is alive."""
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _create_temp_file(target: Path) -> tuple[int, Path]:
    while True:
        tmp = _temp_name(target)
        try:
            # 0o666 and the kernel applies the umask, as open() does (mkstemp would make it owner-only)
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:
            continue


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or a new entry in `path` durable (a no-op where folders cannot be opened, as on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:  # some filesystems refuse fsync on a folder; the rename is still atomic
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; rename it over `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    fd, tmp = _create_temp_file(target)
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding, newline=None if binary else "") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_open(path, "w") as handle:
        handle.write(text)
    return Path(path)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_json(path: str | os.PathLike[str], value: Any) -> Path:
    return write_text(path, json.dumps(value, ensure_ascii=False, indent=2, default=str) + "\n")


def jsonl_line(row: Any, default: Callable[[Any], Any] | None = None) -> str:
    """One JSONL line: the row as compact JSON, non-ASCII text kept as written, ending in a newline."""
    return json.dumps(row, ensure_ascii=False, default=default) + "\n"


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Any], default: Callable[[Any], Any] | None = None) -> Path:
    """A whole JSONL file, one row a line, atomically: a reader sees the old file or every row, never part of them."""
    with atomic_open(path) as handle:
        for row in rows:
            handle.write(jsonl_line(row, default))
    return Path(path)


def append_jsonl(path: str | os.PathLike[str], rows: Iterable[Any]) -> int:
    """Add rows to the end of a JSONL journal, flushed and fsync'ed before returning (durable per batch).

    An append cannot be atomic; a kill mid-write can leave a half line at the end, which the journal's reader cuts
    off (`eval/journal.py`). Returns how many rows were written.
    """
    lines = [jsonl_line(row) for row in rows]
    if not lines:
        return 0
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a", encoding="utf-8") as handle:
        handle.writelines(lines)
        handle.flush()
        os.fsync(handle.fileno())
    return len(lines)


class JSONFileError(json.JSONDecodeError):
    """A JSON file that does not parse, named with the line and column where it breaks (still a JSONDecodeError,
    so callers that catch that keep working)."""

    def __init__(self, path: str | os.PathLike[str], err: json.JSONDecodeError):
        super().__init__(err.msg, err.doc, err.pos)
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}, line {self.lineno}, column {self.colno}: not valid JSON ({self.msg}); fix the file there."


def read_json(path: str | os.PathLike[str]) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise JSONFileError(path, err) from err


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a whole folder under a temporary name, then swap it in (module doc): the old folder or the new one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    remove_stale_temps(target)
    staging = _temp_name(target)
    os.mkdir(staging, 0o777)  # the kernel applies the umask, as for any folder the user makes
    try:
        yield staging
        _fsync_tree(staging)
        _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_in(staging: Path, target: Path) -> None:
    if not os.path.lexists(target):
        os.rename(staging, target)
        fsync_dir(target.parent)
        return
    if exchange(staging, target):
        fsync_dir(target.parent)
        shutil.rmtree(staging)  # the staging name now holds the old folder
        return
    old = _old_name(target)
    shutil.rmtree(old, ignore_errors=True)
    os.rename(target, old)
    os.rename(staging, target)  # a kill between these two renames is what recover_dir repairs
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def _old_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def recover_dir(path: str | os.PathLike[str]) -> None:
    """Undo a swap that two-rename systems left half done: put `.name.old` back, or drop it once `name` exists."""
    target = Path(path)
    old = _old_name(target)
    if not old.is_dir():
        return
    if os.path.lexists(target):
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(old, target)
        fsync_dir(target.parent)


def remove_stale_temps(path: str | os.PathLike[str]) -> None:
    """Delete temporaries of `path` that a killed process left (`.name.<pid>.<random>.tmp` whose pid is gone)."""
    target = Path(path)
    remove_dead_temps(target.parent, re.escape(target.name))


def remove_dead_temps(folder: str | os.PathLike[str], name_pattern: str) -> None:
    """Delete the temporaries in `folder` of every name matching the regex `name_pattern` whose writer is gone.

    A round's staging may be named for another number than the next write's (`r0003` or `r0003-failed`), so the
    gate clears all of them: `remove_dead_temps(rounds_dir, r"r\\d{4}(?:-failed)?")`. A live writer's are kept.
    """
    temp = re.compile(rf"\.(?:{name_pattern})\.(\d+)\.[^.]+\.tmp")
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for entry in entries:
        found = temp.fullmatch(entry.name)
        if found is None or pid_alive(int(found.group(1))):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (ours counts as running; one we may not signal too)."""
    if pid == os.getpid() or os.name != "posix":  # os.kill(pid, 0) would terminate a process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_libc_handle: Any = None


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Swap two existing paths in one atomic step; False where this system or filesystem cannot."""
    global _libc_handle
    if _libc_handle is None:
        try:
            _libc_handle = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _libc_handle = False
    if _libc_handle is False:
        return False
    old, new = os.fsencode(a), os.fsencode(b)
    if hasattr(_libc_handle, "renameat2"):  # Linux (glibc ≥ 2.28, musl)
        result = _libc_handle.renameat2(_AT_FDCWD, old, _AT_FDCWD, new, _RENAME_EXCHANGE)
    elif hasattr(_libc_handle, "renamex_np"):  # macOS: RENAME_SWAP
        result = _libc_handle.renamex_np(old, new, 0x2)
    else:
        return False
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), os.fsdecode(old), None, os.fsdecode(new))


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder below `root` before it is swapped in, so a power cut cannot leave holes."""
    for folder, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (sha256 by default; sha1 is what LLaMA-Factory calls `file_sha1`)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digest(path: str | os.PathLike[str]) -> str:
    """sha256 over the relative names and bytes of every file below a folder (or of one file)."""
    root = Path(path)
    if root.is_file():
        return file_digest(root)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(root)).encode())
        digest.update(file_digest(file).encode())
    return digest.hexdigest()
