"""One round of the loop over a project directory (`tuneloop run`): a plain list of stages, run by one small loop.

```
 ROUND_STAGES   key = sha256 of (input files, settings)            outputs later stages read   a check that says no
 ─────────────────────────────────────────────────────────────────────────────────────────────────────────────────
 gate           data.sources + data.*                              round_dir                   data gate
 baseline eval  test.jsonl + model + eval.* + system               eval_dir
 train          train.jsonl + val.jsonl + model + train.* + system run_dir, adapter_dir
 best-of-n      train.jsonl + val.jsonl + SFT adapter + align.*    best_of_n_dir (pairs; val/)  (only align.method: dpo)
 dpo            pairs + val pairs + SFT run + train.*, align.*     run_dir, adapter_dir         (only align.method: dpo)
 eval after     test.jsonl + adapter (DPO's when it ran) + eval.*  eval_dir
 compare        baseline + candidate results.jsonl + eval.gate     compare_dir, verdict        eval gate
 merge          adapter                                            export_dir, report          merge gate
 serve smoke    export + system + schema   (left out: --no-serve)  answer                      serve smoke
 ─────────────────────────────────────────────────────────────────────────────────────────────────────────────────
 then the summary (loop/<round>/summary.json + summary.html), whether the round passed or stopped
```

Each stage is a `Stage` (`tuneloop.loop_stage`): a name, its inputs (files and settings, hashed into its key), the
function that runs it on the `Round`, and whether a user may leave it out. `run_stages` is the one place that knows
about keys, reuse, refusal, timing and memory:

- a stage whose key and outputs are unchanged is reused (`skipped`); `--force` runs it anyway;
- an interrupted or failed stage is not recorded, so a rerun runs it again (training resumes from its checkpoint);
- a check that says no raises `RoundRefused`: nothing after it runs, it is not recorded as done, a rerun checks again;
- a stage that breaks raises `LoopError` (or, for a defect, its own exception with its traceback);
- memory is `loop/<round>/state.json`, except for the gate, whose memory is the round it made (`loop_key` in the
  round's manifest): the round folder, and so the state file, exist only once the gate has run.

Either way the summary page is written with the reasons. The loop of several rounds adds stages by putting them in
the list, not by writing closures:
`run_round(project, options, stages=[Stage("traces pull", ...), Stage("select", ...), Stage("cluster", ...),
Stage("relabel", ...), *ROUND_STAGES, Stage("canary start", ...)])`; a stage that runs before the gate (no round yet)
keeps its memory elsewhere, e.g. `memory=lambda r: RoundState(r.project.root / "loop" / "state.json")`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from tuneloop.files import read_json, write_json, write_text
from tuneloop.loop_export import merge, serve_smoke
from tuneloop.loop_stage import (Inputs, LoopError, RoundRefused, RoundState, Stage, StageRecord, files_key,
                                 run_stages)
from tuneloop.project import Project

__all__ = ["ROUND_STAGES", "Inputs", "LoopError", "LoopOptions", "Round", "RoundRefused", "RoundState", "Stage",
           "StageRecord", "files_key", "run_round", "run_stages"]


@dataclass
class LoopOptions:
    """How far and how hard one round goes."""

    quick: bool = False  # CI's shortened variant: fewer samples and steps
    max_steps: int | None = None
    eval_samples: int | None = None
    serve: bool = True
    force: bool = False  # run every stage even when its inputs are unchanged
    command: str = "tuneloop run"  # what a refusal's advice tells the user to rerun

    def left_out(self) -> frozenset[str]:
        """The stages this round leaves out (only stages marked `may_skip` can be)."""
        return frozenset() if self.serve else frozenset({"serve smoke"})

    def start_model(self, project: Project, round_dir: Path) -> str:
        """The model this round evaluates as its baseline and trains from (the loop of rounds: the current one)."""
        return project.config.model

    def extra_sources(self, project: Project) -> list[Path]:
        """Files the gate reads beside `data.sources`: relabeled traffic once `tuneloop loop` accepted some, so a
        plain `tuneloop run` after a cycle keeps those rows too."""
        return [project.relabeled_file] if project.relabeled_file.exists() else []


class RoundManifests:
    """The gate's memory: the latest round, when its manifest says it was made from the same key."""

    def __init__(self, project: Project):
        self.project = project

    def fresh(self, name: str, key: str) -> dict[str, Any] | None:
        latest = self.project.latest_round()
        if latest is None or read_json(latest / "manifest.json").get("loop_key") != key:
            return None
        return {"round_dir": str(latest)}

    def save(self, record: StageRecord) -> None:
        manifest_file = Path(record.outputs["round_dir"]) / "manifest.json"
        write_json(manifest_file, {**read_json(manifest_file), "loop_key": record.key})


