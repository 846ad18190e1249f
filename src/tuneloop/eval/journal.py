"""What a long run has finished, kept as it goes: an append-only JSONL that a rerun reads back.

```
journal.jsonl   {"key": <run key>, "id": <item id>, ...result}   one line per finished item, fsync'ed per batch
rerun, same key ──▶ items whose id is in the journal are skipped; their stored results are used as they are
rerun, other key (model or settings changed) ──▶ the journal starts over (one journal holds one run)
```
A kill can leave a last line half written; it is cut off on open (the item is simply done again). Failed items
(a request error) are never journaled, so a rerun retries them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tuneloop.files import append_jsonl, write_jsonl


class Journal:
    """Finished items of one run key in one JSONL file; `append` is thread-safe and durable on return."""

    def __init__(self, path: str | Path, key: str, fresh: bool = False):
        self.path, self.key = Path(path), key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        if fresh and self.path.exists():
            self.path.unlink()
        self._repair()
        self.done: dict[str, dict[str, Any]] = {}
        rows = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines()] if self.path.exists() else []
        for row in rows:
            if row.get("key") == key:
                self.done[row["id"]] = row
        if len(self.done) < len(rows):  # another run's answers: not reusable, and not to grow the file forever
            write_jsonl(self.path, self.done.values())

    def _repair(self) -> None:
        """Cut a half-written last line (a kill mid-write) so the next append starts on a line of its own."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        good = data[:end]
        broken = [line for line in good.splitlines() if line.strip() and not _parses(line)]
        if end < len(data) or broken:
            write_jsonl(self.path, [json.loads(line) for line in good.splitlines() if line.strip() and _parses(line)])

    def append(self, rows: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Store (id, result) pairs under this run's key; flushed and fsync'ed before returning."""
        # a round trip through JSON, so what a run reads back now is exactly what a rerun reads from the file
        batch = [json.loads(json.dumps({"key": self.key, "id": item_id, **result}, ensure_ascii=False))
                 for item_id, result in rows]
        if not batch:
            return
        with self._lock:
            append_jsonl(self.path, batch)
            for row in batch:
                self.done[row["id"]] = row


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True
