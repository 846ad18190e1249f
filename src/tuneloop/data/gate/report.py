"""The round's manifest.json and report.html, built from what the gate found (no checking happens here)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tuneloop import html
from tuneloop.data.gate.run import COUNT_IDENTITY, GateRun
from tuneloop.files import tree_digest
from tuneloop.project import DataConfig

REPORT_ROWS = 2000  # rows per report table; the manifest lists everything


def build_manifest(run: GateRun, counts: dict[str, int], failures: list[str], config: DataConfig, name: str,
                   previous: Path | None, max_tokens: int | None) -> dict[str, Any]:
    sources = [dict(source, sha256=tree_digest(source["path"])) for source in run.check.sources]
    return {
        "round": name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "passed": not failures,
        "failures": failures,
        "counts": counts,
        "count_identity": count_identity(counts),
        "previous_round": previous.name if previous else None,
        "sources": sources,
        "settings": config.model_dump(mode="json"),
        "max_tokens": max_tokens,
        "tokens": {"counted_with": run.token_source, "over_max_tokens": len(run.check.over_length)},
        "frozen": run.split.frozen().manifest(),
        "relabeled_frozen": run.split.relabeled,
        "rejected_reasons": run.check.reasons(),
        "pii_redacted": run.pii,
        "duplicates": [{"id": r.sample.id, "kept_id": r.kept_id, "kind": r.kind, "similarity": r.similarity}
                       for r in run.dedup.removed],
        "dedup_cluster_sizes": {str(k): v for k, v in run.dedup.cluster_sizes.items()},
        "label_conflicts": [*run.dedup.conflicts, *({"members": [s.id, frozen_id], "answers": 2, "frozen": split}
                                                   for s, split, frozen_id in run.split.conflicts)],
        "template_siblings": run.dedup.siblings,
        "leakage": {"passed": run.leakage.passed, "allowed": run.leakage.allowed, "counts": run.leakage.counts(),
                    "hits": [h.as_row() for h in run.leakage.hits]},
        "mix": {"table": run.mix.table(), "deficit": run.mix.deficit, "dpo_pairs": run.mix.dpo_pairs,
                "negative_twin_pairs": run.mix.pairs},
        "mix_dropped": [s.id for s in run.mix.dropped],
        "over_length": run.check.over_length,
        "timings_s": run.timings,
    }


def count_identity(counts: dict[str, int]) -> str:
    """The identity every round's counts obey, with the numbers: `rows_in = accepted + … = N`."""
    names = COUNT_IDENTITY.split(" = ")[1].split(" + ")
    return (f"{COUNT_IDENTITY}: {counts['rows_in']} = " + " + ".join(str(counts[n]) for n in names)
            + f" (accepted = train + val + test - carried_over; removed = duplicates_removed + mix_dropped)")


def _histogram(values: list[int], title: str) -> str:
    if not values:
        return html.paragraph("(no rows)", "muted")
    return html.plot(lambda ax: (ax.hist(values, bins=40, color="#4472c4"), ax.set_xlabel("tokens"),
                                 ax.set_ylabel("rows")), title=title)


def _mix_plot(table: list[dict[str, Any]]) -> str:
    def draw(ax: Any) -> None:
        kinds = [row["type"] for row in table]
        x = range(len(kinds))
        ax.bar([i - 0.27 for i in x], [row["target"] for row in table], width=0.27, label="target")
        ax.bar(list(x), [row["before_share"] for row in table], width=0.27, label="before mix")
        ax.bar([i + 0.27 for i in x], [row["after_share"] for row in table], width=0.27, label="train")
        ax.set_xticks(list(x), kinds)
        ax.set_ylabel("share of train")
        ax.legend()
    return html.plot(draw, title="sample-type mix: target vs actual")


