"""`tuneloop data augment|synth`: new data from seeds (clone variants) and from code (verified synthesis)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import typer

from tuneloop.cli.apps import data_app
from tuneloop.cli.common import UserError, console, find_project, friendly_errors
from tuneloop.cli.data.io import FORCE_HELP, guard_outputs
from tuneloop.project import AugmentConfig, Project


def load_pools(pools: str | dict[str, list[str]] | None, base: Path) -> dict[str, list[str]]:
    if pools is None or isinstance(pools, dict):
        return dict(pools or {})
    path = base / pools
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: augment.pools names a file that does not exist; fix the path or remove the key.") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}, line {err.lineno}: not valid JSON ({err.msg}).") from None
    if not isinstance(value, dict) or not all(isinstance(v, list) for v in value.values()):
        raise UserError(f"{path}: expected an object of answer field → list of values, e.g. {{\"product\": [\"kettle\"]}}.")
    return value


def llm_rewrites(config: AugmentConfig, base: Path, seeds: list[Any], per_seed: int) -> dict[str, Any]:
    from tuneloop.data.create.augment import rule_context
    from tuneloop.data.create.llm import raise_failed, request_rewrites
    from tuneloop.llm_client import LLMClient

    llm = config.llm
    client = LLMClient(base_url=llm.base_url, model=llm.model, api_key=os.environ.get(llm.api_key_env),
                       cache_path=base / llm.cache, concurrency=llm.concurrency, max_retries=llm.max_retries)
    keep = [rule_context(s, {}).protected for s in seeds]
    results = request_rewrites(client, seeds, keep, n=per_seed, temperature=llm.temperature, progress=True)
    stats = client.stats
    console.print(f"LLM: {stats.called} requests sent, {stats.cached} answered from the cache, {stats.retries} retries")
    raise_failed(results)  # nothing is written from a run that lacks answers; the rerun resumes from the cache
    return {r.seed_id: r for r in results}


@data_app.command("augment")
@friendly_errors
def augment(
    source: Path = typer.Argument(None, help="Seed file (tuneloop JSONL); in a project: its first data source."),
    out: Path = typer.Option(None, "--out", help="Variants file; in a project: data/augmented/<seed file>.variants.jsonl."),
    per_seed: str = typer.Option(None, "--per-seed", help="Variants per seed: 3, or a range 3..8 (default: augment.per_seed)."),
    llm: bool = typer.Option(False, "--llm", help="Add LLM paraphrase and scenario variants (augment.llm or TUNELOOP_LLM_*)."),
    rules: str = typer.Option(None, "--rules", help="Comma-separated offline rules (default: augment.rules)."),
    pools: Path = typer.Option(None, "--pools", help="JSON file of entity pools by answer field (default: augment.pools)."),
    include_variants: bool = typer.Option(False, "--include-variants", help="Also augment rows that are variants already."),
    seed: int = typer.Option(None, "--seed", help="Seed of rule choice and spot-check sampling (default: augment.seed)."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Multiply each seed into clone variants that keep its answer contract; violators go to quarantine with reasons.

    Example: tuneloop data augment data/raw/seed.jsonl --out data/augmented/seed.variants.jsonl --per-seed 3..5
    """
    from tuneloop.data.create.augment import augment_samples, output_paths, parse_per_seed, spot_check, write_augment_outputs
    from tuneloop.data.io.formats import read_samples

    project = find_project(required=False)
    config = project.config.augment if project else AugmentConfig()
    base = project.root if project else Path.cwd()
    if source is None:
        if project is None or not project.config.data.sources:
            raise UserError("give the seed file (tuneloop data augment SEEDS.jsonl --out OUT) or run it inside a project with data.sources.")
        source = project.path(project.config.data.sources[0].path)
    if out is None:
        if project is None:
            raise UserError("--out is required outside a project: where should the variants go?")
        out = project.path("data/augmented") / f"{source.name.removesuffix('.jsonl')}.variants.jsonl"
    guard_outputs([source, pools], output_paths(out).values(), force)
    try:
        bounds = parse_per_seed(per_seed if per_seed is not None else config.per_seed)
    except ValueError as err:
        raise UserError(str(err)) from None
    read = read_samples(source, stage="augment")
    seeds = [s for s in read.samples if include_variants or s.lineage.augment_type is None]
    if not seeds:
        raise UserError(f"{source}: no seed rows to augment (every row is a variant; pass --include-variants).")
    entity_pools = load_pools(str(pools.resolve()) if pools else config.pools, base)
    rewrites = llm_rewrites(config, base, seeds, bounds[1]) if llm else None
    rule_names = [r.strip() for r in rules.split(",") if r.strip()] if rules else config.rules
    run_seed = config.seed if seed is None else seed
    try:
        result = augment_samples(seeds, per_seed=bounds, rules=rule_names, pools=entity_pools, seed=run_seed,
                                 rewrites=rewrites, source_file=str(source), progress=True)
    except ValueError as err:
        raise UserError(str(err)) from None
    result.quarantined = read.quarantined + result.quarantined
    paths = write_augment_outputs(out, result, spot_check(result.variants, seeds, config.spot_check, run_seed))
    console.print(f"{len(seeds)} seeds → {len(result.variants)} variants kept, {len(result.quarantined)} quarantined")
    kept, rejected = by_rule(result.accepted), by_rule(result.rejected)
    for rule in sorted(set(kept) | set(rejected)):
        console.print(f"  {rule:<20} kept {kept[rule]:>4}   quarantined {rejected[rule]:>4}")
    stacked = sum(v for k, v in result.accepted.items() if "+" in k)
    console.print(f"  ({stacked} variants stack two rules and count under both)")
    if result.short_seeds:
        console.print(f"[yellow]{len(result.short_seeds)} seeds got fewer variants than asked[/] (no rule applied often enough)")
    console.print(f"wrote {paths['variants']}, {paths['quarantine'].name}, spot check: {paths['spot_check_html'].name}")
    if project:
        console.print("add the variants to data.sources in tuneloop.yaml so the gate reads them.")