@dataclass
class Round:
    """One round on a project: its settings, and what its stages have produced so far (records, keys, outputs).

    The summary is drawn from it whether the round passed or stopped.
    """

    project: Project
    options: LoopOptions = field(default_factory=LoopOptions)
    say: Callable[[str], None] = print
    records: list[StageRecord] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)  # of every stage reached
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # of every stage done or reused
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        config, options = self.project.config, self.options
        self.config = config
        self.schema = self.project.schema()
        self.system = config.task.system
        self.eval_settings = config.eval.model_copy()
        if options.eval_samples or options.quick:
            self.eval_settings.max_samples = options.eval_samples or 12
        self.train_settings = config.train.model_copy()
        if options.max_steps or options.quick:
            self.train_settings.max_steps = options.max_steps or 6
        self.align_settings = config.align.model_copy()
        if options.max_steps or options.quick:
            self.align_settings.max_steps = options.max_steps or 6
        if options.quick:
            self.align_settings.n = min(self.align_settings.n, 2)  # CI's shortened variant: two candidates a prompt

    def left_out(self) -> frozenset[str]:
        """The stages this round leaves out: the user's (--no-serve) and alignment unless align.method asks for it."""
        unconfigured = {"best-of-n", "dpo"} if self.config.align.method != "dpo" else set()
        return self.options.left_out() | unconfigured

    def record(self, name: str) -> StageRecord | None:
        return next((r for r in self.records if r.name == name), None)

    @property
    def model(self) -> str:
        """The model the round starts from: its baseline, and the base its training starts from."""
        return self.options.start_model(self.project, self.round_dir)

    # where each stage writes: derived from the round (and, for the run, from the train key)
    @property
    def round_dir(self) -> Path | None:
        gate = self.record("gate")
        return Path(gate.outputs["round_dir"]) if gate and "round_dir" in gate.outputs else None

    @cached_property
    def state(self) -> RoundState:
        if self.round_dir is None:
            raise LoopError("a stage that runs before the gate needs its own memory (there is no round yet)")
        return RoundState(self.project.root / "loop" / self.round_dir.name / "state.json")

    def _in_round(self, folder: Path, suffix: str) -> Path:
        return folder / f"{self.round_dir.name}-{suffix}"

    @property
    def baseline_dir(self) -> Path:
        return self._in_round(self.project.evals_dir, "baseline")

    @property
    def candidate_dir(self) -> Path:
        return self._in_round(self.project.evals_dir, "candidate")

    @property
    def compare_dir(self) -> Path:
        return self._in_round(self.project.evals_dir, "compare")

    @property
    def run_dir(self) -> Path:
        # one folder per data + settings: a rerun with the same key resumes it, a changed setting starts a new run
        return self._in_round(self.project.runs_dir, f"sft-{self.keys['train'][:8]}")

    @property
    def export_dir(self) -> Path:
        return self.project.exports_dir / f"{self.config.task.name}-{self.round_dir.name}"

    @property
    def adapter_dir(self) -> Path:
        """The model this round evaluates, merges and serves: DPO's adapter when alignment ran, else SFT's."""
        return Path((self.outputs.get("dpo") or self.outputs["train"])["adapter_dir"])

    @property
    def trained_run_dir(self) -> Path:
        """The run folder of `adapter_dir` (what merge reads)."""
        return Path((self.outputs.get("dpo") or self.outputs["train"])["run_dir"])

    @property
    def best_of_n_dir(self) -> Path:
        return self.project.root / "loop" / self.round_dir.name / "best-of-n"

    @property
    def dpo_run_dir(self) -> Path:
        return self._in_round(self.project.runs_dir, f"dpo-{self.keys['dpo'][:8]}")

    def _result(self, name: str, refused_too: bool = False) -> dict[str, Any]:
        """A stage's outputs for the summary: when it finished, or (for a check's verdict) when it said no."""
        record = self.record(name)
        statuses = ("done", "skipped", "refused") if refused_too else ("done", "skipped")
        return record.outputs if record and record.status in statuses else {}

    def write_summary(self, outcome: dict[str, Any]) -> Path | None:
        if self.round_dir is None:
            return None
        from tuneloop.loop_summary import summarize, summary_html

        reached = {r.name for r in self.records}
        self.summary = summarize(
            self.project, outcome, self.records, self.round_dir,
            run_dir=self.run_dir if "train" in reached else None,
            baseline_dir=self.baseline_dir if "baseline eval" in reached else None,
            candidate_dir=self.candidate_dir if "eval after" in reached else None,
            compared=self._result("compare", refused_too=True), merged=self._result("merge"),
            served=self._result("serve smoke"))
        loop_dir = self.project.root / "loop" / self.round_dir.name
        write_json(loop_dir / "summary.json", self.summary)
        return write_text(loop_dir / "summary.html", summary_html(self.summary))


