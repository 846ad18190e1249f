"""One cycle of the loop of rounds (`tuneloop loop`): real traffic back into data, then a round from the current model.

```
 CYCLE_STAGES    what                                                   writes                                   says no
 ─────────────────────────────────────────────────────────────────────────────────────────────────────────────────────
 traces pull, select, cluster, relabel, traffic split   (`tuneloop.loop_intake`: traffic → failures → relabeled rows)
 gate … eval after   as `tuneloop run`, with data/traffic/relabeled.jsonl beside data.sources, from the CURRENT model
 eval traffic    holdout + current model + candidate                    evals/<round>-traffic-{current,candidate,
                                                                        compare}                                 worse
 compare, merge, serve smoke   as `tuneloop run`
 canary start    export + current model + loop.canary_weight            loop/<round>/canary.json (a detached
                 (left out: --no-canary)                                `tuneloop serve --stable --canary`)
 ─────────────────────────────────────────────────────────────────────────────────────────────────────────────────────
```
The current model is the merged export of the latest round whose summary says it passed (before the round this cycle
makes), else `model` of tuneloop.yaml (`loop_rounds.current_model`). The round's own stages remember their work in
loop/<round>/state.json, as for `tuneloop run`. The frozen val/test of the rounds stay what they were; the gate
holds out any relabeled row that repeats one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tuneloop.loop import ROUND_STAGES, Inputs, LoopError, LoopOptions, Round, RoundRefused, Stage, run_round
from tuneloop.loop_intake import INTAKE_STAGES, holdout_file, relabeled_file
from tuneloop.loop_rounds import current_model
from tuneloop.project import Project


# -- options -----------------------------------------------------------------------------------------------------------
@dataclass
class CycleOptions(LoopOptions):
    """A `tuneloop loop` cycle: the round's options plus the labels to import, the canary, and stage selection."""

    labels: Path | None = None  # a filled relabel export to import before the split
    canary: bool = True
    skip: frozenset[str] = frozenset()
    only: str | None = None
    command: str = "tuneloop loop"

    def left_out(self) -> frozenset[str]:
        return super().left_out() | self.skip | (frozenset() if self.canary else frozenset({"canary start"}))

    def start_model(self, project: Project, round_dir: Path) -> str:
        return current_model(project, before=round_dir)



# -- the stages after training ---------------------------------------------------------------------------------------
def _traffic_eval_dir(round_: Round, suffix: str) -> Path:
    return round_.project.evals_dir / f"{round_.round_dir.name}-traffic-{suffix}"


def eval_traffic(round_: Round) -> dict[str, Any]:
    """The current model and the candidate on the traffic holdout, compared pairwise (McNemar, bootstrap)."""
    from tuneloop.data.io.formats import load_samples
    from tuneloop.eval.compare import compare_evals, round_verdict
    from tuneloop.eval.runner import run_eval

    holdout = holdout_file(round_.project)
    n = len(load_samples(holdout)) if holdout.exists() else 0
    if not n:
        return {"n": 0, "note": "no relabeled traffic is held out yet (too few groups for loop.holdout)"}
    gate = round_.config.eval.gate
    current, candidate, compare_dir = (_traffic_eval_dir(round_, k) for k in ("current", "candidate", "compare"))
    tool_format = round_.train_settings.tool_format
    run_eval(round_.model, holdout, current, round_.schema, round_.eval_settings, default_system=round_.system,
             tool_format=tool_format)
    run_eval(str(round_.adapter_dir), holdout, candidate, round_.schema, round_.eval_settings,
             default_system=round_.system, tool_format=tool_format)
    comparison = compare_evals(current, candidate, compare_dir, alpha=gate.alpha)
    verdict = round_verdict(comparison, gate.mode, gate.alpha)
    outputs = {"n": n, "compare_dir": str(compare_dir), "verdict": verdict, "slice": failing_slice(comparison,
                                                                                                   gate.mode)}
    if verdict["verdict"] == "worse":
        raise RoundRefused("traffic eval", [f"the candidate is significantly worse than the current model on the "
                                            f"traffic holdout ({_evidence(verdict)})"],
                           f"the candidate was not merged or served; see {compare_dir / 'report.html'}, check the "
                           f"relabeled rows in {relabeled_file(round_.project)} and rerun `tuneloop loop`.", outputs)
    return outputs


