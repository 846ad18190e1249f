"""Traffic back into data, the stages of a `tuneloop loop` cycle before its gate (see `tuneloop.loop_traffic`).

```
 stage           key = sha256 of (inputs, settings)                     writes                                   says no
 ─────────────────────────────────────────────────────────────────────────────────────────────────────────────────────
 traces pull     loop.traces (runs every time: only the source knows    traces.db (idempotent by source_id)
                 what is new)
 select          the store's traces + feedback, loop.select, pii, dedup loop/traffic/failures.jsonl
 cluster         failures.jsonl + loop.cluster                          loop/traffic/clusters.json, clusters.html
 relabel         failures + clusters + --labels FILE                    relabel queue; relabel-export.jsonl      no label,
                                                                                                                 a bad one
 traffic split   the queue's accepted rows + loop.holdout               data/traffic/relabeled.jsonl (train part),
                                                                        data/traffic/holdout.jsonl, split.json
 ─────────────────────────────────────────────────────────────────────────────────────────────────────────────────────
```
There is no round yet: these stages remember their work in loop/traffic/state.json.

The traffic holdout is a fresh test slice of relabeled traffic, split by lineage group (`data.split.group_by`): a
group keeps its side in every later cycle (loop/traffic/split.json), so an item once held out is never trained on.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuneloop.files import read_json, write_json
from tuneloop.loop import Inputs, LoopError, Round, RoundRefused, RoundState, Stage
from tuneloop.loop_rounds import current_model
from tuneloop.project import Project

TRAFFIC = "traffic"

# -- where the cycle writes ------------------------------------------------------------------------------------------
def traffic_dir(project: Project) -> Path:
    """loop/traffic/: failures, clusters, the relabel export, the split memory, the pre-gate stages' state."""
    return project.root / "loop" / TRAFFIC


def traffic_data_dir(project: Project) -> Path:
    """data/traffic/: relabeled.jsonl (what trains) and holdout.jsonl (what tests)."""
    return project.root / "data" / TRAFFIC


def relabeled_file(project: Project) -> Path:
    return project.relabeled_file


def holdout_file(project: Project) -> Path:
    return traffic_data_dir(project) / "holdout.jsonl"


def traffic_memory(round_: Round) -> RoundState:
    return RoundState(traffic_dir(round_.project) / "state.json")

# -- the stages before the gate -------------------------------------------------------------------------------------
def _store(round_: Round) -> Any:
    from tuneloop.traces.store import TraceStore

    return TraceStore(round_.project.traces_db)


def store_fingerprint(project: Project) -> list[Any]:
    """What the store holds, in a few numbers: a select over an unchanged store is reused."""
    if not project.traces_db.exists():
        return [0, None, 0, None]
    from tuneloop.traces.store import TraceStore

    with TraceStore(project.traces_db) as store:
        traces = store.query("SELECT COUNT(*), MAX(created_at), MAX(rowid) FROM traces")[0]
        feedback = store.query("SELECT COUNT(*), MAX(id) FROM feedback")[0]
    return [*traces, *feedback]


def _since(round_: Round) -> float | None:
    days = round_.config.loop.since_days
    return None if days is None else time.time() - days * 86400


def pull(round_: Round) -> dict[str, Any]:
    """Every source of `loop.traces` into the project's store (idempotent by source_id; incremental)."""
    from tuneloop.traces.pull import pull_traces

    config, project = round_.config.loop, round_.project
    pulled: dict[str, Any] = {}
    with _store(round_) as store:
        for source in config.traces:
            where = source if source in ("store", "langfuse") else str(project.path(source))
            result = pull_traces(store, where, config, say=round_.say)  # from where its last pull ended
            pulled[source] = {"pulled": result.pulled, "skipped_existing": result.skipped_existing,
                              "feedback": result.feedback, "warnings": list(result.warnings)}
            for warning in result.warnings:
                round_.say(f"[traces pull] {source}: {warning}")
    return {"sources": pulled}


def _pull_done(outputs: dict[str, Any]) -> str:
    return "; ".join(f"{source}: {v['pulled']} new, {v['skipped_existing']} already here, {v['feedback']} feedback"
                     for source, v in outputs["sources"].items())


def select(round_: Round) -> dict[str, Any]:
    """The failures in the traffic, with their reasons, redacted and deduplicated → loop/traffic/failures.jsonl."""
    from tuneloop.traces.select import failures_path, select_project_failures, write_failures

    project = round_.project
    if not project.traces_db.exists():
        raise LoopError(f"{project.traces_db}: no trace store yet; serve the model (`tuneloop serve`) or list where "
                        "traffic comes from under loop.traces in tuneloop.yaml.")
    selection = select_project_failures(project, _since(round_))
    target = write_failures(failures_path(project), selection.failures)
    return {"failures_file": str(target), "counts": dict(selection.counts), "summary": selection.summary(),
            "reasons": dict(selection.reasons)}


