"""The typer apps of every command group; command modules register their commands on these."""

from __future__ import annotations

import typer

from tuneloop.cli.common import DEBUG_ENV, set_debug

HELP_SETTINGS = {"help_option_names": ["-h", "--help"]}


def group(name: str, help_text: str) -> typer.Typer:
    return typer.Typer(name=name, help=help_text, no_args_is_help=True, context_settings=HELP_SETTINGS)


app = typer.Typer(
    name="tuneloop",
    help="The fine-tuning loop for structured-output models: data → gate → train → eval → export → serve → traces.\n\n"
    "Example: tuneloop init demo --example json-extraction && cd demo && tuneloop run\n\n"
    "Exit codes: 0 done, 1 a check or gate failed, 2 bad input (one line says what to fix), 70 a bug in tuneloop.",
    no_args_is_help=True,
    context_settings=HELP_SETTINGS,
    pretty_exceptions_enable=False,
)
data_app = group("data", "Data intake, the quality gate and data creation.")
models_app = group("models", "The embedded default model and the local model cache.")
train_app = group("train", "Training: SFT (LoRA, QLoRA, full), preference training.")
eval_app = group("eval", "Evaluation: run, compare before/after, gate, export bad cases.")
export_app = group("export", "Exports: merged model, LLaMA-Factory files.")
sop_app = group("sop", "The annotation SOP of a project.")
canary_app = group("canary", "Canary rollouts between two served models.")
rounds_app = group("rounds", "Data rounds of a project.")
sample_app = group("sample", "Sampling from a model: best-of-N candidates into SFT positives and DPO pairs.")
traces_app = group("traces", "Traffic into the trace store (the store itself, another traces.db, Langfuse) and a look at it.")
loop_app = group("loop", "Real traffic back into data: failures selected, clustered, relabeled.")
loop_app.info.no_args_is_help = False  # `tuneloop loop` alone runs the whole cycle (its callback)


@app.callback()
def root(debug: bool = typer.Option(False, "--debug", envvar=DEBUG_ENV,
                                    help=f"Print the full traceback of every error (or set {DEBUG_ENV}=1).")) -> None:
    set_debug(debug)


for sub in (data_app, models_app, train_app, sample_app, eval_app, export_app, sop_app, canary_app, rounds_app,
            traces_app, loop_app):
    app.add_typer(sub)
