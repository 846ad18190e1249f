"""One evaluation run: a model (or endpoint) over a test set → `results.jsonl`, `summary.json`, `report.html`.

```
test.jsonl ──to_messages──▶ chat template ──▶ backend (local batched | endpoint) ──▶ score_answer ──▶ EvalResult
                                                   unconstrained, then schema-constrained when asked
out_dir/results.jsonl   one EvalResult per sample and mode, with the test sample itself (for compare/export-bad)
out_dir/summary.json    rates per mode ("unconstrained", "constrained"), the settings and the test file digest
out_dir/review_queue.jsonl   boundary cases and judge/metric disagreements for a human
out_dir/report.html     metrics, per-field accuracy, failure rate vs length, bad cases
```
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneloop.data.checks import schema_validator
from tuneloop.data.formats import read_samples, write_quarantine
from tuneloop.eval.backends import EndpointBackend, Generation, LocalBackend, json_schema_format, schema_constraint
from tuneloop.eval.metrics import score_answer, summarize
from tuneloop.files import atomic_open, file_digest, write_json, write_text
from tuneloop.project import EvalConfig
from tuneloop.records import EvalResult, Sample, content_hash, to_messages

MODES = ("unconstrained", "constrained")
SLICE_KEYS = ("task_type", "source", "difficulty", "sample_type")


class EvalError(ValueError):
    """An evaluation that cannot run or be read, with what to do."""


def load_test_set(test_file: str | Path, out_dir: Path, max_samples: int | None) -> tuple[list[Sample], int]:
    """Test samples; rows that do not parse go to out_dir/quarantine.jsonl (never silently dropped)."""
    path = Path(test_file)
    if not path.exists():
        raise EvalError(f"{path}: no such test file; pass --test FILE or run `tuneloop data split` first.")
    read = read_samples(path, stage="eval")
    if read.quarantined:
        write_quarantine(out_dir / "quarantine.jsonl", read.quarantined)
    if not read.samples:
        raise EvalError(f"{path}: no usable test samples ({len(read.quarantined)} rows quarantined, see {out_dir / 'quarantine.jsonl'}).")
    samples = read.samples[:max_samples] if max_samples else read.samples
    return samples, len(read.quarantined)


def slices(sample: Sample) -> dict[str, str]:
    """The values a comparison slices by; a missing one is the string "unset" so it still forms a slice."""
    values = {key: getattr(sample.meta, key) for key in SLICE_KEYS if key != "sample_type"}
    values["sample_type"] = sample.sample_type
    return {key: str(value) if value is not None else "unset" for key, value in values.items()}


class SampleValidators:
    """The task's schema validator, or a sample's own when its `output_schema` is an inline JSON Schema."""

    def __init__(self, schema: dict[str, Any] | None):
        self.task = schema_validator(schema)
        self.inline: dict[str, Any] = {}

    def of(self, sample: Sample) -> Any:
        if not isinstance(sample.output_schema, dict):
            return self.task
        key = content_hash(sample.output_schema)
        if key not in self.inline:
            self.inline[key] = schema_validator(sample.output_schema)
        return self.inline[key]


def endpoint_backend(endpoint: str | dict[str, Any], settings: EvalConfig) -> EndpointBackend:
    """An endpoint from a URL or {base_url, model, api_key_env, concurrency}."""
    spec = {"base_url": endpoint} if isinstance(endpoint, str) else dict(endpoint)
    if not spec.get("base_url"):
        raise EvalError(f"endpoint {endpoint!r}: needs a base_url such as http://127.0.0.1:8000/v1.")
    key_env = spec.get("api_key_env")
    return EndpointBackend(
        spec["base_url"], spec.get("model") or "default", api_key=os.environ.get(key_env) if key_env else None,
        concurrency=int(spec.get("concurrency", settings.concurrency)), max_tokens=settings.max_new_tokens,
        seed=settings.seed,
    )


def generate_all(samples: list[Sample], model: str, schema: dict[str, Any] | None, settings: EvalConfig,
                 default_system: str, endpoint: str | dict[str, Any] | None,
                 progress: Callable[[str, int], Callable[[int], None]]) -> list[tuple[str, Sample, Generation, str, str | None]]:
    """(mode, sample, generation, prompt_hash, template_hash) for every sample in every mode asked for."""
    conversations = [to_messages(sample, default_system, with_answer=False) for sample in samples]
    prompt_hashes = [content_hash(messages) for messages in conversations]
    modes = ["unconstrained"] + (["constrained"] if settings.constrained and schema else [])
    rows = []
    if endpoint is not None:
        backend = endpoint_backend(endpoint, settings)
        for mode in modes:
            response_format = json_schema_format(schema) if mode == "constrained" and schema else None
            generations = backend.generate_chats(conversations, response_format, progress(mode, len(samples)))
            rows += [(mode, s, g, h, None) for s, g, h in zip(samples, generations, prompt_hashes)]
        return rows
    from tuneloop.models import load_causal_lm

    lm, tokenizer = load_causal_lm(model)
    local = LocalBackend(lm, tokenizer, batch_size=settings.batch_size, max_new_tokens=settings.max_new_tokens,
                         seed=settings.seed)
    rendered = [local.render(messages) for messages in conversations]
    template_hashes = [content_hash(text) for text in rendered]
    for mode in modes:
        constraint = schema_constraint(lm, tokenizer, schema) if mode == "constrained" and schema else None
        generations = local.generate(rendered, constraint, progress(mode, len(samples)))
        rows += [(mode, s, g, h, t) for s, g, h, t in zip(samples, generations, prompt_hashes, template_hashes)]
    return rows


def run_eval(model: str, test_file: str | Path, out_dir: str | Path, schema: dict[str, Any] | None,
             settings: EvalConfig, default_system: str = "", endpoint: str | dict[str, Any] | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Evaluate `model` (default, a model/export folder, a run adapter folder) or an endpoint on a test file."""
    from tuneloop.eval.judge import judge_results, review_queue
    from tuneloop.eval.report import run_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples, quarantined = load_test_set(test_file, out, settings.max_samples)
    validators = SampleValidators(schema)
    label = (endpoint if isinstance(endpoint, str) else (endpoint or {}).get("model")) if endpoint else str(model)
    started = time.time()
    with _bar(progress) as bar:
        rows = generate_all(samples, str(model), schema, settings, default_system, endpoint, bar)
    results = [
        EvalResult(
            sample_id=sample.id, model=str(label), prompt_hash=prompt_hash, template_hash=template_hash,
            raw=generation.text, finish_reason=generation.finish_reason, prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens, latency_ms=round(generation.latency_ms, 2),
            constrained=mode == "constrained", scores=score_answer(sample, generation.text, generation.finish_reason, validators.of(sample)),
            mode=mode, slices=slices(sample), error=generation.error, sample=sample.model_dump(mode="json"),
        )
        for mode, sample, generation, prompt_hash, template_hash in rows
    ]
    verdicts = judge_results(results, settings.judge, schema) if settings.judge else {}
    queue = review_queue(results, verdicts)
    summary = build_summary(results, model=str(label), test_file=Path(test_file), settings=settings,
                            quarantined=quarantined, seconds=time.time() - started)
    summary["review_queue"] = len(queue)
    write_results(out / "results.jsonl", results)
    _write_jsonl(out / "review_queue.jsonl", queue)
    write_json(out / "summary.json", summary)
    write_text(out / "report.html", run_report(summary, results))
    return summary


