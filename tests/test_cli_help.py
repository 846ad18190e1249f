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


# -- every `tuneloop ...` a user is told to run exists -------------------------------------------------------------
# A reference is `tuneloop` then words: group and command names, then arguments and options. It is checked when it
# reads as a command (in backticks, a code block, after "Example:", or naming an option); plain prose such as
# "tuneloop runs the whole loop" is not a command.

import ast  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402


ROOT = Path(__file__).resolve().parents[1]
STOP = re.compile(r"[`'\"()\[\]{};|#<>]|&&|\s{2,}|\n|\\n")


def _texts():
    """(where, text) of every string a user can read: Python string literals, templates, README.md, docs/*.md."""
    for path in sorted((ROOT / "src" / "tuneloop").rglob("*")):
        if path.suffix == ".py":
            tree = ast.parse(path.read_text(encoding="utf-8"))
            parts_of_fstrings = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
            for node in ast.walk(tree):
                if id(node) in parts_of_fstrings:
                    continue
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    yield f"{path.relative_to(ROOT)}:{node.lineno}", node.value
                elif isinstance(node, ast.JoinedStr):  # f-strings: a placeholder reads as a positional value
                    parts = [v.value if isinstance(v, ast.Constant) else "VALUE" for v in node.values]
                    yield f"{path.relative_to(ROOT)}:{node.lineno}", "".join(parts)
        elif path.suffix in (".html", ".md", ".jinja"):
            yield str(path.relative_to(ROOT)), path.read_text(encoding="utf-8")
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if path.exists():
            yield str(path.relative_to(ROOT)), path.read_text(encoding="utf-8")


def _references(text: str):
    """(reference words, reads as a command) for every `tuneloop ...` in a text."""
    code_blocks = [(m.start(), m.end()) for m in re.finditer(r"```.*?```", text, re.S)]
    line_starts = {m.end() for m in re.finditer(r"(?m)^\s*(?:\$ )?", text)}
    for match in re.finditer(r"(?<![\w./-])tuneloop (?=[a-z-])", text):
        start = match.end()
        stop = STOP.search(text, start)
        words = text[start:stop.start() if stop else len(text)].split()
        cleaned = []
        for word in words:
            end = word[-1] in ".,:!?"
            cleaned.append(word.rstrip(".,:!?"))
            if end:
                break
        before = text[max(0, match.start() - 10):match.start()]
        in_code = (before.endswith("`") or "Example:" in text[max(0, match.start() - 60):match.start()]
                   or (match.start() in line_starts and any(a <= match.start() < b for a, b in code_blocks)))
        if any(word.startswith("-") for word in cleaned):
            in_code = True
        yield [w for w in cleaned if w], in_code


def _check(words: list[str], root) -> str | None:
    """Why a reference names no real command or option, or None when it does."""
    command = root
    root_options = {o for p in root.params for o in p.opts} | {"-h", "--help"}
    index = 0
    while index < len(words) and words[index].startswith("-"):
        if words[index] not in root_options:
            return f"`tuneloop` has no option {words[index]}"
        index += 1
    while hasattr(command, "commands") and index < len(words):
        if words[index].startswith("-"):  # a group's own options: `tuneloop loop --labels FILE` runs its callback
            break
        if words[index].isupper():  # a placeholder: `tuneloop --debug CMD`
            return None
        names = words[index].split("|")  # `tuneloop models pull|list`
        if not all(name in command.commands for name in names):
            return f"`{command.name}` has no command {words[index]!r} (it has {', '.join(sorted(command.commands))})"
        command = command.commands[names[0]]
        index += 1
    options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"-h", "--help"}
    for word in words[index:]:
        option = word.split("=")[0]
        if re.fullmatch(r"--?[a-z][a-z0-9-]*", option) and option not in options:
            return f"`{command.name}` has no option {option}"
    return None


def test_every_command_a_message_names_exists():
    root = typer.main.get_command(app)
    top = set(root.commands)
    problems, checked = [], 0
    for where, text in _texts():
        for words, in_code in _references(text):
            if not words or not (in_code or words[0] in top):
                continue
            if not in_code and words[0] in top and len(words) > 1 and not hasattr(root.commands[words[0]], "commands"):
                words = words[:1]  # prose after a command name ("tuneloop run as ...") is not its arguments
            elif not in_code:
                continue
            checked += 1
            problem = _check(words, root)
            if problem:
                problems.append(f"{where}: `tuneloop {' '.join(words)}`: {problem}")
    assert checked > 80  # the walk sees the help examples, messages and docs
    assert not problems, "\n".join(problems)


def test_the_reference_walk_catches_a_wrong_name():
    root = typer.main.get_command(app)
    assert _check(["eval", "run", "MODEL", "--test", "t.jsonl"], root) is None
    assert _check(["--debug", "plan", "--model", "M"], root) is None
    assert "no option --model" in _check(["eval", "run", "--model", "runs/x"], root)
    assert _check(["traces", "list"], root) is None
    assert "no command 'lsit'" in _check(["traces", "lsit"], root)
    assert list(_references("run `tuneloop data gate` first")) == [(["data", "gate"], True)]
    assert list(_references("tuneloop puts bytes on disk.")) == [(["puts", "bytes", "on", "disk"], False)]


FOREIGN_COMMAND = re.compile(r"(pip install|hf download|accelerate launch|vllm serve|llamafactory-cli)[^`\n]*$")


def test_every_option_a_message_names_exists():
    """A bare `--option` in a message or help text is one of tuneloop's, unless it belongs to another tool's command."""
    root = typer.main.get_command(app)
    options: set[str] = set()

    def collect(command) -> None:
        options.update(o for p in command.params for o in (*p.opts, *p.secondary_opts))
        for sub in getattr(command, "commands", {}).values():
            collect(sub)

    collect(root)
    options |= {"-h", "--help"}
    problems = []
    for where, text in _texts():
        if not where.startswith("src/"):
            continue  # README and docs also show the bench scripts' own options
        if re.fullmatch(r"\s*--[\w-]+(=.*)?\s*", text, re.S):
            continue  # an argv element built for another program (vllm, accelerate)
        for match in re.finditer(r"(?<![\w-])--[a-z][\w-]*", text):
            if match.group() not in options and not FOREIGN_COMMAND.search(text[:match.start()]):
                problems.append(f"{where}: {match.group()} in …{text[max(0, match.start() - 60):match.end()]}")
    assert not problems, "\n".join(problems)