def failing_slice(comparison: dict[str, Any], mode: str = "unconstrained") -> dict[str, Any]:
    """Field accuracy before/after on the traffic holdout, and the McNemar test of fully-right answers."""
    metrics = comparison["modes"].get(mode, {}).get("metrics", {})
    field_accuracy, ok = metrics.get("field_accuracy", {}), metrics.get("ok", {})
    return {"n": ok.get("n"), "field_accuracy_before": field_accuracy.get("baseline"),
            "field_accuracy_after": field_accuracy.get("candidate"),
            "field_accuracy_ci": [field_accuracy.get("ci_low"), field_accuracy.get("ci_high")],
            "ok_before": ok.get("baseline"), "ok_after": ok.get("candidate"), "mcnemar_p": ok.get("p_value"),
            "better": ok.get("better"), "worse": ok.get("worse")}


def _evidence(verdict: dict[str, Any]) -> str:
    return ", ".join(f"{name} {v['verdict']} ({v['evidence']})" for name, v in verdict["metrics"].items())


def _eval_traffic_done(outputs: dict[str, Any]) -> str:
    if not outputs.get("n"):
        return outputs.get("note", "no holdout")
    part = outputs["slice"]
    fa = (f"field accuracy {part['field_accuracy_before']:.3f} → {part['field_accuracy_after']:.3f}, "
          if part.get("field_accuracy_before") is not None else "")
    p = f"McNemar p = {part['mcnemar_p']:.4g}" if part.get("mcnemar_p") is not None else "no McNemar"
    return f"{outputs['n']} held-out traffic rows: {fa}{p}; verdict {outputs['verdict']['verdict']}"


def canary_start(round_: Round) -> dict[str, Any]:
    """`tuneloop serve --stable <current> --canary <new export>` detached on a free loopback port."""
    from tuneloop.loop_canary import running_canaries, stop_canary, start_canary

    project = round_.project
    here = project.root / "loop" / round_.round_dir.name / "canary.json"
    replaced = []
    for earlier in running_canaries(project.root / "loop"):  # one canary per project: the newest round's
        if earlier != here:
            replaced.append(stop_canary(earlier)["url"])
            round_.say(f"[canary start] stopped the canary of {earlier.parent.name} ({replaced[-1]})")
    state = start_canary(round_.model, str(round_.export_dir), round_.config.loop.canary_weight,
                         project.root / "loop" / round_.round_dir.name, project.root, project.traces_db)
    return {"canary_file": str(project.root / "loop" / round_.round_dir.name / "canary.json"), "url": state["url"],
            "pid": state["pid"], "stable": state["stable"], "canary": state["canary"], "weight": state["weight"],
            "replaced": replaced}


def _canary_done(outputs: dict[str, Any]) -> str:
    return (f"router on {outputs['url']} (pid {outputs['pid']}): {outputs['weight']:.0%} of users to the new model; "
            "`tuneloop canary status` / `tuneloop canary stop`")


EVAL_TRAFFIC = Stage("eval traffic", lambda r: Inputs([p for p in (holdout_file(r.project),) if p.exists()]
                                                     + [r.adapter_dir],
                                                     [r.model, r.eval_settings.model_dump(mode="json"), r.system,
                                                      r.config.eval.gate.model_dump(mode="json")]),
                     eval_traffic, may_skip=True, done_line=_eval_traffic_done)
CANARY_START = Stage("canary start", lambda r: Inputs([r.export_dir], [r.model, r.config.loop.canary_weight]),
                     canary_start, may_skip=True, done_line=_canary_done)


def _cycle_stages() -> list[Stage]:
    """The intake, then every stage of the round (whatever `tuneloop run` has: alignment too) with the traffic eval
    before the comparison's gate, then the canary."""
    stages = list(INTAKE_STAGES)
    for stage in ROUND_STAGES:
        if stage.name == "compare":
            stages.append(EVAL_TRAFFIC)
        stages.append(stage)
    return [*stages, CANARY_START]


CYCLE_STAGES: list[Stage] = _cycle_stages()
# stages that nothing after them reads: `--only` leaves them out instead of asking that they ran
UNREAD = frozenset({*(s.name for s in INTAKE_STAGES if s.may_skip), EVAL_TRAFFIC.name})
STAGE_NAMES = tuple(s.name for s in CYCLE_STAGES)


class _NoReuse:
    """The memory of the one stage `--only` names: never fresh, so it runs; saved as usual."""

    def __init__(self, inner: Any):
        self.inner = inner

    def fresh(self, name: str, key: str) -> dict[str, Any] | None:
        return None

    def save(self, record: Any) -> None:
        self.inner.save(record)