def build_summary(results: list[EvalResult], model: str, test_file: Path, settings: EvalConfig, quarantined: int,
                  seconds: float) -> dict[str, Any]:
    modes = {}
    for mode in MODES:
        chosen = [r for r in results if r.mode == mode]
        if chosen:
            modes[mode] = summarize([r.scores for r in chosen])
            modes[mode]["completion_tokens"] = sum(r.completion_tokens for r in chosen)
            modes[mode]["errors"] = sum(1 for r in chosen if getattr(r, "error", None))
            judged = [r.scores["judge"]["mean"] for r in chosen if "judge" in r.scores and r.scores["judge"].get("mean")]
            modes[mode]["judge_mean"] = sum(judged) / len(judged) if judged else None
    return {
        "kind": "eval", "model": model, "test_file": str(test_file), "test_sha256": file_digest(test_file),
        "samples": len({r.sample_id for r in results}), "quarantined": quarantined, "seconds": round(seconds, 2),
        "settings": settings.model_dump(mode="json"), "modes": modes,
    }


def write_results(path: Path, results: list[EvalResult]) -> None:
    _write_jsonl(path, [r.model_dump(mode="json") for r in results])


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_open(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def load_results(eval_dir: str | Path) -> list[EvalResult]:
    """EvalResults of a finished run folder."""
    path = Path(eval_dir) / "results.jsonl"
    if not path.exists():
        raise EvalError(f"{path}: no results here; point at a folder written by `tuneloop eval run`.")
    results = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                results.append(EvalResult.model_validate_json(line))
            except ValueError as err:
                raise EvalError(f"{path}, line {number}: not an EvalResult ({err}); re-run `tuneloop eval run`.") from None
    return results


class _bar:
    """A rich progress bar with one task per mode (silent when not asked for)."""

    def __init__(self, enabled: bool):
        self.progress = None
        if enabled:
            from rich.progress import Progress

            self.progress = Progress(transient=False)

    def __enter__(self) -> Callable[[str, int], Callable[[int], None]]:
        if self.progress is not None:
            self.progress.start()

        def task(mode: str, total: int) -> Callable[[int], None]:
            if self.progress is None:
                return lambda n: None
            task_id = self.progress.add_task(f"eval {mode}", total=total)
            return lambda n: self.progress.update(task_id, advance=n)

        return task

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
