"""The annotation tool's queues over a project's trace store, and what it reports and exports.

```
queue       table           rows                                            next round
seed        seed_queue      the project's data.sources, as the tool found   write_seed_set: the whole seed set with
                            them (added once, idempotent by sample id)      accepted labels applied, discarded rows out
relabel     relabel_queue   traffic failures (origin traffic), with their   `tuneloop loop` reads the accepted rows of
                            cluster and reasons                             the queue itself (traffic split stage)
bad-cases   relabel_queue   eval failures as new variants (origin eval:…)   the same
review      both            submitted labels waiting for a reviewer
```
States are the queue's: pending → draft → submitted → reviewed, or discarded; a rejected label goes back to draft
with the reviewer's comment. Every submitted label is also kept in `annotations` (who, which label, which version),
so two annotators' labels of one sample can be compared (`agreement`). Labels are checked by the one label check
(`traces.relabel.LabelCheck`: `annotate/rules.py` and the frozen val/test items); saving goes through
`RelabelQueue.save`, so a stale version is a conflict, never a lost update.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable
from itertools import combinations
from pathlib import Path
from typing import Any

from tuneloop.answers import parse_json
from tuneloop.project import Project
from tuneloop.records import Sample
from tuneloop.traces.queue import ACCEPTED, Label, QueueError, QueueItem, RelabelQueue, accepted_sample
from tuneloop.traces.relabel import LabelCheck

QUEUES = ("seed", "relabel", "bad-cases", "review")
KINDS = {"seed": "seed_queue", "relabel": "relabel_queue"}  # an item's kind names its table in the API
STATES = {"pending": "Pending", "draft": "Draft", "submitted": "Submitted", "reviewed": "Reviewed",
          "discarded": "Discarded"}
FILTERS = ("status", "task_type", "source", "cluster", "difficulty", "sample_type")
META_FIELDS = ("task_type", "difficulty", "domain")
SEED = "seed"
SEED_SET_FILE = Path("data") / "annotated" / "seed.jsonl"


class AnnotateError(QueueError):
    """A request the annotation tool refuses (unknown queue or filter), with what to do."""


def current_sample(item: QueueItem) -> Sample:
    """What the form shows: the item's label applied when it has one, else the queued sample."""
    return item.labeled() if item.label is not None else item.sample


def label_from_form(item: QueueItem, form: dict[str, Any]) -> Label:
    """The label the form's fields stand for; prompt and metadata only where they differ from the queued sample."""
    original = item.sample
    meta = {k: form["meta"][k] or None for k in META_FIELDS
            if k in (form.get("meta") or {}) and (form["meta"][k] or None) != getattr(original.meta, k)}
    return Label(
        output=str(form.get("output", "")),
        expected=form.get("expected") or None,
        sample_type=form.get("sample_type") or None,
        instruction=form["instruction"] if form.get("instruction", original.instruction) != original.instruction else None,
        input=form["input"] if form.get("input", original.input) != original.input else None,
        meta=meta or None,
    )