def by_rule(counts: Counter) -> Counter:
    """Counts per augment type with stacked types ("typo+tone") counted under each of their rules."""
    out: Counter = Counter()
    for kind, count in counts.items():
        for rule in kind.split("+"):
            out[rule] += count
    return out


def load_spec(reference: str, base: Path) -> Any:
    """`file.py:NAME` or `package.module:NAME` → the object (a SynthSpec)."""
    target, _, name = reference.partition(":")
    name = name or "SPEC"
    path = Path(target) if Path(target).is_absolute() else base / target
    if target.endswith(".py"):
        if not path.exists():
            raise UserError(f"{path}: no such spec file; write one defining {name} = SynthSpec(...) (see tuneloop.data.create.synth).")
        spec = importlib.util.spec_from_file_location(f"tuneloop_user_synth_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        try:
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception as err:  # the user's own code: name it (with --debug its traceback shows)
            raise UserError(f"{path}: running the spec failed ({type(err).__name__}: {err}).") from err
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as err:
            raise UserError(f"--spec {reference}: no module {err.name!r}; point --spec at FILE.py:NAME or "
                            "package.module:NAME of a SynthSpec.") from None
    if not hasattr(module, name):
        raise UserError(f"{reference}: the module defines no {name}; point --spec at FILE.py:NAME of a SynthSpec.")
    return getattr(module, name)


@data_app.command("synth")
@friendly_errors
def synth(
    spec: str = typer.Option("synth.py:SPEC", "--spec", help="FILE.py:NAME or package.module:NAME of a SynthSpec."),
    n: int = typer.Option(200, "--n", min=1, help="Rows to generate before verification."),
    out: Path = typer.Option(Path("data/raw/synth.jsonl"), "--out", help="File of verified rows (relative to the project)."),
    seed: int = typer.Option(0, "--seed", help="Seed of generation."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Generate rows from a declared generator, keep only those that pass its verifier, report the failures.

    Example: tuneloop data synth --spec synth.py:SPEC --n 200 --out data/raw/synth.jsonl
    """
    from tuneloop.data.io.formats import write_quarantine, write_samples
    from tuneloop.data.create.synth import SynthSpec

    project: Project | None = find_project(required=False)
    base = project.root if project else Path.cwd()
    declared = load_spec(spec, base)
    if not isinstance(declared, SynthSpec):
        raise UserError(f"{spec}: expected a tuneloop.data.create.synth.SynthSpec, got {type(declared).__name__}.")
    target = out if out.is_absolute() else base / out
    quarantine = target.with_name(f"{target.name.removesuffix('.jsonl')}.quarantine.jsonl")
    guard_outputs([base / spec.partition(":")[0]], [target, quarantine], force)
    result = declared.synthesize(n, seed=seed, source=str(target))
    write_samples(target, result.samples)
    write_quarantine(quarantine, result.failures)
    console.print(f"{len(result.samples)} verified rows kept ({', '.join(f'{k} {v}' for k, v in sorted(result.counts.items()))}), "
                  f"{len(result.failures)} failed verification, {result.duplicates} exact repeats skipped")
    for row in result.failures[:5]:
        console.print(f"  [red]failed[/] {row.sample_id}: {row.reason}")
    console.print(f"wrote {target} and {quarantine.name}")