def run_round(project: Project, options: LoopOptions | None = None, say: Callable[[str], None] = print,
              stages: Sequence[Stage] | None = None) -> dict[str, Any]:
    """Run `stages` (default: ROUND_STAGES, gate → eval → train → eval → compare → merge → serve) on `project`;
    return the summary.

    Raises `RoundRefused` when a check says no and `LoopError` when a stage breaks; the summary page is written first.
    """
    _quiet_library_progress()
    round_ = Round(project, options or LoopOptions(), say)
    try:
        run_stages(ROUND_STAGES if stages is None else stages, round_, say, force=round_.options.force,
                   left_out=round_.left_out())
    except Exception as err:
        refused = err if isinstance(err, RoundRefused) else None
        outcome = ({"status": "refused", "stage": refused.stage, "reasons": refused.reasons, "advice": refused.advice}
                   if refused else {"status": "failed", "reasons": [f"{type(err).__name__}: {err}"], "advice": None})
        try:
            summary_file = round_.write_summary(outcome)
        except Exception as summary_error:  # the stage's own error is the one to report
            err.add_note(f"the round's summary could not be written: {summary_error!r}")
            raise err from err.__cause__
        if refused and summary_file:
            refused.summary_file = summary_file
        raise
    round_.write_summary({"status": "passed", "reasons": [], "advice": None})
    return round_.summary


# -- the stages of one round, in order ------------------------------------------------------------------------------

def gate(round_: Round) -> dict[str, Any]:
    """The data gate on the project's sources: a new round folder, refused when a check fails."""
    from tuneloop.data.gate.round import run_gate

    result = run_gate(round_.project, progress=True, extra_sources=round_.options.extra_sources(round_.project))
    round_dir = Path(result.round_dir)
    if not result.passed:
        raise RoundRefused("data gate", list(result.failures),
                           f"open {round_dir / 'report.html'}, fix or remove the source rows it names (or change the "
                           f"data.* thresholds in tuneloop.yaml if they are wrong), then rerun `{round_.options.command}`.",
                           {"round_dir": str(round_dir)})
    return {"round_dir": str(round_dir), "counts": dict(result.counts)}


def _gate_inputs(round_: Round) -> Inputs:
    project = round_.project
    return Inputs([project.path(s.path) for s in round_.config.data.sources] + round_.options.extra_sources(project),
                  round_.config.data.model_dump(mode="json"))


