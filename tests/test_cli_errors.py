"""Errors a user can act on: one line for expected errors, the traceback on --debug, a bug report line for bugs."""

from __future__ import annotations

import typer.main
from typer.testing import CliRunner

from tuneloop.cli.common import EXIT_BUG, EXIT_USER_ERROR
from tuneloop.cli.main import app


def _run(args, env=None):
    return CliRunner().invoke(app, args, env=env)


def _bad_project(tmp_path):
    (tmp_path / "tuneloop.yaml").write_text("task:\n  name: demo\n model: default\n")  # `model` indented by one
    return tmp_path


def test_a_broken_project_file_is_one_line_naming_file_line_and_column(tmp_path):
    project = _bad_project(tmp_path)
    result = _run(["train", "sft", "--project", str(project), "--train", "x.jsonl", "--out", str(tmp_path / "r")])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == EXIT_USER_ERROR
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {project / 'tuneloop.yaml'}, line 3, column 2: not valid YAML")
    assert "Traceback" not in result.output


def test_an_unknown_key_cites_its_line(tmp_path):
    (tmp_path / "tuneloop.yaml").write_text("task:\n  name: demo\ntrain:\n  method: lora\n  learning_rat: 0.1\n")
    result = _run(["train", "sft", "--project", str(tmp_path), "--train", "x.jsonl", "--out", str(tmp_path / "r")])
    assert result.exit_code == EXIT_USER_ERROR
    assert "line 5: train.learning_rat: Extra inputs are not permitted" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_debug_flag_and_environment_print_the_traceback(tmp_path):
    project = _bad_project(tmp_path)
    args = ["train", "sft", "--project", str(project), "--train", "x.jsonl", "--out", str(tmp_path / "r")]
    for result in (_run(["--debug", *args]), _run(args, env={"TUNELOOP_DEBUG": "1"})):
        assert result.exit_code == EXIT_USER_ERROR
        assert "Traceback (most recent call last)" in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in _run(args, env={"TUNELOOP_DEBUG": "0"}).stderr


def test_an_unexpected_exception_always_shows_its_traceback_and_asks_for_a_report(monkeypatch):
    import tuneloop.train.plan as plan

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(plan, "estimate", broken)
    result = _run(["plan", "--model", "Qwen/Qwen2.5-7B-Instruct"])
    assert result.exit_code == EXIT_BUG
    assert "Traceback (most recent call last)" in result.stderr and "in broken" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tuneloop bug: ZeroDivisionError: division by zero") and "report" in last


def test_a_long_message_stays_one_line_and_brackets_are_printed_as_written(tmp_path):
    name = "seed[red]-" + "x" * 120 + ".jsonl"  # rich markup and longer than any terminal
    result = _run(["data", "dedup", str(tmp_path / name), "--out", str(tmp_path / "out.jsonl")])
    assert result.exit_code == EXIT_USER_ERROR
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], result.stderr


def test_a_missing_file_is_named_without_errno_noise(tmp_path):
    result = _run(["plan", "--model", str(tmp_path / "no-such-folder")])
    assert result.exit_code == EXIT_USER_ERROR
    assert result.stderr.startswith(f"error: {tmp_path / 'no-such-folder'}: no such model folder")


def test_typer_usage_errors_keep_typer_format():
    result = _run(["plan", "--no-such-option"])
    assert result.exit_code == 2 and "No such option" in result.output and "error: " not in result.stderr.lower()[:7]


def test_every_command_has_the_error_handling():
    def walk(command, path=()):
        for name, sub in getattr(command, "commands", {}).items():
            if hasattr(sub, "commands"):
                yield from walk(sub, (*path, name))
            else:
                yield (*path, name), sub.callback

    unguarded = []
    for path, callback in walk(typer.main.get_command(app)):
        function = callback
        while function is not None and not getattr(function, "__tuneloop_friendly__", False):
            function = getattr(function, "__wrapped__", None)
        if function is None:
            unguarded.append(" ".join(path))
    assert not unguarded


def test_a_broken_json_file_a_user_passes_is_named_with_its_line(tmp_path):
    bad = tmp_path / "schema.json"
    bad.write_text('{\n  "type": "object",\n  properties: {}\n}\n')
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"instruction": "x", "output": "y"}\n')
    for args in (["data", "check", str(rows), "--schema", str(bad), "--out", str(tmp_path / "o.jsonl")],
                 ["eval", "gate", str(bad)]):
        result = _run(args)
        assert result.exit_code == EXIT_USER_ERROR, (args, result.output)
        assert result.stderr.strip() == (f"error: {bad}, line 3, column 3: not valid JSON (Expecting property name "
                                         "enclosed in double quotes); fix the file there.")


def test_a_synth_spec_that_is_not_a_module_or_fails_is_the_users_error(tmp_path):
    missing = _run(["data", "synth", "--spec", "no_such_module:SPEC", "--out", str(tmp_path / "s.jsonl")])
    assert missing.exit_code == EXIT_USER_ERROR and "no module 'no_such_module'" in missing.stderr
    failing = tmp_path / "spec.py"
    failing.write_text("raise RuntimeError('the spec itself is broken')\n")
    broken = _run(["data", "synth", "--spec", f"{failing}:SPEC", "--out", str(tmp_path / "s.jsonl")])
    assert broken.exit_code == EXIT_USER_ERROR
    assert broken.stderr.strip() == f"error: {failing}: running the spec failed (RuntimeError: the spec itself is broken)."
