"""The machinery of a loop made of stages: a `Stage` (name, inputs → key, run → outputs, whether it may be left
out), its memory (`RoundState`: a state.json of finished stages), and `run_stages`, the one loop that handles keys,
reuse, refusal, failure and timing. What the stages are and where they write is `tuneloop.loop`'s business.

```
for each stage:  inputs ──sha256──▶ key ──memory has it, outputs still there?──▶ yes: "skipped", reuse its outputs
                                                                               └─▶ no: run ─▶ outputs ─▶ "done", remembered
                                                                                         ├─▶ RoundRefused ─▶ "refused", stop
                                                                                         └─▶ error ──────▶ "failed", stop
```
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from tuneloop.files import file_digest, read_json, tree_digest, write_json
from tuneloop.records import content_hash


@dataclass
class StageRecord:
    name: str
    key: str
    status: str  # done | skipped | failed (it broke) | refused (its check said no)
    seconds: float
    outputs: dict[str, Any] = field(default_factory=dict)


class LoopError(RuntimeError):
    """A stage that failed, naming the stage and what to do."""


class RoundRefused(LoopError):
    """A check of the round said no: what failed (`reasons`) and what to do (`advice`); nothing after it ran."""

    def __init__(self, stage: str, reasons: list[str], advice: str, outputs: dict[str, Any] | None = None):
        super().__init__(f"{stage} failed: " + "; ".join(reasons))
        self.stage = stage
        self.reasons = reasons
        self.advice = advice
        self.outputs = outputs or {}
        self.summary_file: Path | None = None


class Inputs(NamedTuple):
    """What a stage's key is made of: its input files/folders and its settings."""

    files: list[Path]
    settings: Any = None


class Memory(Protocol):
    """Where a stage remembers finished work: the outputs to reuse for an unchanged key, or None."""

    def fresh(self, name: str, key: str) -> dict[str, Any] | None: ...

    def save(self, record: StageRecord) -> None: ...


@dataclass(frozen=True)
class Stage:
    """One step of a round: `inputs` → key, `run` → outputs (or RoundRefused when its check says no)."""

    name: str
    inputs: Callable[[Any], Inputs]  # of the round (or other context) the stages share
    run: Callable[[Any], dict[str, Any]]
    may_skip: bool = False  # a user may leave it out (nothing after it reads its outputs)
    memory: Callable[[Any], Memory] = lambda context: context.state
    done_line: Callable[[dict[str, Any]], str] | None = None  # what "[name] …" says when it ran (default: its time)
    skip_line: Callable[[dict[str, Any]], str] | None = None  # … and when it was reused


class RoundState:
    """`loop/<round>/state.json`: the key and outputs of each finished stage."""

    def __init__(self, path: Path):
        self.path = path
        self.stages: dict[str, dict[str, Any]] = read_json(path)["stages"] if path.exists() else {}

    def fresh(self, name: str, key: str) -> dict[str, Any] | None:
        entry = self.stages.get(name)
        if not entry or entry.get("key") != key or entry.get("status") != "done":
            return None
        outputs = entry.get("outputs", {})
        if outputs.get("passed") is False:  # a check that said no is never a result to reuse
            return None
        paths = [Path(v) for k, v in outputs.items() if k.endswith(("_dir", "_file")) and isinstance(v, str)]
        return outputs if all(p.exists() for p in paths) else None

    def save(self, record: StageRecord) -> None:
        self.stages[record.name] = {"key": record.key, "status": record.status, "seconds": record.seconds,
                                    "outputs": record.outputs, "finished_at": time.time()}
        write_json(self.path, {"stages": self.stages})


def files_key(*paths: Path, settings: Any = None) -> str:
    """A stage key: digests of its input files/folders plus its settings."""
    digests = [tree_digest(p) if p.is_dir() else file_digest(p) for p in paths]
    return content_hash(digests, settings, length=32)



class Context(Protocol):
    """What the stages share and `run_stages` fills in: every record, the key of every stage reached, the outputs of
    every stage done or reused."""

    records: list[StageRecord]
    keys: dict[str, str]
    outputs: dict[str, dict[str, Any]]


def run_stages(stages: Sequence[Stage], context: Context, say: Callable[[str], None], force: bool = False,
               left_out: frozenset[str] = frozenset()) -> None:
    """Run each stage in order, reusing what is unchanged (unless `force`) and leaving out `left_out`."""
    for name in left_out:
        stage = next((s for s in stages if s.name == name), None)
        if stage is not None and not stage.may_skip:
            raise LoopError(f"stage '{name}' cannot be left out: the stages after it read what it makes.")
    for stage in stages:
        if stage.name in left_out:
            continue
        inputs = stage.inputs(context)
        key = context.keys[stage.name] = files_key(*inputs.files, settings=inputs.settings)
        memory = stage.memory(context)
        cached = None if force else memory.fresh(stage.name, key)
        if cached is not None:
            say(f"[{stage.name}] " + (stage.skip_line(cached) if stage.skip_line else "inputs unchanged — skipped"))
            context.records.append(StageRecord(stage.name, key, "skipped", 0.0, cached))
            context.outputs[stage.name] = cached
            continue
        say(f"[{stage.name}] running")
        started = time.time()
        try:
            outputs = stage.run(context)
        except RoundRefused as refusal:  # not saved: a rerun checks again
            context.records.append(StageRecord(stage.name, key, "refused", time.time() - started,
                                              {**refusal.outputs, "reasons": refusal.reasons}))
            say(f"[{stage.name}] refused: " + "; ".join(refusal.reasons))
            raise
        except Exception as err:
            context.records.append(StageRecord(stage.name, key, "failed", time.time() - started, {"error": str(err)}))
            if not _explains_itself(err):
                raise  # a defect keeps its own type and traceback: the CLI prints it and asks for a report
            raise LoopError(f"stage '{stage.name}' failed: {err}") from err
        record = StageRecord(stage.name, key, "done", time.time() - started, outputs)
        memory.save(record)
        context.records.append(record)
        context.outputs[stage.name] = outputs
        say(f"[{stage.name}] " + (stage.done_line(outputs) if stage.done_line else f"done in {record.seconds:.0f}s"))


def _explains_itself(err: Exception) -> bool:
    """tuneloop's own errors say what to do, and an OSError names its file or host: those become one-line stage
    failures. Anything else is a defect, shown with its traceback (the CLI's rule for every command)."""
    return type(err).__module__.split(".")[0] == "tuneloop" or isinstance(err, OSError)