def _select_inputs(round_: Round) -> Inputs:
    config = round_.config
    return Inputs([], [store_fingerprint(round_.project), config.loop.select.model_dump(mode="json"),
                       config.loop.since_days, config.data.pii.model_dump(mode="json"),
                       config.data.dedup.model_dump(mode="json"), config.task.system, round_.schema])


def cluster(round_: Round) -> dict[str, Any]:
    """The failures grouped into named clusters → loop/traffic/clusters.json + clusters.html."""
    from tuneloop.traces.cluster import cluster_failures, cluster_report, write_clusters
    from tuneloop.traces.select import load_failures

    failures = load_failures(_failures_file(round_))
    clustering = cluster_failures(failures, round_.config.loop.cluster)
    folder = traffic_dir(round_.project)
    clusters_file = write_clusters(folder / "clusters.json", clustering)
    report_file = cluster_report(clustering, failures, folder / "clusters.html")
    return {"clusters_file": str(clusters_file), "report_file": str(report_file), "clusters": clustering.k,
            "failures": len(failures), "names": {str(c.id): c.name for c in clustering.clusters}}


def _failures_file(round_: Round) -> Path:
    from tuneloop.traces.select import failures_path

    return failures_path(round_.project)


def relabel(round_: Round) -> dict[str, Any]:
    """Queue the failures; import `--labels FILE`; export what still waits; refuse when nothing is relabeled."""
    from tuneloop.traces.cluster import load_clustering
    from tuneloop.traces.queue import OPEN, RelabelQueue
    from tuneloop.traces.relabel import LabelCheck, import_label_file
    from tuneloop.traces.select import load_failures

    project, labels = round_.project, getattr(round_.options, "labels", None)
    folder = traffic_dir(project)
    export_file = folder / "relabel-export.jsonl"
    failures = load_failures(_failures_file(round_))
    clusters_file = folder / "clusters.json"
    clustering = load_clustering(clusters_file) if clusters_file.exists() else None
    if clustering is not None and clustering.trace_ids != [f.trace_id for f in failures]:
        clustering = None  # clusters of other failures (cluster was left out): queue without them
    rejected: list[Any] = []
    imported = 0
    with _store(round_) as store:
        queue = RelabelQueue(store)
        queued = queue.add_failures(failures, clustering)
        if labels is not None:
            # the label rules, and the latest round's frozen val/test items (a label repeating one is rejected)
            result = import_label_file(queue, labels, LabelCheck.for_project(project))
            imported, rejected = len(result.accepted), list(result.rejected)
        exported = queue.export(export_file)
        counts = queue.counts()
    accepted = counts["submitted"] + counts["reviewed"]
    pending = sum(counts[s] for s in OPEN)
    outputs = {"queued": queued, "imported": imported, "rejected": len(rejected), "accepted": accepted,
               "pending": pending, "exported": exported, "queue": counts, "export_file": str(export_file)}
    if rejected:  # bad input stops the cycle, each row named; the rows that passed are already in the queue
        raise RoundRefused("relabel", [f"{labels}, line {line} ({item_id}): {reason}" for line, item_id, reason in
                                       rejected],
                           f"fix those rows of {labels} (the other {imported} labels were accepted) and rerun "
                           f"`tuneloop loop --labels {labels}`.", outputs)
    if not accepted and not pending:
        raise RoundRefused("relabel", ["no failures in the traffic and no relabeled rows yet"],
                           f"serve the current model (`tuneloop serve --model {current_model(project)}`) or list "
                           "where traffic comes from under loop.traces in tuneloop.yaml, then rerun `tuneloop loop`.",
                           outputs)
    if not accepted:
        raise RoundRefused("relabel", [f"no accepted relabeled rows: {pending} failures wait in the relabel queue"],
                           f"fill in the right answer of each row of {export_file} (its `output` field, the answer "
                           "as the schema and the SOP want it, and `annotator`) and import it with `tuneloop loop --labels "
                           f"{export_file}` (or `tuneloop loop relabel --import FILE`; `tuneloop loop relabel "
                           "--propose` lets an LLM endpoint propose labels for review).", outputs)
    return outputs


def _relabel_inputs(round_: Round) -> Inputs:
    # the queue itself is not part of the key (this stage changes it); the split after it reads the queue
    labels = getattr(round_.options, "labels", None)
    files = [p for p in (_failures_file(round_), traffic_dir(round_.project) / "clusters.json") if p.exists()]
    return Inputs(files + ([Path(labels)] if labels else []), round_.config.annotate.model_dump(mode="json"))


