"""HTML reports of an eval run and of a before/after comparison (self-contained, plots inline)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tuneloop.eval.bad_cases import failure_kinds
from tuneloop.eval.metrics import BINARY_METRICS
from tuneloop.html import key_values, page, paragraph, plot, section, table
from tuneloop.records import EvalResult

RATE_ROWS = ("errors", *BINARY_METRICS, "truncated", "noise_rate", "field_accuracy_exact_micro",
             "field_accuracy_normalized_micro", "field_accuracy_exact_macro", "field_accuracy_normalized_macro",
             "field_accuracy_lenient", "judge_mean", "judge_errors", "constraint_failures")
BAD_CASE_LIMIT = 50
LENGTH_BINS = 6


def _fmt(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else ("—" if value is None else value)


def prompt_length(result: EvalResult) -> int:
    return result.prompt_tokens or len(result.sample.get("instruction", "") + result.sample.get("input", ""))


def failure_by_length(results: Sequence[EvalResult]) -> tuple[list[float], list[float], list[int]]:
    """Failure rate in quantile bins of prompt length: (bin centres, rates, counts)."""
    if not results:
        return [], [], []
    results = [r for r in results if not getattr(r, "error", None)]  # failed requests are errors, not failures
    if not results:
        return [], [], []
    lengths = np.array([prompt_length(r) for r in results], dtype=float)
    failed = np.array([not r.scores.get("ok") for r in results], dtype=float)
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, LENGTH_BINS + 1)))
    if edges.size < 2:
        return [float(lengths[0])], [float(failed.mean())], [len(results)]
    which = np.clip(np.searchsorted(edges, lengths, side="right") - 1, 0, edges.size - 2)
    centres, rates, counts = [], [], []
    for b in range(edges.size - 1):
        mask = which == b
        if mask.any():
            centres.append(float(lengths[mask].mean()))
            rates.append(float(failed[mask].mean()))
            counts.append(int(mask.sum()))
    return centres, rates, counts


def _length_plot(series: dict[str, Sequence[EvalResult]]) -> str:
    def draw(ax: Any) -> None:
        for label, results in series.items():
            x, y, _n = failure_by_length(results)
            ax.plot(x, y, marker="o", label=label)
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel("failure rate")
        ax.set_ylim(0, 1.05)
        ax.legend()

    return plot(draw, title="failure rate vs prompt length")


def _grouped_bars(labels: list[str], groups: dict[str, list[float]], title: str, horizontal: bool = False) -> str:
    def draw(ax: Any) -> None:
        positions = np.arange(len(labels))
        width = 0.8 / max(1, len(groups))
        for i, (name, values) in enumerate(groups.items()):
            offsets = positions + (i - (len(groups) - 1) / 2) * width
            (ax.barh if horizontal else ax.bar)(offsets, [v if v is not None else 0 for v in values], width, label=name)
        if horizontal:
            ax.set_yticks(positions, labels, fontsize=8)
            ax.set_xlim(0, 1.05)
        else:
            ax.set_xticks(positions, labels, rotation=30, ha="right", fontsize=8)
            ax.set_ylim(0, 1.05)
        ax.legend()

    return plot(draw, title=title, height=max(3.4, 0.3 * len(labels)) if horizontal else 3.4)


def bad_case_rows(results: Sequence[EvalResult], baseline: dict[str, EvalResult] | None = None) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        if r.scores.get("ok") or getattr(r, "error", None):
            continue
        row = {"sample": r.sample_id, "mode": r.mode, "why": "; ".join(failure_kinds(r.scores)),
               "prompt": (r.sample.get("instruction", "") + "\n" + r.sample.get("input", "")).strip(),
               "expected": r.sample.get("output", ""), "actual": r.raw}
        if baseline is not None:
            before = baseline.get(r.sample_id)
            row["baseline actual"] = before.raw if before else ""
            row["regression"] = "yes" if before and before.scores.get("ok") else "no"
        rows.append(row)
    if baseline is not None:
        rows.sort(key=lambda row: row["regression"] != "yes")
    return rows


def run_report(summary: dict[str, Any], results: Sequence[EvalResult]) -> str:
    modes = summary["modes"]
    overview = key_values({k: summary.get(k) for k in ("model", "test_file", "samples", "quarantined", "seconds",
                                                 "max_tokens", "max_tokens_reason", "resumed", "review_queue")})
    tool_rows = ("called_when_it_should_not", "did_not_call_when_it_should")
    metric_rows = [{"metric": m, **{mode: _fmt(s.get(m)) for mode, s in modes.items()}} for m in (*RATE_ROWS, *tool_rows)
                   if not m.startswith(("tool_", *tool_rows)) or any(s.get(m) is not None for s in modes.values())]
    shown = [m for m in BINARY_METRICS if any(s.get(m) is not None for s in modes.values())]
    parts = [
        section("Run", overview),
        section("Metrics (constrained and unconstrained reported separately)",
                table(metric_rows, ["metric", *modes]),
                _grouped_bars(shown, {mode: [s.get(m) for m in shown] for mode, s in modes.items()}, "rates per mode")),
    ]
    first = next(iter(modes.values()))
    fields = first.get("per_field") or {}
    if fields:
        names = list(fields)
        parts.append(section("Per-field accuracy (unconstrained)",
                             _grouped_bars(names, {"exact": [fields[n]["exact"] for n in names],
                                                   "normalized": [fields[n]["normalized"] for n in names]},
                                           "accuracy per field", horizontal=True),
                             table([{"field": n, **fields[n]} for n in names])))
    tools = first.get("per_tool") or {}
    if tools:  # function calling: the per-sample pass of each expected tool ("none": no call expected)
        parts.append(section("Per-tool pass rate (unconstrained)", table([{"tool": n, **tools[n]} for n in tools])))
    by_mode = {mode: [r for r in results if r.mode == mode] for mode in modes}
    parts.append(section("Failure rate vs length", _length_plot(by_mode)))
    errors = [{"sample": r.sample_id, "mode": r.mode, "error": r.error} for r in results if getattr(r, "error", None)]
    if errors:
        parts.append(section(f"Errors ({len(errors)}): requests that failed, not scored, and failing the gate",
                             table(errors, limit=BAD_CASE_LIMIT)))
    bad = bad_case_rows(results)
    parts.append(section(f"Bad cases ({len(bad)})", table(bad, limit=BAD_CASE_LIMIT)))
    return page(f"Eval: {summary.get('model')}", parts, subtitle=f"test set {summary.get('test_file')}")


def compare_report(comparison: dict[str, Any], pairs_by_mode: dict[str, list[tuple[EvalResult, EvalResult]]]) -> str:
    a_name, b_name = "baseline", "candidate"
    parts = [section("Runs", key_values({"baseline": f"{comparison['baseline_model']} ({comparison['baseline']})",
                                          "candidate": f"{comparison['candidate_model']} ({comparison['candidate']})",
                                          "alpha": comparison["alpha"]}))]
    for mode, data in comparison["modes"].items():
        metrics = data["metrics"]
        rows = [{"metric": name, a_name: _fmt(s["baseline"]), b_name: _fmt(s["candidate"]), "delta": _fmt(s["delta"]),
                 "95% CI": f"[{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]", "McNemar p": _fmt(s.get("p_value")),
                 "verdict": s["verdict"], "n": s["n"]} for name, s in metrics.items()]
        names = [n for n in metrics if n != "field_accuracy"]  # an alias of field_normalized
        parts.append(section(f"{mode}: metrics before/after ({data['n']} paired samples)", table(rows),
                             _grouped_bars(names, {a_name: [metrics[n]["baseline"] for n in names],
                                                   b_name: [metrics[n]["candidate"] for n in names]}, "before / after")))
        slice_rows = [row for rows_ in data["slices"].values() for row in rows_]
        parts.append(section(f"{mode}: per-slice pass-rate deltas", _slice_plot(slice_rows),
                             table([{k: _fmt(v) for k, v in row.items()} for row in slice_rows])))
        if data["fields"]:
            fields = data["fields"]
            labels = [f["field"] for f in fields]
            parts.append(section(f"{mode}: per-field accuracy",
                                 _grouped_bars(labels, {a_name: [f["baseline"] for f in fields],
                                                        b_name: [f["candidate"] for f in fields]},
                                               "normalized accuracy per field", horizontal=True),
                                 table([{k: _fmt(v) for k, v in f.items()} for f in fields])))
        pairs = pairs_by_mode.get(mode, [])
        parts.append(section(f"{mode}: failure rate vs length",
                             _length_plot({a_name: [a for a, _ in pairs], b_name: [b for _, b in pairs]})))
        bad = bad_case_rows([b for _, b in pairs], {a.sample_id: a for a, _ in pairs})
        parts.append(section(f"{mode}: candidate bad cases ({len(bad)}; regressions first)", table(bad, limit=BAD_CASE_LIMIT)))
    if comparison.get("pairwise_judge"):
        counts = comparison["pairwise_judge"]["counts"]
        parts.append(section("Pairwise judge (both orders; disagreement = tie)", key_values(counts)))
    return page("Eval comparison", parts, subtitle=f"{comparison['baseline']} → {comparison['candidate']}")


def _slice_plot(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return paragraph("no slices", "muted")

    def draw(ax: Any) -> None:
        labels = [f"{r['slice']}={r['value']}" for r in rows]
        deltas = [r["delta"] or 0 for r in rows]
        errors = np.array([[max(0.0, (r["delta"] or 0) - (r["ci_low"] or 0)) for r in rows],
                           [max(0.0, (r["ci_high"] or 0) - (r["delta"] or 0)) for r in rows]])
        colors = ["#cf222e" if d < 0 else "#1a7f37" for d in deltas]
        ax.barh(range(len(rows)), deltas, xerr=errors, color=colors)
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.axvline(0, color="#333", linewidth=0.8)
        ax.set_xlabel("pass-rate delta (candidate − baseline), 95% CI")

    return plot(draw, title="per-slice deltas", height=max(3.4, 0.3 * len(rows)))
