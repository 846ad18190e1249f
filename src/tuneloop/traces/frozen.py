"""New rows against the frozen val/test items: which prompts are (near-)identical to one, by the gate's own measure.

```
new rows ┐                         exact   the same normalized prompt (`text.normalize`: width, case, whitespace)
         ├─▶ prompt_key_text ─▶    near    rensa MinHash LSH candidates (`dedup.candidate_pairs`), then the exact
frozen   ┘   normalized            Jaccard of their n-grams (`text.ngram_set`) ≥ data.dedup.threshold
         └─▶ the gate's leakage check (`leakage.find_leaks`: exact, near, shared n-grams), the very test by which
             the next gate would hold the row out of train
```

The prompt side is compared on its own: a relabel changes the answer, so a row whose prompt is a frozen item's is
that item under another label, whatever its answer says. The relabel import rejects such a row and `eval
export-bad --queue` does not queue such a variant, so no frozen val/test item reaches train through the loop, and
no label is spent on a row the gate would hold out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tuneloop.data.gate.dedup import candidate_pairs
from tuneloop.data.gate.leakage import find_leaks
from tuneloop.data.gate.split import EVAL_SPLITS, FrozenSplits
from tuneloop.data.gate.text import bulk_work, jaccard, ngram_set, ngram_table, normalize, normalize_many
from tuneloop.project import DedupConfig, LeakageConfig
from tuneloop.records import Sample


@dataclass(frozen=True)
class FrozenMatch:
    """The frozen item a new row's prompt matches, and how closely."""

    split: str
    frozen_id: str
    kind: str  # exact | near (the prompt alone), or a leakage kind: exact-row | exact-prompt | near | ngram-*
    similarity: float

    FIX = "a frozen val/test item never enters train; relabel a different message or discard this one"

    @property
    def message(self) -> str:
        if self.kind == "exact":
            how = "the same prompt as"
        elif self.kind.startswith("ngram"):
            how = f"text copied ({self.kind}, {self.similarity:.0%} of a row's n-grams) from"
        else:
            how = f"a prompt near-identical ({self.kind}, Jaccard {self.similarity:.2f}) to"
        return f"{how} frozen {self.split} item {self.frozen_id}"

    def reason(self) -> str:
        return f"{self.message}: {self.FIX}"


def prompt_similarity(a: Sample, b: Sample, config: DedupConfig | None = None) -> float:
    """Jaccard of two rows' normalized prompt n-grams (1.0 for the same normalized prompt), as dedup measures it.

    >>> one = Sample(input="My order A123 arrived broken, I want a refund please")
    >>> prompt_similarity(one, Sample(input="my order a123  arrived broken, i want a refund please"))
    1.0
    >>> prompt_similarity(one, Sample(input="Where is my parcel? It has been two weeks now")) < 0.2
    True
    """
    config = config or DedupConfig()
    left, right = normalize(a.prompt_key_text), normalize(b.prompt_key_text)
    if left == right:
        return 1.0
    return jaccard(ngram_set(left, config.char_ngram, config.word_ngram),
                   ngram_set(right, config.char_ngram, config.word_ngram))


def frozen_items(round_dir: str | Path | None) -> dict[str, list[Sample]]:
    """The val and test items of a round folder (empty when there is none)."""
    return FrozenSplits.from_round(Path(round_dir) if round_dir is not None else None).splits


def frozen_matches(rows: Sequence[Sample], frozen: Mapping[str, Sequence[Sample]], config: DedupConfig | None = None,
                   leakage: LeakageConfig | None = None) -> dict[int, FrozenMatch]:
    """Row index → the frozen item it repeats (the closest by prompt; else the gate's first leakage hit)."""
    config = config or DedupConfig()
    named = [(split, item) for split in (*EVAL_SPLITS, *(s for s in frozen if s not in EVAL_SPLITS))
             for item in frozen.get(split, ())]
    if not rows or not named:
        return {}
    with bulk_work():
        texts = normalize_many([r.prompt_key_text for r in rows] + [item.prompt_key_text for _, item in named])
        found: dict[int, FrozenMatch] = {}

        def keep(index: int, other: int, kind: str, similarity: float) -> None:
            split, item = named[other - len(rows)]
            best = found.get(index)
            if best is None or similarity > best.similarity:
                found[index] = FrozenMatch(split, item.id, kind, round(similarity, 4))

        by_text: dict[str, int] = {}
        for other in range(len(rows), len(texts)):
            by_text.setdefault(texts[other], other)
        for index in range(len(rows)):
            if texts[index] and texts[index] in by_text:
                keep(index, by_text[texts[index]], "exact", 1.0)
        table = ngram_table(texts, config.char_ngram, config.word_ngram)
        for a, b in candidate_pairs(table, config.threshold, config.num_perm).tolist():
            i, j = sorted((int(table.docs[a]), int(table.docs[b])))
            if not i < len(rows) <= j or (i in found and found[i].kind == "exact"):
                continue  # a pair of two new rows or two frozen ones, or a row already matched exactly
            score = jaccard(table.row_set(a), table.row_set(b))
            if score >= config.threshold:
                keep(i, j, "near", score)
    where = {item.id: (split, item) for split, item in named}
    at: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        at.setdefault(row.id, []).append(index)
    for hit in find_leaks(list(rows), {s: list(v) for s, v in frozen.items()}, leakage, config).hits:
        for index in at.get(hit.train_id, ()):
            if index not in found and hit.eval_id in where:
                found[index] = FrozenMatch(hit.eval_split, hit.eval_id, hit.kind, round(hit.similarity, 4))
    return found
