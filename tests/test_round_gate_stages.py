"""The loop's stage machinery on toy stages: keys, reuse, refusal, failure, leaving out, memory (no model, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tuneloop.loop_stage import Inputs, LoopError, RoundRefused, RoundState, Stage, StageRecord, run_stages


@dataclass
class Toy:
    """A context as `run_stages` fills it in, with a state file of its own."""

    folder: Path
    records: list[StageRecord] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)

    @property
    def state(self) -> RoundState:
        return RoundState(self.folder / "state.json")


def toy_stages(folder: Path, refuse: bool = False, broken: Exception | None = None) -> list[Stage]:
    source = folder / "source.txt"

    def make(context: Toy) -> dict[str, Any]:
        context.ran.append("make")
        out = folder / "made.txt"
        out.write_text(source.read_text().upper())
        return {"made_file": str(out)}

    def check(context: Toy) -> dict[str, Any]:
        context.ran.append("check")
        if broken is not None:
            raise broken
        if refuse:
            raise RoundRefused("toy check", ["too loud"], "lower your voice", {"loudness": 11})
        return {"passed": True, "length": len(Path(context.outputs["make"]["made_file"]).read_text())}

    def announce(context: Toy) -> dict[str, Any]:
        context.ran.append("announce")
        return {}

    return [
        Stage("make", lambda c: Inputs([source], {"case": "upper"}), make),
        Stage("check", lambda c: Inputs([Path(c.outputs["make"]["made_file"])]), check),
        Stage("announce", lambda c: Inputs([]), announce, may_skip=True),
    ]


def run(folder: Path, stages: list[Stage], **kwargs: Any) -> tuple[Toy, list[str]]:
    said: list[str] = []
    context = Toy(folder)
    run_stages(stages, context, said.append, **kwargs)
    return context, said


def test_an_unchanged_stage_is_reused_and_a_changed_input_runs_what_depends_on_it(tmp_path):
    (tmp_path / "source.txt").write_text("hello")
    first, _ = run(tmp_path, toy_stages(tmp_path))
    assert first.ran == ["make", "check", "announce"]
    assert [r.status for r in first.records] == ["done"] * 3

    again, said = run(tmp_path, toy_stages(tmp_path))
    assert again.ran == [] and [r.status for r in again.records] == ["skipped"] * 3
    assert "[make] inputs unchanged — skipped" in said
    assert again.outputs["check"] == {"passed": True, "length": 5}  # reused outputs reach later stages

    (tmp_path / "source.txt").write_text("hello world")
    changed, _ = run(tmp_path, toy_stages(tmp_path))
    assert changed.ran == ["make", "check"]  # announce's inputs did not change
    assert changed.outputs["check"]["length"] == 11

    forced, _ = run(tmp_path, toy_stages(tmp_path), force=True)
    assert forced.ran == ["make", "check", "announce"]


def test_a_stage_whose_output_file_is_gone_runs_again(tmp_path):
    (tmp_path / "source.txt").write_text("hello")
    run(tmp_path, toy_stages(tmp_path))
    (tmp_path / "made.txt").unlink()
    again, _ = run(tmp_path, toy_stages(tmp_path))
    assert again.ran[0] == "make"


def test_a_refusal_stops_the_list_is_recorded_with_its_reasons_and_is_not_remembered(tmp_path):
    (tmp_path / "source.txt").write_text("hello")
    context = Toy(tmp_path)
    with pytest.raises(RoundRefused, match="toy check failed: too loud"):
        run_stages(toy_stages(tmp_path, refuse=True), context, lambda line: None)
    assert context.ran == ["make", "check"]  # nothing after the check ran
    assert context.records[-1].status == "refused"
    assert context.records[-1].outputs == {"loudness": 11, "reasons": ["too loud"]}
    assert set(RoundState(tmp_path / "state.json").stages) == {"make"}  # a rerun checks again

    again, _ = run(tmp_path, toy_stages(tmp_path))
    assert again.ran == ["check", "announce"]


def test_an_error_that_explains_itself_names_its_stage_and_a_defect_keeps_its_type(tmp_path):
    (tmp_path / "source.txt").write_text("hello")
    with pytest.raises(LoopError, match="stage 'check' failed: .*nowhere"):
        run(tmp_path, toy_stages(tmp_path, broken=FileNotFoundError(2, "No such file", "nowhere")))
    with pytest.raises(KeyError):
        run(tmp_path, toy_stages(tmp_path, broken=KeyError("adapter_dir")))
    assert "check" not in RoundState(tmp_path / "state.json").stages


def test_only_a_stage_that_says_so_may_be_left_out(tmp_path):
    (tmp_path / "source.txt").write_text("hello")
    context, _ = run(tmp_path, toy_stages(tmp_path), left_out=frozenset({"announce"}))
    assert context.ran == ["make", "check"] and "announce" not in {r.name for r in context.records}
    with pytest.raises(LoopError, match="stage 'make' cannot be left out"):
        run(tmp_path, toy_stages(tmp_path), left_out=frozenset({"make"}))


def test_the_round_is_the_documented_list_of_stages():
    from tuneloop.loop import ROUND_STAGES, LoopOptions

    assert [s.name for s in ROUND_STAGES] == ["gate", "baseline eval", "train", "best-of-n", "dpo", "eval after",
                                              "compare", "merge", "serve smoke"]
    # alignment is left out unless align.method asks for it; serving by the user (--no-serve)
    assert [s.name for s in ROUND_STAGES if s.may_skip] == ["best-of-n", "dpo", "serve smoke"]
    assert LoopOptions(serve=False).left_out() == {"serve smoke"}
