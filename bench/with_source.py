"""Run the tuneloop CLI from another source tree in this .venv: a before/after of one command across commits.

    git archive 1350c52 | tar -x -C /tmp/old
    python bench/with_source.py /tmp/old/src train sft --max-steps 12 --out runs/old
    python bench/with_source.py src train sft --max-steps 12 --out runs/new

The editable install puts this checkout's src/ on sys.path; every entry that holds a `tuneloop` package is
dropped and the given tree goes first, so the command really runs the other code (it prints which).
"""

import sys
from pathlib import Path


def main() -> None:
    source = Path(sys.argv[1]).resolve()
    sys.path[:] = [p for p in sys.path if not (Path(p or ".") / "tuneloop").is_dir()]
    sys.path.insert(0, str(source))
    import tuneloop
    from tuneloop.cli.main import main as cli

    print("tuneloop from", ", ".join(getattr(tuneloop, "__path__", [])), file=sys.stderr)
    sys.argv = ["tuneloop", *sys.argv[2:]]
    cli()


if __name__ == "__main__":
    main()