def _gate_done(outputs: dict[str, Any]) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in outputs["counts"].items() if v)
    return f"{counts} → {Path(outputs['round_dir']).name}"


def baseline_eval(round_: Round) -> dict[str, Any]:
    """The model the round starts from on the round's unseen test set."""
    from tuneloop.eval.runner import run_eval

    return {"eval_dir": str(round_.baseline_dir), "summary": run_eval(
        round_.model, round_.round_dir / "test.jsonl", round_.baseline_dir, round_.schema,
        round_.eval_settings, default_system=round_.system, tool_format=round_.train_settings.tool_format)}


def train(round_: Round) -> dict[str, Any]:
    """SFT on the round's train/val, resuming its run folder."""
    from tuneloop.train.sft import train_sft

    result = train_sft(round_.round_dir / "train.jsonl", round_.round_dir / "val.jsonl", round_.run_dir,
                       model=round_.model, settings=round_.train_settings, default_system=round_.system,
                       resume=True, progress=True)
    return {"run_dir": str(round_.run_dir), "adapter_dir": str(result.model_dir),
            "best_val_loss": result.run.get("best_val_loss")}


def best_of_n(round_: Round) -> dict[str, Any]:
    """Best-of-N with the SFT model on the round's train prompts: each failing candidate becomes a DPO pair against
    the reference answer (train/best_of_n.py); rows that carry `rejected` already come along as they are."""
    from tuneloop.data.io.formats import load_samples
    from tuneloop.train.best_of_n import run_best_of_n
    from tuneloop.train.rewards import configured_weights

    align = round_.align_settings
    samples = load_samples(round_.round_dir / "train.jsonl")
    val_file = round_.round_dir / "val.jsonl"
    val_samples = load_samples(val_file) if val_file.exists() else []
    if round_.options.quick:
        samples, val_samples = samples[:16], val_samples[:8]

    def sample(rows: list[Any], out: Path) -> tuple[Any, dict[str, Path]]:
        return run_best_of_n(rows, str(round_.outputs["train"]["adapter_dir"]), out, configured_weights(align),
                             round_.schema, n=align.n, temperature=align.sample_temperature,
                             max_new_tokens=align.sample_max_new_tokens, default_system=round_.system,
                             seed=round_.train_settings.seed)

    result, paths = sample(samples, round_.best_of_n_dir)
    # the val prompts too: DPO's early stopping and best checkpoint are then judged on the SFT model's own
    # failures on unseen prompts, the kind of pair it trains on (the data's negatives alone are another kind)
    val = sample(val_samples, round_.best_of_n_dir / "val") if val_samples else None
    return {"best_of_n_dir": str(round_.best_of_n_dir), "samples_file": str(paths["samples"]),
            "counts": result.counts(), "val_samples_file": str(val[1]["samples"]) if val else None,
            "val_counts": val[0].counts() if val else None}


def dpo(round_: Round) -> dict[str, Any]:
    """DPO from the SFT run on the best-of-N pairs; early stopping on the best-of-N pairs of the val prompts.
    With no pair at all (no candidate failed), the SFT model goes on unchanged and the stage says so."""
    from tuneloop.train.dpo import train_dpo

    train_outputs, counts = round_.outputs["train"], round_.outputs["best-of-n"]["counts"]
    if not counts.get("dpo_pairs"):
        return {**train_outputs, "pairs": 0, "note": "no best-of-N candidate failed: nothing to prefer against, "
                                                     "the SFT model goes on"}
    result = train_dpo(round_.outputs["best-of-n"]["samples_file"],
                       round_.outputs["best-of-n"].get("val_samples_file") or round_.round_dir / "val.jsonl",
                       round_.dpo_run_dir, model=train_outputs["run_dir"], settings=round_.train_settings,
                       align=round_.align_settings, default_system=round_.system, resume=True, progress=True)
    return {"run_dir": str(round_.dpo_run_dir), "adapter_dir": str(result.model_dir), "pairs": result.run["pairs"],
            "final": result.run.get("final", {})}