def build_report(run: GateRun, manifest: dict[str, Any]) -> str:
    counts = manifest["counts"]
    passed = manifest["passed"]
    summary = [html.paragraph("passed" if passed else "FAILED", "ok" if passed else "bad")]
    summary += [html.paragraph(f) for f in manifest["failures"]]
    sections = [
        html.section("Result", *summary, html.paragraph(manifest["count_identity"]), html.key_values(counts)),
        html.section("Sources", html.table(manifest["sources"], ["path", "license", "rows", "quarantined", "sha256"])),
        html.section(
            "Rejected rows",
            html.paragraph(f"{counts['quarantined']} rows in quarantine.jsonl, each with file, line, id and reason."),
            html.table([{"reason": r, "rows": n} for r, n in manifest["rejected_reasons"].items()]),
            html.table([{"file": q.source_file, "line": q.line, "id": q.sample_id, "stage": q.stage, "reason": q.reason}
                        for q in run.quarantine], limit=200),
        ),
        html.section(
            "Lengths",
            html.paragraph(f"Token counts: {run.token_source}; {len(run.check.over_length)} rows longer than "
                           f"max_tokens {manifest['max_tokens']} (their inputs are windowed in training)."),
            _histogram(run.check.prompt_tokens, "prompt tokens per row"),
            _histogram(run.check.answer_tokens, "answer tokens per row"),
        ),
        html.section("Sample-type mix", _mix_plot(run.mix.table()), html.table(run.mix.table()),
                     html.paragraph(f"{run.mix.dpo_pairs} train rows carry a `rejected` answer (DPO pairs); "
                                    f"{run.mix.pairs} of them got a negative twin's answer here.")),
        html.section(
            "Duplicates",
            html.paragraph(f"{counts['duplicates_removed']} rows removed in {len(run.dedup.clusters)} clusters; "
                           "a row is removed only as a copy of a row with the same answer, and the best copy of "
                           "each cluster is kept (reviewed > annotated > original > augmented)."),
            html.table([{"cluster size": k, "clusters": v} for k, v in run.dedup.cluster_sizes.items()]),
            html.table([{"kept": c["kept"], "size": c["size"], "kind": c["kind"], "members": ", ".join(c["members"][:12])}
                        for c in run.dedup.clusters], limit=100),
        ),
        html.section(
            "Label conflicts",
            html.paragraph(f"{counts['label_conflicts']} prompts carry more than one answer: their "
                           f"{counts['sent_to_review']} rows left train/val/test and are in review.jsonl (reason "
                           "label_conflict, with the ids of the other rows). Keep the right answer in the source, "
                           "correct or delete the others, and run the gate again.",
                           "bad" if counts["label_conflicts"] else "ok"),
            html.table([{"rows": ", ".join(c["members"][:12]), "answers": c["answers"],
                         "frozen": c.get("frozen", "")} for c in manifest["label_conflicts"]], limit=REPORT_ROWS),
        ),
        html.section(
            "Template siblings",
            html.paragraph(f"{counts['template_siblings']} rows in {len(run.dedup.siblings)} families share one "
                           "sentence frame (near-duplicate text) but have different answers: all kept, each family "
                           "on one side of the split."),
            html.table([{"size": f["size"], "answers": f["answers"], "members": ", ".join(f["members"][:12])}
                        for f in run.dedup.siblings], limit=100),
        ),
        html.section(
            "Leakage",
            html.paragraph("passed" if run.leakage.passed else "train rows overlap val/test",
                           "ok" if run.leakage.passed else "bad"),
            html.table([{"kind": k, "pairs": n} for k, n in run.leakage.counts().items()]),
            html.table([h.as_row() for h in run.leakage.hits], limit=REPORT_ROWS),
        ),
        html.section("Personal data", html.paragraph(
            f"Redacted ({manifest['settings']['pii']['mode']}); a final scan found none in the files written."),
            html.table([{"type": k, "redacted": v} for k, v in sorted(run.pii.items())])),
        html.section(
            "Frozen val/test",
            html.paragraph(f"{counts['val']} val and {counts['test']} test rows; {counts['carried_over']} carried over "
                           f"from {manifest['previous_round'] or '(first round)'}, {counts['held_out_variants']} new "
                           "variants of frozen items held out of train."),
            html.paragraph(f"{counts['groups_too_large_for_val_test']} rows belong to groups (one seed, one prompt, "
                           "overlapping text or one template family) larger than a val/test share: they went to "
                           "train whole; add rows with other frames to fill val/test.",
                           "bad" if counts["groups_too_large_for_val_test"] else "muted"),
            html.table(run.split.relabeled, limit=REPORT_ROWS),
        ),
        html.section("Settings", html.key_values({k: str(v) for k, v in manifest["settings"].items()})),
    ]
    return html.page(f"Data gate {manifest['round']}", sections, subtitle=manifest["created_at"])