class Queues:
    """The seed set and the relabel queue of one project's store, as the annotation tool shows them."""

    def __init__(self, project: Project, store: Any):
        self.project = project
        self.store = store
        self.tables = {kind: RelabelQueue(store, table) for kind, table in KINDS.items()}
        relabel = LabelCheck.for_project(project)
        # a seed row may itself be a frozen val/test item: correcting it is correcting the rounds' source (the gate
        # keeps a frozen item in its split with its newest answer); traffic and eval variants must not repeat one
        self.checks = {"relabel": relabel, "seed": LabelCheck(relabel.schema, relabel.rules, {}, relabel.dedup)}

    # -- the seed set -----------------------------------------------------------------------------------------
    def _sources(self) -> tuple[list[Sample], int, list[str]]:
        """Every sample of data.sources in order, the rows that do not read as samples, and notes on both."""
        from tuneloop.data.io.formats import read_samples

        samples: list[Sample] = []
        unreadable, notes = 0, []
        for source in self.project.config.data.sources:
            path = self.project.path(source.path)
            if not path.is_file():
                notes.append(f"{path}: not a file (a folder source is annotated from its files); left out")
                continue
            read = read_samples(path)
            if read.quarantined:
                unreadable += len(read.quarantined)
                notes.append(f"{path}: {len(read.quarantined)} rows do not read as samples (the gate quarantines "
                             "them too); left out")
            samples += read.samples
        return samples, unreadable, notes

    def add_seed_set(self) -> tuple[int, list[str]]:
        """Queue every sample of data.sources (new ids only); returns how many were new, and notes."""
        samples, _unreadable, notes = self._sources()
        unique: dict[str, Sample] = {}
        for sample in samples:
            unique.setdefault(sample.id, sample)
        if len(unique) < len(samples):
            notes.append(f"{len(samples) - len(unique)} rows repeat another row's id: one item each id (its label "
                         "applies to every copy)")
        added = self.tables["seed"].add_samples(list(unique.values()), SEED, [[] for _ in unique])
        return added, notes

    def write_seed_set(self, path: Path | None = None) -> dict[str, Any]:
        """The seed set as data.sources hold it now, in their order, with accepted labels applied and discarded
        rows left out: rows in = unchanged + corrected + discarded + unreadable (the gate quarantines those)."""
        from tuneloop.data.io.formats import write_samples

        samples, unreadable, notes = self._sources()
        items = {item.id: item for item in self.tables["seed"].items()}
        rows, counts = [], {"rows": len(samples) + unreadable, "unchanged": 0, "corrected": 0, "discarded": 0,
                            "unreadable": unreadable}
        for sample in samples:
            item = items.get(sample.id)
            if item is not None and item.status == "discarded":
                counts["discarded"] += 1
            elif item is not None and item.status in ACCEPTED:
                rows.append(labeled_sample("seed", item))
                counts["corrected"] += 1
            else:
                rows.append(sample)
                counts["unchanged"] += 1
        target = self.project.path(path or SEED_SET_FILE)
        write_samples(target, rows)
        return {"path": str(target), "counts": counts, "notes": notes}

    # -- reading ------------------------------------------------------------------------------------------------
    def table(self, kind: str) -> RelabelQueue:
        if kind not in self.tables:
            raise AnnotateError(f"no item kind {kind!r}; use one of {', '.join(self.tables)}.")
        return self.tables[kind]

    def get(self, kind: str, item_id: str) -> QueueItem:
        return self.table(kind).get(item_id)

    def members(self, queue: str) -> Iterable[tuple[str, QueueItem]]:
        if queue not in QUEUES:
            raise AnnotateError(f"no queue {queue!r}; use one of {', '.join(QUEUES)}.")
        if queue == "review":
            for kind, table in self.tables.items():
                yield from ((kind, item) for item in table.items(status="submitted"))
            return
        kind = "seed" if queue == "seed" else "relabel"
        for item in self.tables[kind].items():
            if queue == "relabel" and item.origin.startswith("eval"):
                continue
            if queue == "bad-cases" and not item.origin.startswith("eval"):
                continue
            yield kind, item

    def listing(self, queue: str, filters: dict[str, str]) -> dict[str, Any]:
        """A queue's items (summaries) matching the filters, and every filter's values in the whole queue."""
        unknown = sorted(set(filters) - set(FILTERS))
        if unknown:
            raise AnnotateError(f"unknown filter {', '.join(unknown)}; filter by {', '.join(FILTERS)}.")
        rows = [summary(kind, item) for kind, item in self.members(queue)]
        facets = {name: sorted({str(r[name]) for r in rows if r[name] not in (None, "")}) for name in FILTERS}
        chosen = [r for r in rows if all(str(r[k]) == v for k, v in filters.items() if v)]
        return {"queue": queue, "items": chosen, "total": len(rows), "facets": facets}

    def detail(self, kind: str, item: QueueItem, role: str) -> dict[str, Any]:
        sample = current_sample(item)
        out = summary(kind, item)
        out.update({
            "sample": sample.model_dump(mode="json"),
            "queued_sample": item.sample.model_dump(mode="json"),
            "model_answer": item.sample.rejected,
            "model_answer_kind": "rejected answer (preference negative)" if kind == "seed" else "the model's answer",
            "proposal": item.proposal, "proposed_by": item.proposed_by,
            "comment": item.comment, "created_at": item.created_at,
            "failure": getattr(item.sample, "failure", None),
        })
        if role == "reviewer":
            out["labels"] = self.submitted_labels(kind, item.id)
        return out

    # -- writing ------------------------------------------------------------------------------------------------
    def problems(self, kind: str, item: QueueItem, form: dict[str, Any]) -> list[dict[str, str]]:
        label = label_from_form(item, form)
        return [vars(p) for p in self.checks[kind].problems([item.labeled(label)])[0]]

    def save(self, kind: str, item_id: str, form: dict[str, Any], version: int, user: str, status: str) -> QueueItem:
        """Save the form as a draft / submitted / discarded label (submitting runs the label check first)."""
        table = self.table(kind)
        item = table.get(item_id)
        label = label_from_form(item, form)
        # a comment stays on the row (a reviewer's reason for a reject) until someone writes another
        saved = table.save(item_id, label, version, annotator=user, status=status,
                           check=self.checks[kind] if status == "submitted" else None,
                           comment=form.get("comment") or item.comment)
        if status == "submitted":
            self.store.query("INSERT INTO annotations (queue, item_id, annotator, label, version, created_at) "
                             "VALUES (?,?,?,?,?,?)", (kind, item_id, user, label.model_dump_json(), saved.version,
                                                      time.time()))
        return saved

    def review(self, kind: str, item_id: str, version: int, user: str, accept: bool, comment: str | None) -> QueueItem:
        return self.table(kind).review(item_id, version, user, accept, comment)

    # -- agreement ----------------------------------------------------------------------------------------------
    def submitted_labels(self, kind: str, item_id: str) -> list[dict[str, Any]]:
        rows = self.store.query("SELECT annotator, label, version, created_at FROM annotations WHERE queue=? AND "
                                "item_id=? ORDER BY id", (kind, item_id))
        return [{"annotator": a, "output": Label.model_validate_json(label).output, "version": v, "at": at}
                for a, label, v, at in rows]

    def agreement(self) -> dict[str, Any]:
        """Agreement of every two annotators on the samples both labeled (each one's latest submitted label)."""
        latest: dict[tuple[str, str], dict[str, Label]] = defaultdict(dict)
        for queue, item_id, annotator, label in self.store.query(
                "SELECT queue, item_id, annotator, label FROM annotations ORDER BY id"):
            latest[(queue, item_id)][annotator] = Label.model_validate_json(label)
        schema = self.project.schema() or {}
        return agreement_report(latest, schema)


