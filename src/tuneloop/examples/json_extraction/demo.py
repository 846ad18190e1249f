"""`tuneloop init DIR --example json-extraction`: the demo project, its verified seed set and its config.

```
DIR/
  tuneloop.yaml            every key with its help; task, data source, CPU-sized train/eval settings
  schemas/ticket.json      the answer's JSON Schema (with the refusal under x-refusal)
  sop.md                   the annotation SOP, written from the schema, with examples from the seed set
  pools/entities.json      entity pools for `tuneloop data augment` (entity replacement)
  synth.py                 the generator spec `tuneloop data synth` runs
  data/raw/seed.jsonl      seeds (golden 40 % / negative 20 % / boundary 30 % / generic 10 %) + 3 clone variants each
  data/raw/seed.quarantine.jsonl   generated rows that failed verification or the answer contract (normally empty)
```
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from tuneloop.data.create.augment import augment_samples
from tuneloop.data.io.formats import write_quarantine, write_samples
from tuneloop.annotate.sop import pick_examples, render_sop
from tuneloop.data.create.synth import SynthResult, keep_verified
from tuneloop.examples.json_extraction import INSTRUCTION, SYSTEM, TASK_NAME, schema_text, synth_spec
from tuneloop.examples.json_extraction.templates import ENTITY_POOLS, GENERIC, GOLDEN, NEGATIVE, OUT_OF_SCOPE
from tuneloop.files import write_json, write_text
from tuneloop.project import PROJECT_FILE, ProjectConfig, ProjectError, dump_config
from tuneloop.records import Lineage, QuarantinedRow, Sample

MIX = {"golden": 0.4, "negative": 0.2, "boundary": 0.3, "generic": 0.1}
REFUSE_SHARE_OF_BOUNDARY = 0.55
SEED_FILE = "data/raw/seed.jsonl"

SYNTH_PY = '''"""The demo's data generator. `tuneloop data synth --n 200 --out data/raw/synth.jsonl` runs SPEC.

Copy the templates from tuneloop.examples.json_extraction.templates to grow or change the data set.
"""

from tuneloop.examples.json_extraction import synth_spec

SPEC = synth_spec()
'''


def quotas(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Largest-remainder split of `total` by `shares` (counts add up to `total` exactly)."""
    raw = {k: total * v / sum(shares.values()) for k, v in shares.items()}
    counts = {k: int(v) for k, v in raw.items()}
    for key in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[: total - sum(counts.values())]:
        counts[key] += 1
    return counts


@dataclass
class SeedSet:
    rows: list[Sample] = field(default_factory=list)  # seeds, each followed by its variants
    seeds: list[Sample] = field(default_factory=list)
    quarantined: list[QuarantinedRow] = field(default_factory=list)


def build_seed_set(size: int = 600, seed: int = 0, per_seed: int = 3) -> SeedSet:
    """About `size` verified rows: seeds in the demo's type mix, each with `per_seed` clone variants."""
    spec = synth_spec()
    gen = spec.generator
    n_seeds = max(8, round(size / (1 + per_seed)))
    want = quotas(n_seeds, MIX)
    refuse_n = round(want["boundary"] * REFUSE_SHARE_OF_BOUNDARY)
    parts = {
        "golden": (gen.generate(want["golden"] * 2, seed, GOLDEN), want["golden"]),
        "negative": (gen.generate(want["negative"] * 2, seed + 1, NEGATIVE), want["negative"]),
        "refuse": (gen.generate(refuse_n * 2, seed + 2, OUT_OF_SCOPE), refuse_n),
        "corner": (spec.corner_cases.rows(gen, (want["boundary"] - refuse_n) * 2, seed), want["boundary"] - refuse_n),
        "generic": (gen.generate(want["generic"] * 2, seed + 3, GENERIC), want["generic"]),
    }
    out = SeedSet()
    verified = SynthResult()
    for rows, count in parts.values():
        part = keep_verified(rows, spec.verifier, source=SEED_FILE)
        verified.samples += part.samples[:count]
        out.quarantined += part.failures
    random.Random(seed).shuffle(verified.samples)
    for number, row in enumerate(verified.samples, start=1):
        sid = f"seed-{number:04d}"
        out.seeds.append(row.model_copy(update={"id": sid, "lineage": Lineage(source_id=sid)}))
    augmented = augment_samples(out.seeds, per_seed=per_seed, pools=ENTITY_POOLS, seed=seed, source_file=SEED_FILE)
    out.quarantined += augmented.quarantined
    checked = keep_verified(augmented.variants, spec.verifier, source=SEED_FILE)
    out.quarantined += checked.failures
    by_parent: dict[str, list[Sample]] = {}
    for variant in checked.samples:
        by_parent.setdefault(variant.lineage.parent_id or "", []).append(variant)
    for row in out.seeds:
        out.rows += [row, *by_parent.get(row.id, [])]
    return out


def demo_config() -> ProjectConfig:
    """The demo's tuneloop.yaml: the task, its seed source, and settings sized for a CPU run (a few minutes)."""
    return ProjectConfig.model_validate({
        "task": {"name": TASK_NAME, "schema": "schemas/ticket.json", "system": SYSTEM, "sop": "sop.md"},
        "data": {"sources": [{"path": SEED_FILE, "license": "internal"}]},
        # A 135M model on a CPU gets a few hundred optimizer steps at most: small batches and a LoRA learning
        # rate of 1e-3 (5x the 2e-4 rule) let it learn the answer format within the demo's time
        "train": {"max_length": 256, "effective_batch": 8, "per_device_batch": 8, "epochs": 2, "eval_steps": 20,
                  "lora_rank": 16, "learning_rate": 1e-3},
        "eval": {"max_new_tokens": 96, "max_samples": 60},
        "augment": {"per_seed": 3, "pools": "pools/entities.json"},
    })


def init_project(directory: str | Path, size: int = 600, seed: int = 0, force: bool = False) -> SeedSet:
    """Write the demo project into `directory` (refuses to overwrite an existing project unless `force`)."""
    root = Path(directory)
    if (root / PROJECT_FILE).exists() and not force:
        raise ProjectError(f"{root / PROJECT_FILE}: a project is already here; choose another folder or pass --force.")
    built = build_seed_set(size=size, seed=seed)
    config = demo_config()
    write_text(root / "schemas" / "ticket.json", schema_text())
    write_samples(root / SEED_FILE, built.rows)
    write_quarantine(root / "data" / "raw" / "seed.quarantine.jsonl", built.quarantined)
    write_json(root / "pools" / "entities.json", ENTITY_POOLS)
    write_text(root / "synth.py", SYNTH_PY)
    write_text(root / "sop.md", render_sop(TASK_NAME, SYSTEM, json.loads(schema_text()), instruction=INSTRUCTION,
                                           examples=pick_examples(built.seeds)))
    write_text(root / PROJECT_FILE, dump_config(config))
    return built
