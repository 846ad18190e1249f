"""Duplicates: exact on normalized text, near-duplicates by MinHash LSH (rensa) verified by exact Jaccard.

```
samples ─▶ normalize prompt / output ─▶ exact groups: same whole row, or same prompt (different seeds)
        ─▶ one representative per group ─▶ n-gram hashes (char n-grams CJK, word n-grams Latin)
        ─▶ rensa MinHash + LSH flags ─▶ band buckets of the flagged rows ─▶ candidate pairs
        ─▶ exact Jaccard ≥ threshold (≥ same_seed_threshold for one seed's variants), same sample type
        ─▶ clusters (union-find) ─▶ keep the best copy: reviewed > annotated > original > augmented
```
Texts with fewer units than the n-gram size have no MinHash signature and are matched exactly only, so short
rows never collapse together through an empty signature.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tuneloop.data.text import NgramTable, bulk_work, jaccard, ngram_set, ngram_table, normalize_many
from tuneloop.project import DedupConfig
from tuneloop.records import Sample

MAX_BUCKET_PAIRS = 64  # a row is paired with at most this many bucket neighbours (bounds huge template buckets)


def quality(sample: Sample) -> int:
    """Which copy of a duplicate to keep: reviewed 3 > annotated 2 > original 1 > augmented 0."""
    if sample.meta.reviewer:
        return 3
    if sample.meta.annotator:
        return 2
    return 1 if not sample.lineage.augment_type else 0


def prompt_key_text(sample: Sample) -> str:
    """Everything the model reads before answering: system, earlier turns and the prompt."""
    if not sample.system and not sample.history:
        return sample.prompt
    history = "\n".join("\n".join(turn) for turn in sample.history)
    return "\n".join(part for part in (sample.system, history, sample.prompt) if part)


def normalized_fields(samples: Sequence[Sample]) -> tuple[list[str], list[str]]:
    """Normalized prompt side and answer side of every sample."""
    return normalize_many([prompt_key_text(s) for s in samples]), normalize_many([s.output for s in samples])


def lsh_bands(num_perm: int, threshold: float, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows per band) with bands × rows ≤ num_perm: the most rows per band (fewest chance candidates
    among rows that only share template text) whose LSH still finds pairs at `threshold` with probability ≥ recall.

    >>> lsh_bands(128, 0.8)
    (21, 6)
    """
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            best = (bands, rows)
    return best


