"""The eval gate: does a candidate ship? Thresholds from `eval.gate` in tuneloop.yaml.

Two kinds of check, on the gated mode (`eval.gate.mode`, unconstrained by default):
- minimums on the candidate's rates: `schema_valid`, `json_valid`, `refusal_ok`, and `field_accuracy` when it
  is a number;
- "not significantly worse than the baseline" (needs a comparison): each metric in `not_worse` by McNemar, and
  `field_accuracy: {not_worse_than: baseline}` by the bootstrap interval of its delta.
Failed requests come first: a run (candidate, and in a comparison the baseline too) with more `errors` (answers
and judge verdicts that failed after the client's retries) than `eval.gate.max_errors` (default 0) fails, since
its rates are over fewer samples than the test set; raise max_errors to accept a few on a flaky endpoint.
A check whose metric does not apply (no schema, no boundary samples) or that needs a baseline when only one run is
given is listed as skipped, never silently passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.eval.compare import metric_verdict
from tuneloop.eval.runner import EvalError
from tuneloop.files import read_json
from tuneloop.project import EvalGate


@dataclass
class GateDecision:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)


def load_gate_input(path: str | Path) -> dict[str, Any]:
    """comparison.json or summary.json, or the eval/compare folder holding one."""
    path = Path(path)
    if path.is_dir():
        for name in ("comparison.json", "summary.json"):
            if (path / name).exists():
                return read_json(path / name)
        raise EvalError(f"{path}: holds neither comparison.json nor summary.json; run `tuneloop eval run` or `eval compare` first.")
    if not path.exists():
        raise EvalError(f"{path}: no such file; pass an eval folder, a comparison folder or their JSON file.")
    return read_json(path)


def gate_eval(comparison_or_summary: dict[str, Any] | str | Path, gate: EvalGate) -> GateDecision:
    """Check a run summary or a comparison against the gate; reasons name each failed metric."""
    data = comparison_or_summary if isinstance(comparison_or_summary, dict) else load_gate_input(comparison_or_summary)
    is_comparison = data.get("kind") == "comparison"
    mode_data = (data.get("modes") or {}).get(gate.mode)
    if mode_data is None:
        raise EvalError(f"the gate checks the {gate.mode} mode, which this evaluation did not run; set eval.gate.mode "
                        "or run with eval.constrained: true.")
    summary = mode_data.get("candidate_summary") if is_comparison else mode_data
    metrics = mode_data.get("metrics", {}) if is_comparison else {}
    checks: list[dict[str, Any]] = []

    def minimum(name: str, threshold: float | None, value: float | None) -> None:
        if threshold is None:
            return
        if value is None:
            checks.append({"check": f"{name} >= {threshold}", "value": None, "result": "skipped (does not apply)"})
            return
        ok = value >= threshold
        checks.append({"check": f"{name} >= {threshold}", "value": round(value, 4), "result": "pass" if ok else "fail",
                       "reason": None if ok else f"{name} is {value:.4f}, below the minimum {threshold}"})

    summary = summary or {}
    runs = [("candidate" if is_comparison else "run", summary)]
    if is_comparison:
        runs.append(("baseline", mode_data.get("baseline_summary") or {}))
    for name, run in runs:
        failures = int(run.get("errors") or 0) + int(run.get("judge_errors") or 0)
        ok = failures <= gate.max_errors
        checks.append({"check": f"{name} errors <= {gate.max_errors}", "value": failures, "result": "pass" if ok else "fail",
                       "reason": None if ok else f"{name} has {failures} failed requests (answers {run.get('errors') or 0}, "
                                                 f"judge {run.get('judge_errors') or 0}), more than eval.gate.max_errors "
                                                 f"{gate.max_errors}; see errors.jsonl, fix the endpoint and rerun (it resumes)"})
    minimum("schema_valid", gate.schema_valid, summary.get("schema_valid"))
    minimum("json_valid", gate.json_valid, summary.get("json_valid"))
    minimum("refusal_ok", gate.refusal_ok, summary.get("refusal_ok"))
    if isinstance(gate.field_accuracy, (int, float)):
        minimum("field_accuracy", float(gate.field_accuracy), summary.get("field_accuracy"))
    not_worse = list(gate.not_worse)
    if isinstance(gate.field_accuracy, dict) and gate.field_accuracy.get("not_worse_than") == "baseline":
        not_worse.append("field_accuracy")
    for name in not_worse:
        check = f"{name} not significantly worse than baseline"
        if not is_comparison:
            checks.append({"check": check, "value": None, "result": "skipped (no baseline: gate a comparison)"})
            continue
        stats = metrics.get(name)
        if stats is None:
            checks.append({"check": check, "value": None, "result": "skipped (does not apply)"})
            continue
        worse = metric_verdict(stats, gate.alpha) == "worse"  # binary: McNemar re-tested at the gate's alpha
        evidence = (f"p = {stats['p_value']:.4g}" if "p_value" in stats
                    else f"95% CI of delta [{stats['ci_low']:.4f}, {stats['ci_high']:.4f}]")
        checks.append({"check": check, "value": round(stats["delta"], 4), "result": "fail" if worse else "pass",
                       "reason": f"{name} is significantly worse than the baseline: {stats['baseline']:.4f} → "
                                 f"{stats['candidate']:.4f} ({evidence}, alpha {gate.alpha})" if worse else None})
    reasons = [c["reason"] for c in checks if c["result"] == "fail"]
    return GateDecision(passed=not reasons, reasons=reasons, checks=checks)