def queue_fingerprint(project: Project) -> list[Any]:
    """The relabel queue in a few numbers (rows per status, last change)."""
    if not project.traces_db.exists():
        return []
    from tuneloop.traces.store import TraceStore

    with TraceStore(project.traces_db) as store:
        return [list(r) for r in store.query("SELECT status, COUNT(*), MAX(updated_at), SUM(version) FROM "
                                             "relabel_queue GROUP BY status ORDER BY status")]


def _relabel_done(outputs: dict[str, Any]) -> str:
    return (f"{outputs['queued']} queued, {outputs['imported']} imported, {outputs['rejected']} rejected; "
            f"{outputs['accepted']} accepted, {outputs['pending']} pending")


def split_traffic(samples: Sequence[Any], share: float, sides: dict[str, str], group_by: str = "lineage.source_id",
                  seed: int = 0) -> tuple[list[Any], list[Any], dict[str, str]]:
    """(train, holdout, sides): relabeled rows cut by lineage group into a train part and a held-out slice.

    A group already in `sides` keeps its side; new groups are ordered by a seeded hash of the group and the first
    ones go to the holdout until it holds `share` of all groups (rounded half up). So the split is stable, and an
    item once held out never moves to train, whatever later cycles add.

    >>> from tuneloop.records import Sample
    >>> rows = [Sample(id=f"t{i}", input=f"message {i}", output="{}") for i in range(8)]
    >>> train, holdout, sides = split_traffic(rows, 0.25, {})
    >>> len(train), len(holdout)
    (6, 2)
    >>> split_traffic(rows + [Sample(id="t9", input="new", output="{}")], 0.25, sides)[1] == holdout
    True
    """
    from tuneloop.data.gate.split import group_value

    sides = dict(sides)
    groups = {group_value(s, group_by) for s in samples}
    fresh = sorted(groups - set(sides), key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    held = sum(1 for g in groups if sides.get(g) == "holdout")
    want = math.floor(share * len(groups) + 0.5) if share > 0 else 0
    for group in fresh:
        sides[group] = "holdout" if held < want else "train"
        held += sides[group] == "holdout"
    train = [s for s in samples if sides[group_value(s, group_by)] == "train"]
    holdout = [s for s in samples if sides[group_value(s, group_by)] == "holdout"]
    return train, holdout, sides


def traffic_split(round_: Round) -> dict[str, Any]:
    """The queue's accepted rows → data/traffic/relabeled.jsonl (train part) and holdout.jsonl (fresh test slice)."""
    from tuneloop.data.io.formats import load_samples, write_samples
    from tuneloop.traces.queue import RelabelQueue

    project = round_.project
    with _store(round_) as store:
        accepted = RelabelQueue(store).accepted_samples()
    memory_file = traffic_dir(project) / "split.json"
    sides = read_json(memory_file)["groups"] if memory_file.exists() else {}
    group_by = round_.config.data.split.group_by
    if holdout_file(project).exists():  # the holdout file is the truth about what was held out
        from tuneloop.data.gate.split import group_value

        sides.update({group_value(s, group_by): "holdout" for s in load_samples(holdout_file(project))})
    train, holdout, sides = split_traffic(accepted, round_.config.loop.holdout, sides, group_by,
                                          round_.config.data.split.seed)
    write_samples(relabeled_file(project), train)
    write_samples(holdout_file(project), holdout)
    write_json(memory_file, {"group_by": group_by, "groups": dict(sorted(sides.items()))})
    return {"train_file": str(relabeled_file(project)), "holdout_file": str(holdout_file(project)),
            "counts": {"accepted": len(accepted), "train": len(train), "holdout": len(holdout)}}


def _split_inputs(round_: Round) -> Inputs:
    config = round_.config
    return Inputs([], [queue_fingerprint(round_.project), config.loop.holdout, config.data.split.group_by,
                       config.data.split.seed])


INTAKE_STAGES: list[Stage] = [
    Stage("traces pull", lambda r: Inputs([], [r.config.loop.traces, time.time()]), pull, may_skip=True,
          memory=traffic_memory, done_line=_pull_done),
    Stage("select", _select_inputs, select, may_skip=True, memory=traffic_memory,
          done_line=lambda o: o["summary"]),
    Stage("cluster", lambda r: Inputs([_failures_file(r)], r.config.loop.cluster.model_dump(mode="json")), cluster,
          may_skip=True, memory=traffic_memory, done_line=lambda o: f"{o['clusters']} clusters → {o['report_file']}"),
    Stage("relabel", _relabel_inputs, relabel, may_skip=True, memory=traffic_memory, done_line=_relabel_done),
    Stage("traffic split", _split_inputs, traffic_split, memory=traffic_memory,
          done_line=lambda o: ", ".join(f"{k} {v}" for k, v in o["counts"].items())),
]
