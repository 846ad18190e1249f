"""The summary of one round (`loop/<round>/summary.json` and `summary.html`), written whether the round passed or
stopped: before/after on the unseen test set, the paired-test verdict, the outcome with what failed and what to do,
every stage's status, and links to every stage's own report.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tuneloop import html
from tuneloop.files import read_json
from tuneloop.project import Project

HEADLINE_METRICS = ("json_valid", "schema_valid", "field_accuracy", "exact_match", "refusal_ok",
                    "tool_name_ok", "tool_args_ast")  # tool rows only where the test set expects calls


def summarize(project: Project, outcome: dict[str, Any], stages: list[Any], round_dir: Path,
              run_dir: Path | None = None, baseline_dir: Path | None = None, candidate_dir: Path | None = None,
              compared: dict[str, Any] | None = None, merged: dict[str, Any] | None = None,
              served: dict[str, Any] | None = None) -> dict[str, Any]:
    """The round as JSON-ready data; parts a stopped round never reached are None or empty.

    `stages` are the loop's stage records (name, status, seconds, outputs), in the order they ran.
    """
    compared, merged, served = compared or {}, merged or {}, served or {}
    before, after = _eval_summary(baseline_dir), _eval_summary(candidate_dir)
    headline = {name: {"before": _metric(before, name), "after": _metric(after, name)} for name in HEADLINE_METRICS}
    verdict = compared.get("verdict") or _verdict_from_folder(compared.get("compare_dir"), project)
    reports = {"data gate": round_dir / "report.html"}
    if run_dir:
        reports["run card"] = run_dir / "run_card.html"
    if before:
        reports["baseline eval"] = Path(baseline_dir or "") / "report.html"
    if after:
        reports["eval after"] = Path(candidate_dir or "") / "report.html"
    if compared.get("compare_dir"):
        reports["comparison"] = Path(compared["compare_dir"]) / "report.html"
    if merged.get("export_dir"):
        reports["export"] = Path(merged["export_dir"]) / "manifest.json"
    traffic = _traffic(stages)
    reports.update(traffic.pop("reports"))
    return {
        "project": str(project.root),
        "round": round_dir.name,
        "outcome": outcome,
        "headline": headline,
        "verdict": verdict,
        "improved": bool(verdict) and verdict["verdict"] == "improved",
        "eval_gate": {"passed": compared.get("passed"), "reasons": compared.get("reasons", [])},
        "stages": [{"name": r.name, "status": r.status, "seconds": round(r.seconds, 1), **_links(r.outputs)}
                   for r in stages],
        "merge": merged.get("report", {}),
        "serve": served,
        "traffic": traffic,
        "reports": {name: str(path) for name, path in reports.items() if path.exists()},
    }


# the cycle's traffic stages (`tuneloop loop`): what each found, and the file a reader opens for it
TRAFFIC_REPORTS = {"select": ("failures", "failures_file", None), "cluster": ("failure clusters", "report_file", None),
                   "relabel": ("relabel queue export", "export_file", None),
                   "traffic split": ("traffic holdout", "holdout_file", None),
                   "eval traffic": ("traffic eval", "compare_dir", "report.html"),
                   "canary start": ("canary", "canary_file", None)}


def _traffic(stages: list[Any]) -> dict[str, Any]:
    """Counts of the traffic stages a cycle ran (none for `tuneloop run`) and links to their files."""
    found: dict[str, Any] = {"reports": {}}
    for record in stages:
        if record.name not in TRAFFIC_REPORTS or record.status not in ("done", "skipped", "refused"):
            continue
        title, key, inside = TRAFFIC_REPORTS[record.name]
        outputs = record.outputs
        if outputs.get(key):
            found["reports"][title] = Path(outputs[key]) / inside if inside else Path(outputs[key])
        summary = {k: v for k, v in outputs.items() if k in ("counts", "reasons", "queue", "clusters", "names", "n",
                                                              "slice", "verdict", "url", "accepted", "pending")}
        if summary:
            found[record.name] = summary
    return found


def _eval_summary(folder: Path | None) -> dict[str, Any]:
    path = Path(folder) / "summary.json" if folder else None
    return read_json(path) if path and path.exists() else {}


def _verdict_from_folder(compare_dir: str | None, project: Project) -> dict[str, Any] | None:
    """A comparison cached by an older tuneloop carries no verdict: draw it from its comparison.json."""
    path = Path(compare_dir) / "comparison.json" if compare_dir else None
    if not path or not path.exists():
        return None
    from tuneloop.eval.compare import round_verdict

    gate = project.config.eval.gate
    return round_verdict(read_json(path), gate.mode, gate.alpha)


def _metric(summary: dict[str, Any], name: str) -> float | None:
    """A headline rate from an eval summary (the unconstrained run: what the model does on its own)."""
    value = summary.get("modes", {}).get("unconstrained", {}).get(name)
    return float(value) if isinstance(value, (int, float)) else None


def _links(outputs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in outputs.items() if k.endswith(("_dir", "_file"))}


def summary_html(summary: dict[str, Any]) -> str:
    headline = summary["headline"]
    rows = [{"metric": k, "before": v["before"], "after": v["after"],
             "change": (v["after"] - v["before"]) if v["before"] is not None and v["after"] is not None else None}
            for k, v in headline.items()]
    names = [r["metric"] for r in rows]

    def draw(ax: Any) -> None:
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [r["before"] or 0 for r in rows], width=0.4, label="before")
        ax.bar([x + 0.2 for x in xs], [r["after"] or 0 for r in rows], width=0.4, label="after")
        ax.set_xticks(list(xs), names)
        ax.set_ylim(0, 1)
        ax.legend()

    outcome = summary["outcome"]
    here = Path(summary["project"]) / "loop" / summary["round"]
    links = [{"report": name, "file": html.link(os.path.relpath(path, here), path)}
             for name, path in summary["reports"].items()]
    verdict = summary.get("verdict")
    sections = [html.section("Outcome", *_outcome_parts(outcome))]
    if any(r["before"] is not None or r["after"] is not None for r in rows):
        sections.append(html.section("Before / after on the unseen test set", html.table(rows),
                                     html.plot(draw, "headline metrics")))
    if verdict:
        per_metric = [{"metric": name, **values} for name, values in verdict["metrics"].items()]
        sections.append(html.section(
            f"Verdict (paired tests at alpha {verdict['alpha']}, {verdict['mode']} mode)",
            html.paragraph(verdict["verdict"], {"improved": "ok", "worse": "bad"}.get(verdict["verdict"], "")),
            html.table(per_metric) if per_metric else html.paragraph("no verdict metric was measured"),
            html.key_values({"eval gate": {True: "pass", False: "fail"}.get(summary["eval_gate"]["passed"], "not run"),
                             "reasons": "; ".join(summary["eval_gate"]["reasons"]) or "—"})))
    sections += _traffic_sections(summary.get("traffic") or {})
    sections += [
        html.section("Stages", html.table(summary["stages"])),
        html.section("Reports", html.table(links, ["report", "file"], raw_columns=["file"])),
        html.section("Served answer (embedded server, openai client, response_format)",
                     html.key_values(summary["serve"] or {"serve": "not run"})),
    ]
    return html.page(f"tuneloop round {summary['round']}", sections, subtitle=summary["project"])


def _traffic_sections(traffic: dict[str, Any]) -> list[str]:
    """The cycle's traffic: failures by reason, clusters, the queue, the split, the held-out traffic eval."""
    if not traffic:
        return []
    facts: dict[str, Any] = {}
    if "select" in traffic:
        facts["traffic"] = ", ".join(f"{k} {v}" for k, v in traffic["select"].get("counts", {}).items())
        facts["failure reasons"] = ", ".join(f"{k} {v}" for k, v in traffic["select"].get("reasons", {}).items()) or "—"
    if "cluster" in traffic:
        facts["clusters"] = "; ".join(traffic["cluster"].get("names", {}).values()) or "—"
    if "relabel" in traffic:
        facts["relabel queue"] = ", ".join(f"{k} {v}" for k, v in traffic["relabel"].get("queue", {}).items())
    if "traffic split" in traffic:
        facts["relabeled rows"] = ", ".join(f"{k} {v}" for k, v in traffic["traffic split"]["counts"].items())
    parts = [html.key_values(facts)] if facts else []
    evaluated = traffic.get("eval traffic", {})
    if evaluated.get("slice"):
        part = evaluated["slice"]
        parts.append(html.table([
            {"metric": "field_accuracy", "current model": part["field_accuracy_before"],
             "candidate": part["field_accuracy_after"], "test": "bootstrap CI " + str(part["field_accuracy_ci"])},
            {"metric": "ok (every field right)", "current model": part["ok_before"], "candidate": part["ok_after"],
             "test": f"McNemar p = {part['mcnemar_p']}"}]))
        parts.append(html.paragraph(f"verdict on {evaluated['n']} held-out traffic rows: "
                                    f"{evaluated['verdict']['verdict']}"))
    return [html.section("Traffic (failures → relabel → held-out traffic eval)", *parts)] if parts else []


def _outcome_parts(outcome: dict[str, Any]) -> list[str]:
    if outcome["status"] == "passed":
        return [html.paragraph("passed: every check of the round said yes", "ok")]
    title = f"refused by the {outcome['stage']}" if outcome["status"] == "refused" else "failed"
    parts = [html.paragraph(title, "bad"), html.table([{"what failed": r} for r in outcome["reasons"]])]
    if outcome.get("advice"):
        parts.append(html.key_values({"what to do": outcome["advice"]}))
    return parts
