"""`tuneloop plan`: training memory from a model's config alone, and the GPU setup it needs."""

from __future__ import annotations

import typer

from tuneloop.cli.apps import app
from tuneloop.cli.common import UserError, console, friendly_errors


@app.command("plan")
@friendly_errors
def plan(
    model: str = typer.Option("default", "--model", help="HF id, local folder or 'default'; only its config is read "
                              "(common Qwen/Llama/Mistral/Gemma/SmolLM2 configs ship with tuneloop: no network)."),
    method: str = typer.Option("lora", "--method", help="lora | qlora | full."),
    seq_len: int = typer.Option(2048, "--seq-len", help="Tokens per row."),
    gpus: int = typer.Option(1, "--gpus", help="GPUs to spread over (FSDP shards full fine-tuning states)."),
    batch: int = typer.Option(1, "--batch", help="Rows per GPU per forward pass."),
    lora_rank: int = typer.Option(16, "--lora-rank", help="LoRA rank."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Estimate training memory from the model config alone (no weights) and recommend a GPU setup.

    Example: tuneloop plan --model Qwen/Qwen2.5-7B-Instruct --method lora --seq-len 4096
    """
    import json

    from tuneloop.train.plan import estimate, read_shape

    if method not in ("lora", "qlora", "full"):
        raise UserError(f"--method {method}: expected lora, qlora or full.")
    result = estimate(read_shape(model), method, seq_len, batch=batch, gpus=gpus, lora_rank=lora_rank)
    if as_json:
        console.print_json(json.dumps(result.as_dict()))
        return
    from rich.table import Table

    table = Table(title=f"{model}: {method}, seq {seq_len}, batch {batch}, {gpus} GPU(s) — {result.params_b:.2f} B params")
    table.add_column("part")
    table.add_column("GiB per GPU", justify="right")
    for name, gib in result.parts.items():
        table.add_row(name, f"{gib:.2f}")
    table.add_row("[bold]total (no checkpointing)[/]", f"[bold]{result.total_gib:.2f}[/]")
    table.add_row("[bold]total (gradient checkpointing)[/]", f"[bold]{result.total_checkpointed_gib:.2f}[/]")
    console.print(table)
    console.print(f"recommendation: {result.recommendation}", highlight=False)
    console.print(f"config: {result.shape.source}", highlight=False)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