def stages_for(options: CycleOptions) -> list[Stage]:
    """The cycle's stages; for `--only NAME`: the earlier ones reused (each must have run with these inputs) or,
    where a user may leave them out, left out; NAME run (always); the later ones left out."""
    unknown = [n for n in [*options.skip, *([options.only] if options.only else [])] if n not in STAGE_NAMES]
    if unknown:
        raise LoopError(f"no stage named {unknown[0]!r}; the stages are: {', '.join(STAGE_NAMES)}.")
    fixed = [s.name for s in CYCLE_STAGES if s.name in options.skip and not s.may_skip]
    if fixed:  # said before any model loads (run_stages says it too)
        raise LoopError(f"stage '{fixed[0]}' cannot be left out: the stages after it read what it makes; these can: "
                        + ", ".join(s.name for s in CYCLE_STAGES if s.may_skip) + ".")
    if options.only is None:
        return list(CYCLE_STAGES)
    index = STAGE_NAMES.index(options.only)

    def needs(stage: Stage) -> Any:
        def refuse(_: Round) -> dict[str, Any]:
            raise LoopError(f"--only {options.only} reads what '{stage.name}' makes, and that has not run with "
                            f"these inputs: run `tuneloop loop` (or `tuneloop loop --only '{stage.name}'`) first.")
        return refuse

    # an earlier stage nothing reads is left out; the others must be reusable (a round stage the project's config
    # leaves out, such as alignment without align.method, the round leaves out as always)
    earlier = [replace(s, run=needs(s)) for s in CYCLE_STAGES[:index] if s.name not in UNREAD]
    chosen = CYCLE_STAGES[index]
    return [*earlier, replace(chosen, memory=lambda r, m=chosen.memory: _NoReuse(m(r)))]


def run_cycle(project: Project, options: CycleOptions | None = None, say: Any = print) -> dict[str, Any]:
    """One `tuneloop loop` cycle on `project`; returns the round's summary (raises RoundRefused / LoopError)."""
    options = options or CycleOptions()
    stages = stages_for(options)
    if options.only is not None:
        options = replace(options, skip=frozenset(), force=False)
    latest = project.latest_round()
    before = _summary_of(project, latest)
    summary = run_round(project, options, say=say, stages=stages)
    partial = options.only is not None or bool(options.left_out() & set(STAGE_NAMES))
    if partial and before and before.get("round") == summary["round"]:
        summary = _keep_what_was_left_out(project, before, summary)
    return summary


def _summary_of(project: Project, round_dir: Path | None) -> dict[str, Any] | None:
    from tuneloop.files import read_json

    path = project.root / "loop" / round_dir.name / "summary.json" if round_dir else None
    return read_json(path) if path and path.exists() else None


def _keep_what_was_left_out(project: Project, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """A passed run that left stages out (`--only`, `--skip`) keeps what the round's earlier run recorded of them:
    the page (and the choice of the next cycle's current model) still sees the round's merge, canary and reports."""
    from tuneloop.files import write_json, write_text
    from tuneloop.loop_summary import summary_html

    ran = {s["name"] for s in after["stages"]}
    earlier = {s["name"]: {**s, "earlier_run": True} for s in before.get("stages", []) if s["name"] not in ran}
    merged = dict(after)
    merged["stages"] = [next((s for s in after["stages"] if s["name"] == name), None) or earlier.get(name)
                        for name in STAGE_NAMES if name in ran or name in earlier]
    for key in ("merge", "serve"):
        merged[key] = after.get(key) or before.get(key, {})
    if not after.get("verdict"):  # the comparison was left out: its verdict and gate are the earlier run's
        for key in ("verdict", "improved", "eval_gate"):
            merged[key] = before.get(key, after.get(key))
    if all(v["before"] is None and v["after"] is None for v in after.get("headline", {}).values()):
        merged["headline"] = before.get("headline", after.get("headline"))
    merged["traffic"] = {**(before.get("traffic") or {}), **(after.get("traffic") or {})}
    merged["reports"] = {**before.get("reports", {}), **after.get("reports", {})}
    folder = project.root / "loop" / after["round"]
    write_json(folder / "summary.json", merged)
    write_text(folder / "summary.html", summary_html(merged))
    return merged


__all__ = ["CYCLE_STAGES", "CycleOptions", "STAGE_NAMES", "failing_slice", "run_cycle", "stages_for"]
