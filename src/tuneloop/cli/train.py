"""`tuneloop train sft`: supervised fine-tuning of a project's round or explicit files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer

from tuneloop.cli.apps import train_app
from tuneloop.cli.common import UserError, console, find_project, friendly_errors
from tuneloop.project import TrainConfig, load_config


def _settings(base: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    values = base.model_dump()
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.model_validate(values)


def run_id(round_name: str, train_file: Path, val_file: Path | None, model: str, settings: TrainConfig) -> str:
    """Same round, data, model and settings → same run id, so rerunning a command resumes its run."""
    from tuneloop.files import file_digest
    from tuneloop.records import content_hash

    digest = content_hash(file_digest(train_file), file_digest(val_file) if val_file else None, model, settings.model_dump())
    return f"{round_name}-{settings.method}-{digest[:8]}"


def _paths(train: Path | None, val: Path | None, out: Path | None, project_dir: Path, model: str | None,
           settings: TrainConfig) -> tuple[Path, Path | None, Path, str, str]:
    """Train/val/out paths, model and system prompt: explicit paths, else the project's latest round."""
    project = find_project(project_dir, required=train is None)
    system = project.config.task.system if project else ""
    model = model or (project.config.model if project else "default")
    if train is None:
        latest = project.latest_round()
        if latest is None:
            raise UserError(f"{project.rounds_dir}: no completed round yet; run `tuneloop data gate` first or pass --train.")
        train, val = latest / "train.jsonl", (val or latest / "val.jsonl")
        val = val if val.exists() else None
        out = out or project.runs_dir / run_id(latest.name, train, val, model, settings)
    if out is None:
        raise UserError("--out is needed outside a project: the run folder to write (e.g. runs/my-run).")
    return train, val, out, model, system


