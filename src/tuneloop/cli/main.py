"""The `tuneloop` command: imports every command module so its commands register, then runs the app."""

from __future__ import annotations

import importlib

from tuneloop.cli.apps import app
from tuneloop.cli.common import guard_commands

# one module per command group, named after it; top-level commands first, in the order `tuneloop --help` lists them
COMMAND_MODULES = (
    "tuneloop.cli.doctor",
    "tuneloop.cli.init",
    "tuneloop.cli.plan",
    "tuneloop.cli.serve",
    "tuneloop.cli.run",
    "tuneloop.cli.models",
    "tuneloop.cli.data",
    "tuneloop.cli.train",
    "tuneloop.cli.sample",
    "tuneloop.cli.eval",
    "tuneloop.cli.export",
    "tuneloop.cli.sop",
    "tuneloop.cli.canary",
    "tuneloop.cli.rounds",
    "tuneloop.cli.traces",
    "tuneloop.cli.loop",
    "tuneloop.cli.loop_relabel",
    "tuneloop.cli.annotate",
)

for module in COMMAND_MODULES:
    importlib.import_module(module)
guard_commands(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
