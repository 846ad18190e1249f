"""Before/after on one test set: paired statistics per metric, per slice and per field.

Results are paired by (sample id, mode); both runs must have seen the same prompts (same prompt hash), or the
comparison is refused. For each mode both runs share:
```
metrics      binary: rates, delta with bootstrap CI, McNemar exact p, verdict better | worse | no change
             field accuracy (per-sample normalized and exact): delta with bootstrap CI
slices       per meta.task_type / meta.source / meta.difficulty / sample_type value (and per expected tool where the
             test set offers tools): n, ok rate before/after, delta + CI
fields       per field path: accuracy before/after, delta + CI
```
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from tuneloop.eval.metrics import BINARY_METRICS, generic_path
from tuneloop.eval.runner import MODES, SLICE_KEYS, EvalError, load_results
from tuneloop.eval.stats import compare_binary, compare_scores
from tuneloop.files import read_json, write_json, write_text
from tuneloop.records import EvalResult

SCORE_METRICS = ("field_normalized", "field_exact")


def pair_results(baseline: list[EvalResult], candidate: list[EvalResult], mode: str) -> list[tuple[EvalResult, EvalResult]]:
    before = {r.sample_id: r for r in baseline if r.mode == mode}
    after = {r.sample_id: r for r in candidate if r.mode == mode}
    missing = sorted(set(before) ^ set(after))
    if missing:
        raise EvalError(f"the two runs did not evaluate the same samples ({len(missing)} differ, e.g. {missing[0]}); "
                        "evaluate both models on the same test file.")
    pairs = []
    for sample_id in sorted(before):
        a, b = before[sample_id], after[sample_id]
        if getattr(a, "error", None) or getattr(b, "error", None):
            continue  # a failed request has no answer to pair; it counts in its run's `errors`, which the gate checks
        if a.prompt_hash != b.prompt_hash:
            raise EvalError(f"sample {sample_id}: the prompts differ between the runs (prompt hash {a.prompt_hash} vs "
                            f"{b.prompt_hash}); use the same test file and system prompt for both.")
        pairs.append((a, b))
    return pairs


def compare_metrics(pairs: list[tuple[EvalResult, EvalResult]], alpha: float) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for metric in BINARY_METRICS:
        applicable = [(a.scores[metric], b.scores[metric]) for a, b in pairs
                      if a.scores.get(metric) is not None and b.scores.get(metric) is not None]
        if applicable:
            metrics[metric] = compare_binary([x for x, _ in applicable], [y for _, y in applicable], alpha)
    for metric in SCORE_METRICS:
        applicable = [(a.scores[metric], b.scores[metric]) for a, b in pairs if metric in a.scores and metric in b.scores]
        if applicable:
            metrics[metric] = compare_scores([x for x, _ in applicable], [y for _, y in applicable], alpha)
    if "field_normalized" in metrics:
        metrics["field_accuracy"] = metrics["field_normalized"]
    return metrics


def compare_slices(pairs: list[tuple[EvalResult, EvalResult]], alpha: float) -> dict[str, list[dict[str, Any]]]:
    by_slice: dict[str, list[dict[str, Any]]] = {}
    tooled = any("tool" in a.slices for a, _ in pairs)  # per-tool slices where the test set offers tools
    for key in (*SLICE_KEYS, "tool") if tooled else SLICE_KEYS:
        groups: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
        for a, b in pairs:
            groups[a.slices.get(key, "unset")].append((a.scores["ok"], b.scores["ok"]))
        rows = []
        for value, outcomes in sorted(groups.items()):
            stats = compare_binary([x for x, _ in outcomes], [y for _, y in outcomes], alpha)
            rows.append({"slice": key, "value": value, **{k: stats[k] for k in
                         ("n", "baseline", "candidate", "delta", "ci_low", "ci_high", "p_value", "verdict")}})
        by_slice[key] = rows
    return by_slice


def compare_fields(pairs: list[tuple[EvalResult, EvalResult]], alpha: float) -> list[dict[str, Any]]:
    per_field: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for a, b in pairs:
        fields_a, fields_b = a.scores.get("fields") or {}, b.scores.get("fields") or {}
        for path in fields_a.keys() & fields_b.keys():
            per_field[generic_path(path)].append((float(fields_a[path][1]), float(fields_b[path][1])))
    rows = []
    for path, values in sorted(per_field.items()):
        stats = compare_scores([x for x, _ in values], [y for _, y in values], alpha)
        rows.append({"field": path, **{k: stats[k] for k in ("n", "baseline", "candidate", "delta", "ci_low", "ci_high", "verdict")}})
    return rows


def compare_evals(baseline_dir: str | Path, candidate_dir: str | Path, out_dir: str | Path, alpha: float = 0.05,
                  judge: dict[str, Any] | None = None) -> dict[str, Any]:
    """Paired comparison of two eval runs; writes comparison.json and report.html into out_dir."""
    from tuneloop.eval.report import compare_report

    baseline, candidate = load_results(baseline_dir), load_results(candidate_dir)
    summaries = [_summary(baseline_dir), _summary(candidate_dir)]
    comparison: dict[str, Any] = {
        "kind": "comparison", "alpha": alpha, "baseline": str(baseline_dir), "candidate": str(candidate_dir),
        "baseline_model": summaries[0].get("model"), "candidate_model": summaries[1].get("model"), "modes": {},
    }
    pairs_by_mode = {}
    for mode in MODES:
        if not any(r.mode == mode for r in baseline) or not any(r.mode == mode for r in candidate):
            continue
        pairs = pair_results(baseline, candidate, mode)
        pairs_by_mode[mode] = pairs
        comparison["modes"][mode] = {
            "n": len(pairs), "metrics": compare_metrics(pairs, alpha), "slices": compare_slices(pairs, alpha),
            "fields": compare_fields(pairs, alpha),
            "baseline_summary": summaries[0].get("modes", {}).get(mode), "candidate_summary": summaries[1].get("modes", {}).get(mode),
        }
    if not comparison["modes"]:
        raise EvalError(f"{baseline_dir} and {candidate_dir} share no eval mode (unconstrained/constrained) to compare.")
    for mode, data in comparison["modes"].items():
        data["verdict"] = round_verdict(comparison, mode)
    if judge and "unconstrained" in pairs_by_mode:
        comparison["pairwise_judge"] = pairwise_summary(pairs_by_mode["unconstrained"], judge)
    out = Path(out_dir)
    write_json(out / "comparison.json", comparison)
    write_text(out / "report.html", compare_report(comparison, pairs_by_mode))
    return comparison


VERDICTS = ("improved", "no significant change", "worse")
# what "better" means for a round: schema-valid answers and right fields; exact match where there is no structure
VERDICT_METRICS = ("schema_valid", "field_accuracy")
FALLBACK_VERDICT_METRICS = ("exact_match",)
TOOL_VERDICT_METRICS = ("tool_name_ok", "tool_args_ast")  # where the test set has calls: the right call, by AST


def metric_verdict(stats: dict[str, Any], alpha: float) -> str:
    """better | worse | no change for one compared metric, at `alpha`.

    A binary metric is re-tested by its exact McNemar p-value; a score keeps the verdict of its bootstrap interval,
    drawn at the comparison's alpha (the caller checks they agree).
    """
    if "p_value" in stats:
        if stats["p_value"] >= alpha:
            return "no change"
        return "worse" if stats["worse"] > stats["better"] else "better"
    return stats.get("verdict") if stats.get("verdict") in ("better", "worse") else "no change"


def round_verdict(comparison: dict[str, Any], mode: str = "unconstrained", alpha: float | None = None) -> dict[str, Any]:
    """Did the candidate improve on the baseline? The paired tests decide, never raw after > before.

    ```
    worse                  any verdict metric significantly worse (McNemar p < alpha / bootstrap CI below 0)
    improved               at least one significantly better, none significantly worse
    no significant change  otherwise: the difference is within what chance gives on this many samples
    ```
    The verdict metrics are schema_valid and field_accuracy, or exact_match where those were not measured; and
    tool_name_ok and tool_args_ast where the test set expects calls.
    """
    drawn_at = comparison.get("alpha", 0.05)
    alpha = drawn_at if alpha is None else alpha
    mode_data = (comparison.get("modes") or {}).get(mode)
    if mode_data is None:
        raise EvalError(f"the comparison has no {mode} mode to judge; evaluate both runs in that mode.")
    metrics = mode_data.get("metrics", {})
    names = [m for m in VERDICT_METRICS if m in metrics] or [m for m in FALLBACK_VERDICT_METRICS if m in metrics]
    names += [m for m in TOOL_VERDICT_METRICS if m in metrics]
    if alpha != drawn_at and any("p_value" not in metrics[m] for m in names):  # a bootstrap CI is drawn at one alpha
        raise EvalError(f"the comparison was drawn at alpha {drawn_at}, not {alpha}; compare again with "
                        f"`tuneloop eval compare --alpha {alpha}`.")
    per_metric = {}
    for name in names:
        stats = metrics[name]
        evidence = (f"McNemar p = {stats['p_value']:.4g}" if "p_value" in stats
                    else f"bootstrap CI [{stats['ci_low']:.4f}, {stats['ci_high']:.4f}]" if stats.get("n") else "no data")
        per_metric[name] = {"verdict": metric_verdict(stats, alpha), "baseline": stats.get("baseline"),
                            "candidate": stats.get("candidate"), "delta": stats.get("delta"), "n": stats.get("n"),
                            "evidence": evidence}
    verdicts = {v["verdict"] for v in per_metric.values()}
    verdict = "worse" if "worse" in verdicts else "improved" if "better" in verdicts else "no significant change"
    return {"verdict": verdict, "alpha": alpha, "mode": mode, "metrics": per_metric}


def pairwise_summary(pairs: list[tuple[EvalResult, EvalResult]], judge: dict[str, Any]) -> dict[str, Any]:
    from tuneloop.eval.judge import judge_backend, judge_pairs
    from tuneloop.records import Sample

    outcomes = judge_pairs(judge_backend(judge), [(Sample.model_validate(a.sample), a.raw, b.raw) for a, b in pairs])
    counts = {name: sum(o["winner"] == name for o in outcomes) for name in ("baseline", "candidate", "tie")}
    counts["errors"] = sum(o["winner"] is None for o in outcomes)  # a failed judge call is no tie
    return {"counts": counts, "outcomes": outcomes}


def _summary(eval_dir: str | Path) -> dict[str, Any]:
    path = Path(eval_dir) / "summary.json"
    return read_json(path) if path.exists() else {}