@train_app.command("sft")
@friendly_errors
def sft(
    train: Path = typer.Option(None, "--train", help="Train JSONL (default: the project's latest round)."),
    val: Path = typer.Option(None, "--val", help="Validation JSONL for eval, early stopping and the best checkpoint."),
    out: Path = typer.Option(None, "--out", help="Run folder (default: runs/<round>-<method>-<hash>)."),
    project_dir: Path = typer.Option(Path("."), "--project", "-p", help="Project folder (default: here or a parent)."),
    config_file: Path = typer.Option(None, "--config", help="YAML with a `train:` section (overrides tuneloop.yaml)."),
    model: str = typer.Option(None, "--model", help="HF id, local folder or 'default' (SmolLM2-135M)."),
    method: str = typer.Option(None, "--method", help="lora | qlora | full."),
    max_steps: int = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    epochs: float = typer.Option(None, "--epochs", help="Passes over the train set."),
    lr: float = typer.Option(None, "--lr", help="Learning rate (default 2e-4 LoRA/QLoRA, 1e-5 full)."),
    max_length: int = typer.Option(None, "--max-length", help="Longest row in tokens (inputs are windowed, answers never cut)."),
    no_packing: bool = typer.Option(False, "--no-packing", help="One sample per row instead of packed bins."),
    gpus: int = typer.Option(1, "--gpus", help="GPUs on this machine; >1 launches through accelerate (DDP, FSDP2 for full)."),
    restart: bool = typer.Option(False, "--restart-with-suggested-lr",
                                 help="If val loss oscillates, train again with the suggested learning rate (5e-5)."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over instead of resuming from the last checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    engine: str = typer.Option(None, "--engine", help="tuneloop (default: its own SFT step) | trl (TRL's SFTTrainer)."),
    compile_step: str = typer.Option(None, "--compile", help="auto | on | off: torch.compile the decoder layers."),
    memory_budget: float = typer.Option(None, "--memory-budget", help="GPU GiB the run may use: the engine recomputes "
                                        "activations to fit (default: keeps a measured share, train.memory_budget_gib)."),
) -> None:
    """Supervised fine-tuning (LoRA, QLoRA or full) with packing, early stopping, resume and a run card.

    Example: tuneloop train sft --train data/rounds/r0001/train.jsonl --val data/rounds/r0001/val.jsonl --out runs/r1 --max-steps 30
    """
    project = find_project(project_dir, required=False)
    base = project.config.train if project else TrainConfig()
    if config_file is not None:
        base = load_config(config_file).train
    settings = _settings(base, {"method": method, "max_steps": max_steps, "epochs": epochs, "learning_rate": lr,
                                "max_length": max_length, "packing": False if no_packing else None,
                                "engine": engine, "compile": compile_step, "memory_budget_gib": memory_budget})
    train, val, out, model, system = _paths(train, val, out, project_dir, model, settings)
    if gpus > 1 and "WORLD_SIZE" not in os.environ:
        from tuneloop.train.sft import launch_command

        command = launch_command([*sys.argv[1:], "--out", str(out)] if "--out" not in sys.argv else sys.argv[1:],
                                 gpus, settings.method)
        console.print(f"launching {gpus} processes: {' '.join(command)}", highlight=False)
        raise typer.Exit(subprocess.call(command))

    from tuneloop.train.sft import train_sft

    result = train_sft(train, val, out, model, settings, system, gpus=gpus, resume=not no_resume, progress=not quiet)
    _report(result)
    if restart and result.suggested_learning_rate:
        retry = _settings(settings, {"learning_rate": result.suggested_learning_rate})
        retry_out = out.with_name(f"{out.name}-lr{result.suggested_learning_rate:g}")
        console.print(f"val loss oscillated: training again with lr {result.suggested_learning_rate:g} into {retry_out}")
        _report(train_sft(train, val, retry_out, model, retry, system, gpus=gpus, resume=not no_resume, progress=not quiet))


def _report(result: Any) -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        return
    run = result.run
    console.print(f"[bold]run[/] {result.out_dir}  steps {run['steps']}/{run['max_steps']}  best val loss "
                  f"{run['best_val_loss']}  (step {run['best_step']}){'  stopped early' if run['stopped_early'] else ''}",
                  highlight=False)
    timings = run["timings"]
    console.print(f"  {timings['steps_per_s']} steps/s, {timings['train_tokens_per_s']} tokens/s, "
                  f"{timings['total_s']} s in all; model: {result.model_dir}", highlight=False)
    if run["resumed_from"]:
        console.print(f"  resumed from {run['resumed_from']}", highlight=False)
    if result.suggested_learning_rate:
        console.print(f"  [yellow]val loss oscillates[/]: try lr {result.suggested_learning_rate:g} "
                      "(--restart-with-suggested-lr)")
    console.print(f"  run card: {result.out_dir / 'run_card.html'}")


# -- alignment after SFT: DPO on preference pairs, GRPO on the rewards ---------------------------------------------

def _latest_sft_run(project: Any) -> Path | None:
    """The newest SFT run folder of a project (run.json without a `kind`): where alignment starts by default."""
    import json

    runs = [p for p in project.runs_dir.glob("*/run.json") if "kind" not in json.loads(p.read_text(encoding="utf-8"))]
    return max(runs, key=lambda p: p.stat().st_mtime).parent if runs else None


def _align_inputs(kind: str, train: Path | None, val: Path | None, out: Path | None, project_dir: Path,
                  config_file: Path | None, model: str | None, overrides: dict[str, Any],
                  align_overrides: dict[str, Any]) -> tuple[Path, Path | None, Path, str, str, TrainConfig, Any, Any]:
    """Files, run folder, start model, system prompt and settings of `tuneloop train dpo|grpo`."""
    from pydantic import ValidationError

    from tuneloop.files import file_digest
    from tuneloop.project import AlignConfig
    from tuneloop.records import content_hash

    project = find_project(project_dir, required=train is None or model is None)
    loaded = load_config(config_file) if config_file is not None else (project.config if project else None)
    settings = _settings(loaded.train if loaded else TrainConfig(), overrides)
    align_values = (loaded.align if loaded else AlignConfig()).model_dump()
    align_values.update({k: v for k, v in align_overrides.items() if v is not None})
    try:
        align = AlignConfig.model_validate(align_values)
    except ValidationError as err:
        problem = err.errors()[0]
        raise UserError(f"align.{'.'.join(str(p) for p in problem['loc'])} (or its option): {problem['msg']}; see "
                        f"`tuneloop train {kind} --help`.") from None
    system = project.config.task.system if project else ""
    if model is None:
        latest_run = _latest_sft_run(project)
        if latest_run is None:
            raise UserError(f"{project.runs_dir}: no SFT run to start from; run `tuneloop train sft` first or pass --model.")
        model = str(latest_run)
    round_name = "run"
    if train is None:
        latest = project.latest_round()
        if latest is None:
            raise UserError(f"{project.rounds_dir}: no completed round yet; run `tuneloop data gate` first or pass --train.")
        train, val, round_name = latest / "train.jsonl", (val or latest / "val.jsonl"), latest.name
        val = val if val.exists() else None
    if out is None:
        if project is None:
            raise UserError(f"--out is needed outside a project: the run folder to write (e.g. runs/my-{kind}).")
        digest = content_hash(file_digest(train), file_digest(val) if val else None, model, settings.model_dump(),
                              align.model_dump())
        out = project.runs_dir / f"{round_name}-{kind}-{digest[:8]}"
    return train, val, out, model, system, settings, align, project


@train_app.command("dpo")
@friendly_errors
def dpo(
    train: Path = typer.Option(None, "--train", help="JSONL of samples with `rejected` (default: the latest round's train)."),
    val: Path = typer.Option(None, "--val", help="Validation pairs for eval, early stopping and the best checkpoint."),
    out: Path = typer.Option(None, "--out", help="Run folder (default: runs/<round>-dpo-<hash>)."),
    project_dir: Path = typer.Option(Path("."), "--project", "-p", help="Project folder (default: here or a parent)."),
    config_file: Path = typer.Option(None, "--config", help="YAML with `train:` and `align:` sections (overrides tuneloop.yaml)."),
    model: str = typer.Option(None, "--model", help="SFT run folder, adapter folder or merged model (default: the "
                              "project's newest SFT run)."),
    method: str = typer.Option(None, "--method", help="lora | qlora | full (an adapter is continued as LoRA)."),
    beta: float = typer.Option(None, "--beta", help="DPO beta (align.beta, default 0.1)."),
    loss_type: str = typer.Option(None, "--loss-type", help="TRL loss type: sigmoid | ipo | hinge | robust | ..."),
    sft_weight: float = typer.Option(None, "--sft-weight", help="Weight of an SFT term on the chosen answer beside "
                                     "the DPO loss (align.sft_weight, default 0: DPO alone)."),
    ld_alpha: float = typer.Option(None, "--ld-alpha", help="Length desensitization: tokens past the shorter answer "
                                   "of a pair count this much (align.ld_alpha, 0..1; default off)."),
    max_steps: int = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    epochs: float = typer.Option(None, "--epochs", help="Passes over the pairs (align.epochs, default 1)."),
    lr: float = typer.Option(None, "--lr", help="Learning rate (default 2e-5 LoRA, 1e-6 full)."),
    max_length: int = typer.Option(None, "--max-length", help="Ceiling on prompt + answer tokens; longer pairs are quarantined, never cut."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over instead of resuming from the last checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Preference training (DPO) from an SFT run on pairs of a chosen and a rejected answer; no answer is ever cut.

    Example: tuneloop train dpo --model runs/r0001-lora-1a2b3c4d --train data/best-of-n/pairs.jsonl --out runs/r1-dpo --max-steps 20
    """
    inputs = _align_inputs("dpo", train, val, out, project_dir, config_file, model,
                           {"method": method, "max_length": max_length},
                           {"beta": beta, "loss_type": loss_type, "sft_weight": sft_weight, "ld_alpha": ld_alpha,
                            "max_steps": max_steps, "epochs": epochs,
                            "learning_rate": lr})
    train, val, out, model, system, settings, align, _ = inputs
    from tuneloop.train.dpo import train_dpo

    result = train_dpo(train, val, out, model, settings, align, system, resume=not no_resume, progress=not quiet)
    final = result.run.get("final", {})
    console.print(f"  {result.run['pairs']['train']} pairs (longest {result.run['longest_pair_tokens']} tokens), beta "
                  f"{result.run['beta']}, {result.run['loss_type']}; reward margin "
                  f"{final.get('rewards/margins', '-')}, accuracy {final.get('rewards/accuracies', '-')}", highlight=False)
    _report(result)


@train_app.command("grpo")
@friendly_errors
def grpo(
    train: Path = typer.Option(None, "--train", help="JSONL whose prompts are rolled out (default: the latest round's train)."),
    out: Path = typer.Option(None, "--out", help="Run folder (default: runs/<round>-grpo-<hash>)."),
    project_dir: Path = typer.Option(Path("."), "--project", "-p", help="Project folder (default: here or a parent)."),
    config_file: Path = typer.Option(None, "--config", help="YAML with `train:` and `align:` sections (overrides tuneloop.yaml)."),
    model: str = typer.Option(None, "--model", help="SFT run folder, adapter folder or merged model (default: the "
                              "project's newest SFT run)."),
    schema_file: Path = typer.Option(None, "--schema", help="JSON Schema of the answer (default: the project's task.schema)."),
    method: str = typer.Option(None, "--method", help="lora | qlora | full (an adapter is continued as LoRA)."),
    num_generations: int = typer.Option(None, "--num-generations", help="Completions per prompt (align.num_generations)."),
    max_completion_length: int = typer.Option(None, "--max-completion-length",
                                              help="Longest completion (default: longest reference answer + margin)."),
    preset: str = typer.Option(None, "--preset", help="Reward preset: strict | practice | format (align.preset)."),
    constrained: bool = typer.Option(None, "--constrained/--sampled", help="Roll out through tuneloop's decoder "
                                     "constrained to the schema, or TRL's sampling (align.constrained_rollouts)."),
    max_steps: int = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    epochs: float = typer.Option(None, "--epochs", help="Passes over the prompts (align.epochs, default 1)."),
    lr: float = typer.Option(None, "--lr", help="Learning rate (default 2e-5 LoRA, 1e-6 full)."),
    max_length: int = typer.Option(None, "--max-length", help="Ceiling on prompt + completion tokens; longer prompts are quarantined."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over instead of resuming from the last checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Reinforcement learning (GRPO) on the strict-JSON rewards, with the completion length derived from the data.

    Example: tuneloop train grpo --model runs/r0001-lora-1a2b3c4d --num-generations 8 --max-steps 50
    """
    import json

    inputs = _align_inputs("grpo", train, None, out, project_dir, config_file, model,
                           {"method": method, "max_length": max_length},
                           {"num_generations": num_generations, "max_completion_length": max_completion_length,
                            "preset": preset, "constrained_rollouts": constrained, "max_steps": max_steps,
                            "epochs": epochs, "learning_rate": lr})
    train, _, out, model, system, settings, align, project = inputs
    if schema_file is not None:
        schema = json.loads(schema_file.read_text(encoding="utf-8"))
    else:
        schema = project.schema() if project else None
    from tuneloop.train.grpo import train_grpo

    result = train_grpo(train, out, model, settings, align, system, schema, resume=not no_resume, progress=not quiet)
    run, clipped = result.run, result.run["clipped_ratio"]
    console.print(f"  {run['prompts']} prompts × {run['num_generations']} completions, max_completion_length "
                  f"{run['max_completion_length']} ({run['max_completion_length_reason']}); cut completions "
                  f"first {clipped['first']}, last {clipped['last']}; reward {run['reward'][-1:] or '-'}",
                  highlight=False)
    _report(result)
