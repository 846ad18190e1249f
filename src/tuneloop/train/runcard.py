"""The run card: what ran, on which data, with which settings and why, how the loss went — HTML and Markdown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneloop import html
from tuneloop.files import write_text


def _recommendations(run: dict[str, Any]) -> list[str]:
    notes = []
    if run.get("val_loss_oscillating"):
        notes.append(f"Val loss oscillated without improving: retry with learning rate {run['suggested_learning_rate']} "
                     "(`tuneloop train sft --restart-with-suggested-lr`)." if run.get("suggested_learning_rate")
                     else "Val loss oscillated without improving even at the lowered learning rate: check the data.")
    if run.get("stopped_early"):
        notes.append(f"Stopped early at step {run['steps']} of {run['max_steps']}: val loss stopped improving; "
                     f"the best checkpoint (step {run['best_step']}) was kept.")
    efficiency = run.get("packing_efficiency")
    if efficiency is not None and efficiency < 0.9:
        notes.append(f"Packing efficiency {efficiency:.1%}: rows are long relative to max_length; raising it packs tighter.")
    notes.extend(run.get("notes", []))  # what a DPO or GRPO run found (cut completions, pairs left out)
    return notes


def _loss_plot(metrics: list[dict[str, Any]]) -> str:
    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    val = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]

    def draw(ax: Any) -> None:
        if train:
            ax.plot(*zip(*train), label="train loss", linewidth=1)
        if val:
            ax.plot(*zip(*val), "o-", label="val loss")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.legend()

    return html.plot(draw, title="loss") if train or val else html.paragraph("no loss logged", "muted")


def _derived_rows(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"value": r["name"], "chosen": r["value"], "why": r["reason"]} for r in config["derived"]["reasons"]]


def _data_rows(config: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for split, summary in config["data"].items():
        if summary:
            packing = summary.get("packing") or {}
            rows.append({"split": split, "file": summary["file"], "sha256": summary["sha256"],
                         "samples": summary["samples"], "rows": summary["rows"], "quarantined": summary["quarantined"],
                         "longest row": summary["longest_row_tokens"],
                         "packed bins": packing.get("bins", "-"), "packing efficiency": packing.get("efficiency", "-")})
    return rows


def write_run_card(out: Path, run: dict[str, Any], config: dict[str, Any], metrics: list[dict[str, Any]]) -> None:
    method = f"{run['kind']} ({run['method']})" if run.get("kind") else run["method"]  # dpo / grpo runs say so
    summary = {"method": method, "model": f"{run['model']} ({run['base_model']})",
               "steps": f"{run['steps']} of {run['max_steps']}", "best step": run["best_step"],
               "best val loss": run["best_val_loss"], "stopped early": run["stopped_early"],
               "resumed from": run["resumed_from"] or "-",
               "output": run["adapter_dir"] or run["model_dir"]}
    notes = _recommendations(run)
    sections = [
        html.section("Summary", html.key_values(summary)),
        html.section("Recommendations", *(html.paragraph(n, "bad") for n in notes) if notes
                     else (html.paragraph("none: the run looks healthy", "ok"),)),
        html.section("Loss", _loss_plot(metrics)),
        html.section("Data", html.table(_data_rows(config))),
        html.section("Derived values", html.table(_derived_rows(config))),
        html.section("Config", html.key_values(config["train"])),
        html.section("Timings", html.key_values(run["timings"])),
        html.section("Hardware", html.key_values(run["hardware"])),
    ]
    write_text(out / "run_card.html", html.page(f"Run card: {out.name}", sections, subtitle=f"fingerprint {config['fingerprint']}"))
    write_text(out / "run_card.md", _markdown(out.name, summary, notes, config, run))


def _markdown(name: str, summary: dict[str, Any], notes: list[str], config: dict[str, Any], run: dict[str, Any]) -> str:
    def table(rows: list[dict[str, Any]]) -> list[str]:
        if not rows:
            return ["(none)"]
        head = list(rows[0])
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(str(r[h]).replace("|", "\\|") for h in head) + " |" for r in rows]
        return lines

    lines = [f"# Run card: {name}", ""]
    lines += [f"- **{k}**: {v}" for k, v in summary.items()]
    lines += ["", "## Recommendations", ""] + ([f"- {n}" for n in notes] or ["- none: the run looks healthy"])
    lines += ["", "## Data", ""] + table(_data_rows(config))
    lines += ["", "## Derived values", ""] + table(_derived_rows(config))
    lines += ["", "## Timings", ""] + [f"- {k}: {v}" for k, v in run["timings"].items()]
    lines += ["", "## Hardware", ""] + [f"- {k}: {v}" for k, v in run["hardware"].items()]
    return "\n".join(lines) + "\n"
