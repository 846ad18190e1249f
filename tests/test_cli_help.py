"""Every command answers --help with an example."""

from __future__ import annotations

import typer.main
from typer.testing import CliRunner

from tuneloop.cli.main import app


def _commands(group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        path = (*prefix, name)
        if hasattr(command, "commands"):
            yield from _commands(command, path)
        else:
            yield path


def test_every_command_help_has_an_example():
    root = typer.main.get_command(app)
    paths = list(_commands(root))
    assert ("doctor",) in paths and ("models", "pull") in paths
    runner = CliRunner()
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Example:" in result.output, f"`tuneloop {' '.join(path)} --help` shows no example"