def clusters_of(count: int, edges: np.ndarray) -> np.ndarray:
    """Connected components of `count` nodes joined by `edges` (pairs): a cluster label per node."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not len(edges):
        return np.arange(count)
    graph = coo_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(count, count))
    return connected_components(graph, directed=False)[1]


def _first_of(keys: Iterable, count: int) -> np.ndarray:
    """For each row, the index of the first row with the same key."""
    first: dict = {}
    return np.fromiter((first.setdefault(key, i) for i, key in enumerate(keys)), dtype=np.int64, count=count)


def _bucket_pairs(keys: np.ndarray) -> np.ndarray:
    """Pairs (i, j) of positions whose keys are equal, each row with at most MAX_BUCKET_PAIRS neighbours."""
    order = np.argsort(keys, kind="stable")
    ranked = keys[order]
    found = []
    for step in range(1, MAX_BUCKET_PAIRS + 1):
        same = np.flatnonzero(ranked[step:] == ranked[:-step])
        if not len(same):
            break
        found.append(np.stack([order[same], order[same + step]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)


def candidate_pairs(table: NgramTable, threshold: float, num_perm: int = 128, seed: int = 0) -> np.ndarray:
    """Row pairs (into `table`) that share an LSH band: rensa flags the rows, their band buckets give the pairs."""
    from rensa import RMinHash, RMinHashLSH

    if len(table) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    bands, rows = lsh_bands(num_perm, threshold)
    num_perm = bands * rows
    offsets = table.offsets.astype(np.uint64)
    matrix = RMinHash.digest_matrix_from_flat_token_hashes(table.hashes, offsets, num_perm, seed)
    flags = np.asarray(RMinHashLSH(threshold, num_perm, bands).query_duplicate_flags_matrix_one_shot(matrix), bool)
    flagged = np.flatnonzero(flags)
    if len(flagged) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    sub = table.subset(flagged)
    digests = np.array(
        RMinHash.digest_matrix_from_flat_token_hashes(sub.hashes, sub.offsets.astype(np.uint64), num_perm, seed).to_rows(),
        dtype=np.uint64,
    )
    found = []
    for band in range(bands):
        block = digests[:, band * rows:(band + 1) * rows]
        with np.errstate(over="ignore"):
            key = np.zeros(len(block), dtype=np.uint64)
            for column in range(rows):
                key = key * np.uint64(0x100000001B3) + block[:, column]
        found.append(_bucket_pairs(key))
    pairs = np.sort(np.concatenate(found), axis=1)
    codes = np.unique(pairs[:, 0] * len(flagged) + pairs[:, 1])  # one int per pair: a 1-d unique is fast
    return flagged[np.stack([codes // len(flagged), codes % len(flagged)], axis=1)]


@dataclass
class RemovedDuplicate:
    sample: Sample
    kept_id: str
    kind: str  # exact-row | exact-prompt | near
    similarity: float


@dataclass
class DedupResult:
    kept: list[Sample]
    removed: list[RemovedDuplicate] = field(default_factory=list)
    clusters: list[dict] = field(default_factory=list)  # kept id, size, kind, member ids

    @property
    def cluster_sizes(self) -> dict[int, int]:
        sizes: dict[int, int] = {}
        for cluster in self.clusters:
            sizes[cluster["size"]] = sizes.get(cluster["size"], 0) + 1
        return dict(sorted(sizes.items()))


def exact_edges(types: Sequence[str], prompts: list[str], outputs: list[str], seeds: Sequence) -> np.ndarray:
    """Pairs of rows that are exact duplicates: the same whole row, or the same prompt from different seeds."""
    rows = np.arange(len(prompts))
    count = len(prompts)
    same_row = _first_of(zip(types, prompts, outputs), count)
    edges = [np.stack([same_row, rows], axis=1)[same_row != rows]]
    same_prompt = _first_of(zip(types, prompts), count)
    same_seed = _first_of(zip(types, prompts, seeds), count)
    # the first row of each seed joins the first row of its prompt; one seed's variants must pass the near bar
    seed_heads = (same_seed == rows) & (same_prompt != rows) & (np.asarray([bool(p) for p in prompts]))
    edges.append(np.stack([same_prompt, rows], axis=1)[seed_heads])
    return np.concatenate(edges)


def dedup(samples: Sequence[Sample], config: DedupConfig | None = None) -> DedupResult:
    """Remove exact and near duplicates, keeping the best copy of each cluster (order of `kept` preserved)."""
    with bulk_work():
        return _dedup(samples, config)


def _dedup(samples: Sequence[Sample], config: DedupConfig | None) -> DedupResult:
    config = config or DedupConfig()
    count = len(samples)
    if not count:
        return DedupResult(kept=[])
    prompts, outputs = normalized_fields(samples)
    types = [s.sample_type for s in samples]
    seeds = [s.lineage.source_id for s in samples]
    edges = exact_edges(types, prompts, outputs, seeds)
    labels = clusters_of(count, edges)
    _, heads = np.unique(labels, return_index=True)
    texts = [prompts[i] + "\n" + outputs[i] for i in heads.tolist()]
    table = ngram_table(texts, config.char_ngram, config.word_ngram)
    similarity: dict[tuple[int, int], float] = {}
    near = []
    sets: dict[int, set[int]] = {}
    for a, b in candidate_pairs(table, min(config.threshold, config.same_seed_threshold), config.num_perm).tolist():
        i, j = int(heads[table.docs[a]]), int(heads[table.docs[b]])
        if types[i] != types[j]:
            continue
        score = jaccard(sets.get(a) or sets.setdefault(a, table.row_set(a)), sets.get(b) or sets.setdefault(b, table.row_set(b)))
        if score >= (config.same_seed_threshold if seeds[i] == seeds[j] else config.threshold):
            near.append((i, j))
            similarity[(min(i, j), max(i, j))] = score
    if near:
        labels = clusters_of(count, np.concatenate([edges, np.array(near, dtype=np.int64)]))
    return _keep_best(samples, labels, prompts, outputs, similarity, config)


def _keep_best(samples: Sequence[Sample], labels: np.ndarray, prompts: list[str], outputs: list[str],
               similarity: dict[tuple[int, int], float], config: DedupConfig) -> DedupResult:
    sizes = np.bincount(labels)
    in_cluster = np.flatnonzero(sizes[labels] > 1)
    members: dict[int, list[int]] = {}
    for index in in_cluster.tolist():
        members.setdefault(int(labels[index]), []).append(index)
    drop: set[int] = set()
    result = DedupResult(kept=[])
    for cluster in members.values():
        best = max(cluster, key=lambda i: (quality(samples[i]), -i))
        kinds = set()
        for index in cluster:
            if index == best:
                continue
            if prompts[index] == prompts[best]:
                kind = "exact-row" if outputs[index] == outputs[best] else "exact-prompt"
                score = 1.0
            else:
                kind = "near"
                score = similarity.get((min(index, best), max(index, best))) or jaccard(
                    *(ngram_set(prompts[i] + "\n" + outputs[i], config.char_ngram, config.word_ngram) for i in (index, best)))
            kinds.add(kind)
            drop.add(index)
            result.removed.append(RemovedDuplicate(samples[index], samples[best].id, kind, round(score, 4)))
        result.clusters.append({
            "kept": samples[best].id, "size": len(cluster), "kind": "+".join(sorted(kinds)),
            "members": [samples[i].id for i in cluster],
        })
    result.kept = [s for i, s in enumerate(samples) if i not in drop]
    result.clusters.sort(key=lambda c: -c["size"])
    return result
