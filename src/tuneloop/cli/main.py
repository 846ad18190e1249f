"""The `tuneloop` command: imports every command module so its commands register, then runs the app."""

from __future__ import annotations

import importlib

from tuneloop.cli.apps import app
from tuneloop.cli.common import guard_commands

COMMAND_MODULES = (
    "tuneloop.cli.models",
    "tuneloop.cli.data_io",
    "tuneloop.cli.data_gate",
    "tuneloop.cli.data_create",
    "tuneloop.cli.train",
    "tuneloop.cli.eval",
    "tuneloop.cli.serve",
    "tuneloop.cli.loop",
)

for module in COMMAND_MODULES:
    importlib.import_module(module)
guard_commands(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
