"""The relabel queue: failures waiting for the right answer, in the trace store (`relabel_queue`), so the loop, a
JSONL round trip and the annotation tool all work on the same rows.

```
loop select/cluster ──add_failures──┐                       ┌──export──▶ JSONL to fill ──import_labels──┐
eval export-bad --queue ──add_samples┴▶ pending ──propose──▶ pending + proposal (proposed_by)           │
                                          │  save(draft)          ▼                                    │
                                          ├────────────────▶ draft ──save(submitted): rules pass────▶ submitted
                                          └──save(discarded)──▶ discarded          review: accept ──▶ reviewed
                                                                                          reject ──▶ draft (comment)
submitted + reviewed ──accepted_samples──▶ Samples with lineage ──write_relabeled──▶ data/traffic/relabeled.jsonl
```

Every change of a row's label or state carries the version the writer read (optimistic concurrency): a stale
version is a `QueueConflict` that holds the newer row, never a lost update. A proposal (a stronger model's answer)
is stored beside the label, marked `proposed_by`, and becomes a label only through an import or a save.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tuneloop.annotate.rules import Problem
from tuneloop.records import Expected, Sample, SampleType

STATUSES = ("pending", "draft", "submitted", "reviewed", "discarded")
OPEN = ("pending", "draft")  # waiting for a label
ACCEPTED = ("submitted", "reviewed")  # labels that go into the next round
TRAFFIC = "traffic"
RELABEL = "relabel"  # lineage.augment_type of a relabeled row
TABLES = ("relabel_queue", "seed_queue")  # the same columns (store migrations 2 and 3)

_COLUMNS = ("id", "trace_id", "origin", "reasons", "cluster", "cluster_name", "sample", "proposal", "proposed_by",
            "status", "label", "annotator", "reviewer", "comment", "version", "created_at", "updated_at")


class QueueError(ValueError):
    """A queue request that cannot be done (unknown id, a state that does not allow it), with what to do."""


class QueueConflict(QueueError):
    """A save with a version older than the row's: someone saved in between. `current` is the newer row."""

    def __init__(self, current: QueueItem, version: int):
        self.current = current
        who = current.reviewer or current.annotator or "someone"
        super().__init__(f"{current.id}: changed since version {version} (now version {current.version}, "
                         f"{current.status}, by {who}); read the newer row and save again")


class LabelRejected(QueueError):
    """A label that breaks the label rules: submitting is blocked until they are fixed (a draft can be saved)."""

    def __init__(self, item_id: str, problems: Sequence[Problem | str]):
        self.problems = list(problems)
        super().__init__(f"{item_id}: " + "; ".join(map(str, self.problems)))


class Label(BaseModel):
    """What a relabeler decides: the right answer, and (when the failure's guess was wrong) expected / sample_type."""

    model_config = ConfigDict(extra="forbid")

    output: str
    expected: Expected | None = None
    sample_type: SampleType | None = None
    # what the annotation tool's form also edits: a prompt fixed by hand, metadata (task_type, difficulty, domain)
    instruction: str | None = None
    input: str | None = None
    meta: dict[str, Any] | None = None


class QueueItem(BaseModel):
    """One row of the relabel queue."""

    id: str
    trace_id: str | None = None
    origin: str = Field(description="traffic, or eval:<eval folder> for a variant of an eval failure.")
    reasons: list[str] = Field(default_factory=list)
    cluster: int | None = None
    cluster_name: str | None = None
    sample: Sample = Field(description="The prompt as the model saw it; output empty, rejected = the model's answer.")
    proposal: str | None = None
    proposed_by: str | None = None
    status: str = "pending"
    label: Label | None = None
    annotator: str | None = None
    reviewer: str | None = None
    comment: str | None = None
    version: int = 1
    created_at: float = 0.0
    updated_at: float = 0.0

    def labeled(self, label: Label | None = None) -> Sample:
        """The sample with a label applied (this row's label when none is given)."""
        label = label or self.label
        if label is None:
            raise QueueError(f"{self.id}: has no label yet.")
        update: dict[str, Any] = {"output": label.output}
        if label.expected is not None:
            update["expected"] = label.expected
        if label.sample_type is not None:
            update["sample_type"] = label.sample_type
        update.update({k: v for k, v in (("instruction", label.instruction), ("input", label.input)) if v is not None})
        sample = self.sample.model_copy(update=update, deep=True)
        if label.meta:
            sample.meta = sample.meta.model_copy(update=label.meta)
        return sample


