"""`tuneloop sample best-of-n`: N sampled answers per prompt → SFT positives and DPO pairs, as a new data revision."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from tuneloop.cli.apps import sample_app
from tuneloop.cli.common import UserError, console, find_project, friendly_errors


@sample_app.command("best-of-n")
@friendly_errors
def best_of_n(
    model: str = typer.Option(None, "--model", help="default, a model or export folder, or a run's adapter folder "
                                                    "(default: the project's model); the model name at --base-url."),
    n: int = typer.Option(None, "--n", min=2, help="Candidates per prompt (default: align.n, 8)."),
    data: Path = typer.Option(None, "--data", help="Samples to sample for (any file tuneloop reads)."),
    round_name: str = typer.Option(None, "--round", help="A round of the project (rNNNN): its train.jsonl "
                                                         "(default: the latest round). Never val or test."),
    base_url: str = typer.Option(None, "--base-url", help="Sample from an OpenAI-compatible endpoint instead "
                                                          "(vLLM, `tuneloop serve`), e.g. http://127.0.0.1:8000/v1."),
    api_key_env: str = typer.Option(None, "--api-key-env", help="Environment variable with the endpoint's API key."),
    out: Path = typer.Option(None, "--out", help="Output folder (default in a project: data/best_of_n/<round or "
                                                 "file>-<model>)."),
    temperature: float = typer.Option(None, "--temperature", help="Sampling temperature (default: "
                                                                  "align.sample_temperature, 0.8)."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Longest candidate (default: derived from the "
                                                                      "reference answers)."),
    preset: str = typer.Option(None, "--preset", help="Reward preset: strict | practice | format (default: "
                                                      "align.preset; align.rewards weights win when set)."),
    schema: Path = typer.Option(None, "--schema", help="JSON Schema of the answer (default: the project's task.schema)."),
    system: str = typer.Option(None, "--system", help="Default system prompt (default: the project's task.system)."),
    max_samples: int = typer.Option(None, "--max-samples", help="Sample for at most this many rows."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampling (candidate k of an endpoint uses seed + k)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Best-of-N rejection sampling: N answers per prompt, scored by the rewards and eval's validators.

    A failing candidate becomes DPO `rejected` against the reference answer (or, for a prompt without one, the
    best valid candidate, which is also an SFT positive); the data set's negatives are paired with their golden
    twin. Writes samples.jsonl (a data revision the gate reads: add it to data.sources), preferences.jsonl (TRL's
    conversational preference rows), llamafactory/ (ranking entries) and candidates.jsonl (every candidate's scores).

    Example: tuneloop sample best-of-n --model runs/r0001-lora/adapter --n 8 --round r0001
    """
    from tuneloop.data.io.formats import read_samples
    from tuneloop.project import AlignConfig, resolve_schema
    from tuneloop.records import content_hash
    from tuneloop.train.best_of_n import run_best_of_n
    from tuneloop.train.rewards import reward_weights

    project = find_project(required=False)
    align = project.config.align if project else AlignConfig()
    if data is not None and round_name is not None:
        raise UserError("give --data FILE or --round rNNNN, not both.")
    if data is None:
        if project is None:
            raise UserError("outside a project pass --data FILE (and --out DIR).")
        folder = project.rounds_dir / round_name if round_name else project.latest_round()
        if folder is None or not (folder / "train.jsonl").exists():
            raise UserError(f"no train.jsonl in {folder or project.rounds_dir}: run `tuneloop data gate` first, "
                            "or pass --data FILE.")
        data, label = folder / "train.jsonl", folder.name
    else:
        label = data.name.split(".")[0]
    read = read_samples(data, stage="best-of-n")
    if read.quarantined:
        bad = read.quarantined[0]
        raise UserError(f"{bad.source_file}, line {bad.line}: {bad.reason}. Fix the row or import the file first "
                        f"(`tuneloop data import {data} --out clean.jsonl`).")
    samples = read.samples[:max_samples] if max_samples else read.samples
    model = model or (project.config.model if project else "default")
    task_schema = resolve_schema(str(schema), Path.cwd()) if schema else (project.schema() if project else None)
    default_system = system if system is not None else (project.config.task.system if project else "")
    weights = reward_weights(preset or align.preset, None if preset else align.rewards)
    n = n or align.n
    temperature = temperature if temperature is not None else align.sample_temperature
    max_new_tokens = max_new_tokens if max_new_tokens is not None else align.sample_max_new_tokens
    if api_key_env and not os.environ.get(api_key_env):
        raise UserError(f"--api-key-env {api_key_env}: that environment variable is not set; export it with the "
                        "endpoint's key.")
    if out is None:
        if project is None:
            raise UserError("outside a project pass --out DIR for the revision.")
        key = content_hash(base_url or model, str(Path(data).resolve()), n, weights, seed, temperature, max_new_tokens,
                           max_samples, task_schema, default_system, length=8)
        out = project.path("data/best_of_n") / f"{label}-{Path(model).name or model}-{key}"
    result, paths = run_best_of_n(
        samples, model, out, weights, task_schema, n=n, temperature=temperature, max_new_tokens=max_new_tokens,
        default_system=default_system, base_url=base_url,
        api_key=os.environ.get(api_key_env) if api_key_env else None, seed=seed, progress=not quiet)
    counts = result.counts()
    console.print(f"{counts['samples']} samples × {n} candidates ({counts['candidates_passing']} of "
                  f"{counts['candidates']} pass) → {counts['dpo_pairs']} DPO pairs, {counts['positive']} SFT positives "
                  f"without a pair; {counts['all_passed']} samples had no failing candidate, {counts['no_valid']} no "
                  f"valid one; {counts['brought']} rows were pairs already (carried along)", highlight=False)
    console.print(f"revision: {paths['samples']}; TRL pairs: {paths['preferences']}; every candidate: "
                  f"{paths['candidates']}", highlight=False)
    if project:
        console.print("add the revision to data.sources in tuneloop.yaml so the gate reads it into the next round.")
