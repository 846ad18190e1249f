"""The rounds of a project side by side (`tuneloop rounds list|diff`): what each round holds, where its rows came from,
whether its gates passed, and what changed between two.

```
round folder (data/rounds/rNNNN)   manifest counts, passed      train/val/test rows: meta.source → source kind,
loop/rNNNN/summary.json            outcome, verdict, metrics    cluster (relabeled traffic), sample_type
diff A B   per split: rows added / removed / relabeled (same id, other content), by source kind and cluster;
           train's sample_type mix; each verdict metric before → after in both rounds with its paired test, the
           change of the after values from A to B; the held-out traffic slice of each round
```
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from tuneloop.files import read_json
from tuneloop.project import Project
from tuneloop.records import Sample

SPLITS = ("train", "val", "test")


def current_model(project: Project, before: Path | None = None) -> str:
    """The merged export of the latest passed round older than `before` (its loop summary), else `model`."""
    for round_dir in reversed(project.rounds()):
        if before is not None and round_dir.name >= Path(before).name:
            continue
        summary_file = project.root / "loop" / round_dir.name / "summary.json"
        if not summary_file.exists():
            continue
        summary = read_json(summary_file)
        if summary.get("outcome", {}).get("status") != "passed":
            continue
        merged = next((s for s in summary.get("stages", []) if s.get("name") == "merge"), {})
        export_dir = merged.get("export_dir")
        if export_dir and Path(export_dir).is_dir():
            return str(export_dir)
    return project.config.model


def source_kind(sample: Sample) -> str:
    """Where a row came from, in a word: traffic, synth, eval (a bad-case variant), augmented, or its file's stem
    (seed for data/raw/seed.jsonl)."""
    source = (sample.meta.source or "").strip()
    if source == "traffic" or (sample.lineage.source_id or "").startswith("trace:"):
        return "traffic"
    if source == "synth" or source.startswith("synth"):
        return "synth"
    if source.startswith("eval"):
        return "eval"
    if sample.lineage.augment_type and sample.lineage.augment_type != "relabel":
        return "augmented"
    return Path(source).stem if source else "unknown"


def cluster_name(sample: Sample) -> str:
    cluster = getattr(sample, "cluster", None)
    if isinstance(cluster, dict) and cluster.get("name"):
        return str(cluster["name"])
    return "—"


def _load(folder: Path, split: str) -> list[Sample]:
    from tuneloop.data.io.formats import load_samples

    path = folder / f"{split}.jsonl"
    return load_samples(path) if path.exists() else []


def loop_summary(project: Project | None, round_dir: Path) -> dict[str, Any] | None:
    if project is None:
        return None
    path = project.root / "loop" / round_dir.name / "summary.json"
    return read_json(path) if path.exists() else None


def round_row(round_dir: Path, project: Project | None = None) -> dict[str, Any]:
    """One line of `rounds list`: counts, source mix of train, gate result, eval verdict."""
    manifest = read_json(round_dir / "manifest.json")
    counts = manifest.get("counts", {})
    mix = Counter(source_kind(s) for s in _load(round_dir, "train"))
    summary = loop_summary(project, round_dir)
    row = {"round": round_dir.name, "created_at": manifest.get("created_at", ""),
           **{name: counts.get(name) for name in ("train", "val", "test", "quarantined")},
           "sources": dict(sorted(mix.items())), "gate": "passed" if manifest.get("passed") else "failed",
           "outcome": None, "verdict": None}
    if summary:
        row["outcome"] = summary.get("outcome", {}).get("status")
        row["verdict"] = (summary.get("verdict") or {}).get("verdict")
    return row


def _changes(old: list[Sample], new: list[Sample]) -> dict[str, Any]:
    before = {s.id: s for s in old}
    after = {s.id: s for s in new}
    added = [after[i] for i in after.keys() - before.keys()]
    removed = [before[i] for i in before.keys() - after.keys()]
    relabeled = [after[i] for i in after.keys() & before.keys() if after[i].content_id() != before[i].content_id()]

    def by(rows: list[Sample], key: Any) -> dict[str, int]:
        return dict(sorted(Counter(key(s) for s in rows).items()))

    return {"before": len(old), "after": len(new), "added": len(added), "removed": len(removed),
            "relabeled": len(relabeled),
            "by_source": {name: by(rows, source_kind) for name, rows in
                          (("added", added), ("removed", removed), ("relabeled", relabeled)) if rows},
            "by_cluster": {name: by(rows, cluster_name) for name, rows in
                           (("added", added), ("removed", removed), ("relabeled", relabeled))
                           if any(cluster_name(s) != "—" for s in rows)}}


def _metrics(summary: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    if not summary or not summary.get("verdict"):
        return {}
    return summary["verdict"].get("metrics", {})


def _traffic_slice(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    if not summary:
        return None
    return ((summary.get("traffic") or {}).get("eval traffic") or {}).get("slice")


def diff_rounds(old_dir: Path, new_dir: Path, project: Project | None = None) -> dict[str, Any]:
    """What changed from round `old_dir` to `new_dir` (see the module doc)."""
    splits = {split: _changes(_load(old_dir, split), _load(new_dir, split)) for split in SPLITS}
    held = [_quarantined(folder) for folder in (old_dir, new_dir)]
    quarantine = {"before": len(held[0]), "after": len(held[1]), "added": len(held[1] - held[0]),
                  "removed": len(held[0] - held[1])}
    mix = {name: dict(sorted(Counter(s.sample_type for s in _load(folder, "train")).items()))
           for name, folder in (("old", old_dir), ("new", new_dir))}
    summaries = {"old": loop_summary(project, old_dir), "new": loop_summary(project, new_dir)}
    old_metrics, new_metrics = _metrics(summaries["old"]), _metrics(summaries["new"])
    metrics = []
    for name in sorted(old_metrics.keys() | new_metrics.keys()):
        a, b = old_metrics.get(name, {}), new_metrics.get(name, {})
        change = (b["candidate"] - a["candidate"]
                  if isinstance(a.get("candidate"), (int, float)) and isinstance(b.get("candidate"), (int, float))
                  else None)
        metrics.append({"metric": name, "old": _metric_line(a), "new": _metric_line(b), "after_change": change})
    return {"old": old_dir.name, "new": new_dir.name, "splits": splits, "quarantine": quarantine,
            "sample_type_mix": mix, "metrics": metrics,
            "verdicts": {k: ((v or {}).get("verdict") or {}).get("verdict") for k, v in summaries.items()},
            "traffic": {k: _traffic_slice(v) for k, v in summaries.items()}}


def _quarantined(folder: Path) -> set[str]:
    import json

    path = folder / "quarantine.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return {str(json.loads(line).get("sample_id")) for line in lines if line.strip()}


def _metric_line(stats: dict[str, Any]) -> str:
    if not stats:
        return "—"
    before, after = stats.get("baseline"), stats.get("candidate")
    values = f"{before:.3f} → {after:.3f}" if isinstance(before, (int, float)) and isinstance(after, (int, float)) else "?"
    return f"{values} {stats.get('verdict')} ({stats.get('evidence')})"


def diff_lines(diff: dict[str, Any]) -> list[str]:
    """`rounds diff` as text lines."""
    lines = [f"{diff['old']} → {diff['new']}"]
    for split, change in diff["splits"].items():
        lines.append(f"{split:<6} {change['before']:>6} → {change['after']:<6} +{change['added']} "
                     f"-{change['removed']} ~{change['relabeled']} relabeled")
        for kind, counts in change["by_source"].items():
            lines.append(f"         {kind:<9} by source: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        for kind, counts in change["by_cluster"].items():
            lines.append(f"         {kind:<9} by cluster: " + "; ".join(f"{k} {v}" for k, v in counts.items()))
    q = diff["quarantine"]
    lines.append(f"quarantine {q['before']:>3} → {q['after']:<6} +{q['added']} -{q['removed']}")
    for name in ("old", "new"):
        lines.append(f"train sample_type mix {diff[name]}: "
                     + (", ".join(f"{k} {v}" for k, v in diff["sample_type_mix"][name].items()) or "—"))
    for name in ("old", "new"):
        lines.append(f"verdict {diff[name]}: {diff['verdicts'][name] or '— (no loop summary)'}")
    for row in diff["metrics"]:
        change = f"{row['after_change']:+.3f}" if row["after_change"] is not None else "—"
        lines.append(f"  {row['metric']:<15} {diff['old']}: {row['old']}")
        lines.append(f"  {'':<15} {diff['new']}: {row['new']}   after: {change}")
    for name in ("old", "new"):
        part = diff["traffic"][name]
        if part:
            lines.append(f"held-out traffic {diff[name]}: field accuracy {part['field_accuracy_before']} → "
                         f"{part['field_accuracy_after']}, McNemar p = {part['mcnemar_p']} (n {part['n']})")
    return lines