def eval_after(round_: Round) -> dict[str, Any]:
    """The trained model on the same unseen test set."""
    from tuneloop.eval.runner import run_eval

    return {"eval_dir": str(round_.candidate_dir), "summary": run_eval(
        str(round_.adapter_dir), round_.round_dir / "test.jsonl", round_.candidate_dir, round_.schema,
        round_.eval_settings, default_system=round_.system, tool_format=round_.train_settings.tool_format)}


def compare(round_: Round) -> dict[str, Any]:
    """Paired comparison and the eval gate: a candidate that fails it goes no further."""
    from tuneloop.eval.compare import compare_evals, round_verdict
    from tuneloop.eval.gate import gate_eval

    settings, compare_dir = round_.config.eval.gate, round_.compare_dir
    comparison = compare_evals(round_.baseline_dir, round_.candidate_dir, compare_dir, alpha=settings.alpha)
    decision = gate_eval(comparison, settings)
    outputs = {"compare_dir": str(compare_dir), "passed": decision.passed, "reasons": list(decision.reasons),
               "verdict": round_verdict(comparison, settings.mode, settings.alpha)}
    if not decision.passed:
        raise RoundRefused("eval gate", list(decision.reasons),
                           f"the candidate was not merged or served; see {compare_dir / 'report.html'}, improve "
                           f"the data or the train.* settings and rerun `{round_.options.command}` (or change eval.gate in "
                           "tuneloop.yaml if its thresholds are wrong).", outputs)
    return outputs


def _eval_settings(round_: Round) -> Any:
    return round_.eval_settings.model_dump(mode="json")


ROUND_STAGES: list[Stage] = [
    Stage("gate", _gate_inputs, gate, memory=lambda r: RoundManifests(r.project), done_line=_gate_done,
          skip_line=lambda outputs: f"sources unchanged — reusing {Path(outputs['round_dir']).name}"),
    Stage("baseline eval", lambda r: Inputs([r.round_dir / "test.jsonl"], [r.model, _eval_settings(r), r.system]),
          baseline_eval),
    Stage("train", lambda r: Inputs([r.round_dir / "train.jsonl", r.round_dir / "val.jsonl"],
                                    [r.model, r.train_settings.model_dump(mode="json"), r.system]), train),
    Stage("best-of-n", lambda r: Inputs([r.round_dir / "train.jsonl", r.round_dir / "val.jsonl",
                                         Path(r.outputs["train"]["adapter_dir"])],
                                        [r.align_settings.model_dump(mode="json"), r.schema, r.system,
                                         r.options.quick]), best_of_n, may_skip=True,
          done_line=lambda o: f"{o['counts']['dpo_pairs']} pairs from {o['counts']['samples']} prompts"),
    Stage("dpo", lambda r: Inputs([Path(r.outputs["best-of-n"]["samples_file"]),
                                   Path(r.outputs["best-of-n"].get("val_samples_file") or r.round_dir / "val.jsonl"),
                                   Path(r.outputs["train"]["adapter_dir"])],
                                  [r.train_settings.model_dump(mode="json"), r.align_settings.model_dump(mode="json"),
                                   r.system]), dpo, may_skip=True),
    Stage("eval after", lambda r: Inputs([r.round_dir / "test.jsonl", r.adapter_dir], [_eval_settings(r), r.system]),
          eval_after),
    Stage("compare", lambda r: Inputs([r.baseline_dir / "results.jsonl", r.candidate_dir / "results.jsonl"],
                                      r.config.eval.gate.model_dump(mode="json")), compare),
    Stage("merge", lambda r: Inputs([r.adapter_dir]), merge),
    Stage("serve smoke", lambda r: Inputs([r.export_dir], [r.system, r.schema]), serve_smoke, may_skip=True),
]


def _quiet_library_progress() -> None:
    """The loop shows its own progress per stage; weight-loading bars of each model load would drown it."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