def _row(values: Sequence[Any]) -> QueueItem:
    data = dict(zip(_COLUMNS, values))
    data["reasons"] = json.loads(data["reasons"])
    data["sample"] = Sample.model_validate_json(data["sample"])
    data["label"] = Label.model_validate_json(data["label"]) if data["label"] else None
    return QueueItem(**data)


def _label(label: Label | str | dict[str, Any] | None) -> Label | None:
    if label is None or isinstance(label, Label):
        return label
    return Label(output=label) if isinstance(label, str) else Label.model_validate(label)


class RelabelQueue:
    """The `relabel_queue` table of a trace store (`store.query` / `store.transaction`: the store keeps the lock)."""

    def __init__(self, store: Any, table: str = "relabel_queue"):
        if table not in TABLES:
            raise QueueError(f"no queue table {table!r}; use one of {', '.join(TABLES)}.")
        self.store = store
        self.table = table  # relabel_queue (the loop's), or seed_queue (the seed set the annotation tool edits)

    # -- adding -------------------------------------------------------------------------------------------------
    def add_failures(self, failures: Sequence[Any], clustering: Any | None = None) -> int:
        """Queue traffic failures (`traces.select.Failure`), pending; returns how many were new.

        Idempotent by failure id: a failure already queued is not added again (its label, if any, is kept); a
        clustering (`traces.cluster.Clustering`, matched by trace id) updates each row's cluster.
        """
        labels: list[Any] = [None] * len(failures)
        names: dict[Any, str] = {}
        if clustering is not None:
            by_trace = dict(zip(clustering.trace_ids, clustering.labels))
            if len(by_trace) != len(clustering.labels):
                raise QueueError(f"the clustering has {len(clustering.labels)} labels for {len(by_trace)} trace ids; "
                                 "cluster the failures again (`tuneloop loop cluster`).")
            # a failure the clustering has not seen (selected after it ran) is queued without a cluster
            labels = [by_trace.get(f.trace_id) for f in failures]
            names = {int(c.id): c.name for c in clustering.clusters}
        rows = []
        for failure, cluster in zip(failures, labels):
            sample = failure.sample.model_copy(deep=True)
            sample.failure = {"reasons": list(failure.reasons), "details": list(failure.details),
                              "model": failure.model, "feedback": list(failure.feedback)}
            rows.append((failure.id, failure.trace_id, TRAFFIC, list(failure.reasons), cluster, names.get(cluster),
                         sample, None, None))
        return self._insert(rows, update_cluster=clustering is not None)

    def add_samples(self, samples: Sequence[Sample], origin: str, reasons: Sequence[Sequence[str]],
                    proposals: Sequence[tuple[str, str] | None] | None = None) -> int:
        """Queue samples to relabel that do not come from a trace (eval bad cases made into new variants).

        `reasons[i]` are sample i's failure reasons; `proposals[i]` an (answer, proposed_by) to start from.
        Idempotent by sample id; returns how many were new.
        """
        if len(reasons) != len(samples) or (proposals is not None and len(proposals) != len(samples)):
            raise QueueError("add_samples needs one reasons list (and one proposal or None) per sample.")
        rows = []
        for index, sample in enumerate(samples):
            proposal = proposals[index] if proposals is not None else None
            rows.append((sample.id, None, origin, list(reasons[index]), None, None, sample,
                         proposal[0] if proposal else None, proposal[1] if proposal else None))
        return self._insert(rows, update_cluster=False)

    def _insert(self, rows: list[tuple[Any, ...]], update_cluster: bool) -> int:
        ids = [row[0] for row in rows]
        if len(set(ids)) != len(ids):
            twice = sorted(i for i, n in Counter(ids).items() if n > 1)
            raise QueueError(f"the same id twice in one add: {twice[:5]}; deduplicate the failures first.")
        existing = {r[0] for r in self.store.query(
            f"SELECT id FROM {self.table} WHERE id IN ({','.join('?' * len(ids))})", ids)} if ids else set()
        now = time.time()
        statements = []
        for id_, trace_id, origin, reasons, cluster, name, sample, proposal, proposed_by in rows:
            if id_ in existing:
                if update_cluster and cluster is not None:
                    statements.append((f"UPDATE {self.table} SET cluster=?, cluster_name=? WHERE id=?", (cluster, name, id_)))
                continue
            statements.append((
                f"INSERT INTO {self.table} (id, trace_id, origin, reasons, cluster, cluster_name, sample, proposal, "
                "proposed_by, status, version, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,'pending',1,?,?) "
                "ON CONFLICT(id) DO NOTHING",
                (id_, trace_id, origin, json.dumps(reasons, ensure_ascii=False), cluster, name,
                 sample.model_dump_json(), proposal, proposed_by, now, now)))
        if statements:
            self.store.transaction(statements)
        return len(rows) - len(existing)

    # -- reading ------------------------------------------------------------------------------------------------
    def items(self, status: str | Sequence[str] | None = None, origin: str | None = None, cluster: int | None = None,
              limit: int | None = None, offset: int = 0) -> list[QueueItem]:
        """Rows oldest first, filtered by status (one or several), origin and cluster."""
        clauses, params = [], []
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            for name in wanted:
                _check_status(name)
            clauses.append(f"status IN ({','.join('?' * len(wanted))})")
            params += wanted
        if origin is not None:
            clauses.append("origin=?")
            params.append(origin)
        if cluster is not None:
            clauses.append("cluster=?")
            params.append(cluster)
        sql = f"SELECT {','.join(_COLUMNS)} FROM {self.table}"
        sql += (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY created_at, id"
        if limit is not None:
            sql += f" LIMIT {int(limit)} OFFSET {int(offset)}"
        return [_row(r) for r in self.store.query(sql, params)]

    def get(self, item_id: str) -> QueueItem:
        rows = self.store.query(f"SELECT {','.join(_COLUMNS)} FROM {self.table} WHERE id=?", (item_id,))
        if not rows:
            raise QueueError(f"no queue item {item_id!r}; `tuneloop loop relabel --status` lists the queue.")
        return _row(rows[0])

    def counts(self) -> dict[str, int]:
        """Rows per status (every status named, zeros included)."""
        found = dict(self.store.query(f"SELECT status, COUNT(*) FROM {self.table} GROUP BY status"))
        return {name: int(found.get(name, 0)) for name in STATUSES}

    def __len__(self) -> int:
        return int(self.store.query(f"SELECT COUNT(*) FROM {self.table}")[0][0])

    # -- writing ------------------------------------------------------------------------------------------------
    def save(self, item_id: str, label: Label | str | dict[str, Any] | None, version: int, annotator: str,
             status: str = "draft", check: Any | None = None, comment: str | None = None) -> QueueItem:
        """Save a label as `draft`, `submitted` or `discarded`, if the row is still at `version`.

        Submitting runs `check` (a `traces.relabel.LabelCheck`) first and raises LabelRejected with its problems;
        a draft is saved whatever it holds. A stale `version` raises QueueConflict with the newer row. A new label
        on a reviewed row clears its reviewer: the new label waits for a review of its own.
        """
        if status not in ("draft", "submitted", "discarded"):
            raise QueueError(f"{item_id}: save as draft, submitted or discarded, not {status!r} (review() reviews).")
        if not annotator:
            raise QueueError(f"{item_id}: who saves this label? give the annotator's name.")
        parsed = _label(label)
        item = self.get(item_id)
        if item.version != version:
            raise QueueConflict(item, version)
        if status == "submitted":
            if parsed is None:
                raise LabelRejected(item_id, ["output: the label is empty; write the correct answer"])
            if check is not None:
                problems = check.problems([item.labeled(parsed)])[0]
                if problems:
                    raise LabelRejected(item_id, problems)
        return self._update(item_id, version, status=status, label=parsed.model_dump_json() if parsed else None,
                            annotator=annotator, reviewer=None, comment=comment)

    def review(self, item_id: str, version: int, reviewer: str, accept: bool, comment: str | None = None) -> QueueItem:
        """A reviewer's verdict on a submitted label: accepted → reviewed; rejected → back to draft with the comment."""
        item = self.get(item_id)
        if item.version != version:  # stale before anything else: the reviewer sees the newer row
            raise QueueConflict(item, version)
        if item.status != "submitted":
            raise QueueError(f"{item_id}: is {item.status}; only a submitted label can be reviewed.")
        if not reviewer:
            raise QueueError(f"{item_id}: who reviews? give the reviewer's name.")
        if reviewer == item.annotator:
            raise QueueError(f"{item_id}: {reviewer} wrote this label; another person reviews it.")
        if not accept and not comment:
            raise QueueError(f"{item_id}: say why the label is rejected (a comment for the annotator).")
        return self._update(item_id, version, status="reviewed" if accept else "draft", reviewer=reviewer,
                            comment=comment)

    def set_proposal(self, item_id: str, proposal: str, proposed_by: str) -> None:
        """Store a proposed answer beside the row (its label, state and version are not touched)."""
        self.get(item_id)
        self.store.query(f"UPDATE {self.table} SET proposal=?, proposed_by=?, updated_at=? WHERE id=?",
                         (proposal, proposed_by, time.time(), item_id))

    def _update(self, item_id: str, version: int, **values: Any) -> QueueItem:
        names = list(values)
        sql = (f"UPDATE {self.table} SET {', '.join(f'{n}=?' for n in names)}, version=version+1, updated_at=? "
               "WHERE id=? AND version=? RETURNING version")
        done = self.store.query(sql, [*values.values(), time.time(), item_id, int(version)])
        if not done:
            raise QueueConflict(self.get(item_id), version)
        return self.get(item_id)

    # -- files (traces/relabel.py holds the formats) ------------------------------------------------------------
    def export(self, path: str | Path, status: Sequence[str] = OPEN, prefill: bool = False) -> int:
        """The open rows as JSONL to fill in (see `traces.relabel.export_row`); returns how many were written."""
        from tuneloop.files import write_jsonl
        from tuneloop.traces.relabel import export_row

        items = sorted(self.items(status=status), key=lambda i: (i.cluster if i.cluster is not None else 1 << 30, i.id))
        write_jsonl(path, (export_row(item, prefill) for item in items))
        return len(items)

    def import_labels(self, path: str | Path, schema: dict[str, Any] | None = None, rules: Sequence[Any] = (),
                      annotator: str | None = None, frozen: dict[str, list[Sample]] | None = None,
                      dedup_config: Any | None = None, leakage_config: Any | None = None) -> Any:
        """Labels from a filled-in export: every row validated, accepted ones submitted (see `traces.relabel`)."""
        from tuneloop.traces.relabel import LabelCheck, import_label_file

        check = LabelCheck(schema, list(rules), frozen or {}, dedup_config, leakage_config)
        return import_label_file(self, path, check, annotator)

    def propose(self, endpoint: Any, check: Any, system: str = "", sop: str | None = None, limit: int | None = None,
                redo: bool = False, **params: Any) -> Any:
        """Proposed answers from an OpenAI-compatible model for the open rows (see `traces.relabel.propose_labels`)."""
        from tuneloop.traces.relabel import propose_labels

        return propose_labels(self, endpoint, check, system=system, sop=sop, limit=limit, redo=redo, **params)

    # -- out ----------------------------------------------------------------------------------------------------
    def accepted_samples(self) -> list[Sample]:
        """Submitted and reviewed labels as training samples, with their lineage (`accepted_sample`)."""
        return [accepted_sample(item) for item in self.items(status=ACCEPTED)]

    def write_relabeled(self, path: str | Path) -> tuple[Path, int]:
        """The accepted samples as tuneloop JSONL (atomically); returns the path and the row count."""
        from tuneloop.data.io.formats import write_samples

        samples = self.accepted_samples()
        return write_samples(path, samples), len(samples)


def _check_status(name: str) -> None:
    if name not in STATUSES:
        raise QueueError(f"unknown queue status {name!r}; choose from {', '.join(STATUSES)}.")


def accepted_sample(item: QueueItem) -> Sample:
    """A labeled queue row as a training sample.

    ```
    output, expected, sample_type   the label's (sample_type boundary/negative as the failure said, unless relabeled)
    rejected        the model's wrong answer (a DPO negative); none when the label confirms it
    meta            source "traffic" (eval variants keep their "eval:<name>"), annotator, reviewer
    lineage         source_id kept (trace:<trace id>, or the variant's own), parent_id = the queued sample,
                    augment_type "relabel"
    cluster         {"id", "name"} of the failure's cluster            (extra fields, kept by every stage)
    relabel         {"queue_id", "reasons", "proposed_by", "version", "labeled_at"}
    ```
    """
    sample = item.labeled()
    if sample.rejected is not None and sample.rejected.strip() == sample.output.strip():
        sample.rejected = None  # the relabeler confirmed the model's answer: no preference pair
    sample.meta = sample.meta.model_copy(update={
        "source": TRAFFIC if item.origin == TRAFFIC else sample.meta.source or item.origin,
        "annotator": item.annotator, "reviewer": item.reviewer})
    sample.lineage = sample.lineage.model_copy(update={"augment_type": RELABEL, "parent_id": item.sample.id,
                                                       "source_id": item.sample.lineage.source_id or item.sample.id})
    sample.cluster = {"id": item.cluster, "name": item.cluster_name}
    sample.relabel = {"queue_id": item.id, "reasons": item.reasons, "proposed_by": item.proposed_by,
                      "version": item.version, "labeled_at": item.updated_at}
    return sample