def labeled_sample(kind: str, item: QueueItem) -> Sample:
    """An accepted label as a training sample: the relabel queue's lineage (`accepted_sample`) for traffic and eval
    variants; a seed keeps its own lineage (it is the same row, corrected), its annotator and reviewer."""
    sample = accepted_sample(item)
    if kind == "seed":
        sample.lineage = item.sample.lineage.model_copy()
        sample.meta.source = item.sample.meta.source
        del sample.cluster
    return sample


def summary(kind: str, item: QueueItem) -> dict[str, Any]:
    sample = current_sample(item)
    return {
        "kind": kind, "id": item.id, "status": item.status, "state": STATES.get(item.status, item.status),
        "origin": item.origin, "reasons": item.reasons, "cluster": item.cluster_name or item.cluster,
        "input": sample.input[:160] or sample.instruction[:160], "task_type": sample.meta.task_type,
        "source": sample.meta.source or item.origin, "difficulty": sample.meta.difficulty,
        "sample_type": sample.sample_type, "expected": sample.expected, "annotator": item.annotator,
        "reviewer": item.reviewer, "version": item.version, "updated_at": item.updated_at,
    }


def _answer(label: Label) -> Any:
    ok, value = parse_json(label.output)
    return value if ok else label.output.strip()


def agreement_report(latest: dict[tuple[str, str], dict[str, Label]], schema: dict[str, Any]) -> dict[str, Any]:
    """Per pair of annotators: shared samples, exact agreement (answer and expected), per-field agreement, and
    Cohen's kappa for each enum field and for `expected` (None where every label is one value: kappa is undefined).

    >>> a, b = Label(output='{"k": "x"}', expected="answer"), Label(output='{"k": "y"}', expected="answer")
    >>> report = agreement_report({("seed", "1"): {"ann": a, "bob": b}, ("seed", "2"): {"ann": a, "bob": a}},
    ...                           {"properties": {"k": {"enum": ["x", "y"]}}})
    >>> pair = report["pairs"][0]
    >>> pair["shared"], pair["exact"], pair["fields"]["k"]["agree"]
    (2, 0.5, 1)
    """
    from sklearn.metrics import cohen_kappa_score

    properties = schema.get("properties") or {}
    enums = [k for k, spec in properties.items() if isinstance(spec, dict) and "enum" in spec]
    pairs: dict[tuple[str, str], list[tuple[Label, Label]]] = defaultdict(list)
    for labels in latest.values():
        for first, second in combinations(sorted(labels), 2):
            pairs[(first, second)].append((labels[first], labels[second]))
    report = []
    for (first, second), shared in sorted(pairs.items()):
        answers = [(_answer(x), _answer(y)) for x, y in shared]
        exact = sum(ax == ay and x.expected == y.expected for (ax, ay), (x, y) in zip(answers, shared))
        fields = {}
        for key in properties:
            values = [(ax.get(key) if isinstance(ax, dict) else None, ay.get(key) if isinstance(ay, dict) else None)
                      for ax, ay in answers]
            fields[key] = {"agree": sum(x == y for x, y in values), "total": len(values),
                           "kappa": _kappa(values, cohen_kappa_score) if key in enums else None}
        expected = [(x.expected or "answer", y.expected or "answer") for x, y in shared]
        fields["expected"] = {"agree": sum(x == y for x, y in expected), "total": len(expected),
                              "kappa": _kappa(expected, cohen_kappa_score)}
        report.append({"annotators": [first, second], "shared": len(shared), "exact": exact / len(shared),
                       "fields": fields})
    return {"pairs": report, "shared_samples": sum(len(v) >= 2 for v in latest.values())}


def _kappa(values: list[tuple[Any, Any]], score: Any) -> float | None:
    first = [json.dumps(x, ensure_ascii=False) for x, _ in values]
    second = [json.dumps(y, ensure_ascii=False) for _, y in values]
    if len(set(first) | set(second)) < 2:
        return None
    return round(float(score(first, second)), 4)
