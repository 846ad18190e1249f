"""One evaluation run: a model (or endpoint) over a test set → `results.jsonl`, `summary.json`, `report.html`.

```
test.jsonl ──to_messages──▶ chat template ──▶ backend (local batched | endpoint) ──▶ score_answer ──▶ EvalResult
                                                   unconstrained, then schema-constrained when asked
out_dir/answers.jsonl   the journal: each answer as it arrives (fsync'ed); a rerun resumes from it
out_dir/results.jsonl   one EvalResult per sample and mode, with the test sample itself (for compare/export-bad)
out_dir/errors.jsonl    requests that failed after the client's retries (counted as `errors`, never scored)
                        (a constrained answer that broke its schema is an answer: scored, and counted apart as
                        `constraint_failures`)
out_dir/summary.json    rates per mode ("unconstrained", "constrained"), the settings and the test file digest
out_dir/review_queue.jsonl   boundary cases and judge/metric disagreements for a human
out_dir/report.html     metrics, per-field accuracy, failure rate vs length, bad cases
```
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tuneloop.answers import schema_validator
from tuneloop.data.io.formats import read_samples, write_quarantine
from tuneloop.eval.backends import (
    EndpointBackend,
    Generation,
    LocalBackend,
    json_schema_format,
    length_sorted_batches,
    schema_constraint,
)
from tuneloop.eval.journal import Journal
from tuneloop.eval.metrics import score_answer, summarize
from tuneloop.tools import sample_calls
from tuneloop.files import file_digest, write_json, write_jsonl, write_text
from tuneloop.llm_client import max_tokens_for
from tuneloop.progress import progress_bar, say
from tuneloop.project import EvalConfig
from tuneloop.records import EvalResult, Sample, content_hash, to_messages

MODES = ("unconstrained", "constrained")
SLICE_KEYS = ("task_type", "source", "difficulty", "sample_type")


class EvalError(ValueError):
    """An evaluation that cannot run or be read, with what to do."""


def load_test_set(test_file: str | Path, out_dir: Path, max_samples: int | None) -> tuple[list[Sample], int]:
    """Test samples (`max_samples`: a spread subset); rows that do not parse go to out_dir/quarantine.jsonl
    (never silently dropped)."""
    path = Path(test_file)
    if not path.exists():
        raise EvalError(f"{path}: no such test file; pass --test FILE or run `tuneloop data split` first.")
    read = read_samples(path, stage="eval")
    if read.quarantined:
        write_quarantine(out_dir / "quarantine.jsonl", read.quarantined)
    if not read.samples:
        raise EvalError(f"{path}: no usable test samples ({len(read.quarantined)} rows quarantined, see {out_dir / 'quarantine.jsonl'}).")
    return spread_subset(read.samples, max_samples), len(read.quarantined)


def spread_subset(samples: list[Sample], limit: int | None) -> list[Sample]:
    """At most `limit` samples spread evenly over the file, in file order: a test set grouped by lineage (by
    function, by source) keeps every group represented, where its first rows would hold only the first groups.
    Deterministic, so a baseline and a candidate are scored on the same samples.

    >>> [s.id for s in spread_subset([Sample(id=str(i), instruction="q") for i in range(10)], 4)]
    ['0', '2', '5', '7']
    """
    if not limit or limit >= len(samples):
        return samples
    return [samples[i * len(samples) // limit] for i in range(limit)]


def slices(sample: Sample) -> dict[str, str]:
    """The values a comparison slices by; a missing one is the string "unset" so it still forms a slice."""
    values = {key: getattr(sample.meta, key) for key in SLICE_KEYS if key != "sample_type"}
    values["sample_type"] = sample.sample_type
    if "tools" in sample.extras:  # per-tool slices: the expected function, "none" where no call is expected
        calls = sample_calls(sample) or []
        values["tool"] = ",".join(sorted({c["name"] for c in calls})) or "none"
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


def endpoint_backend(endpoint: str | dict[str, Any], settings: EvalConfig, max_tokens: int) -> EndpointBackend:
    """An endpoint from a URL or {base_url, model, api_key_env, concurrency, max_retries, timeout_s}."""
    spec = {"base_url": endpoint} if isinstance(endpoint, str) else dict(endpoint)
    if not spec.get("base_url"):
        raise EvalError(f"endpoint {endpoint!r}: needs a base_url such as http://127.0.0.1:8000/v1.")
    key_env = spec.get("api_key_env")
    if key_env and not os.environ.get(key_env):
        raise EvalError(f"--api-key-env {key_env}: that environment variable is not set; export it with the endpoint's key.")
    return EndpointBackend(
        spec["base_url"], spec.get("model") or "default", api_key=os.environ.get(key_env) if key_env else None,
        concurrency=int(spec.get("concurrency", settings.concurrency)), max_tokens=max_tokens, seed=settings.seed,
        max_retries=int(spec.get("max_retries", 4)), timeout_s=float(spec.get("timeout_s", 120.0)),
    )


def model_fingerprint(model: str) -> Any:
    """What identifies a model's weights for resuming: a folder's top-level file names, sizes and times, or its name."""
    path = Path(model)
    if path.is_dir():
        return [model, sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file())]
    return model


def answer_budget(samples: list[Sample], settings: EvalConfig, count: Callable[[str], int] | None) -> tuple[int, str]:
    """max_tokens per answer: the user's setting, else derived from the test set's reference answers."""
    if settings.max_new_tokens is not None:
        return settings.max_new_tokens, "set by the user (eval.max_new_tokens or --max-new-tokens)"
    if count is None:  # an endpoint: its tokenizer is unknown; a byte-level tokenizer never needs more tokens than bytes
        budget, reason = max_tokens_for([len(s.output.encode("utf-8")) for s in samples], "UTF-8 bytes")
        return budget, reason + "; bytes bound the tokens of a byte-level tokenizer, the endpoint's is not at hand"
    return max_tokens_for([count(s.output) for s in samples], "tokens")


def request_failed(generation: Generation) -> bool:
    """A request that got no answer (the endpoint failed after retries), as opposed to an answer that carries an
    error of its own (a constrained answer that broke its schema: scored, and counted as a constraint failure)."""
    return bool(generation.error) and generation.finish_reason == "error"


class _Answers:
    """Generations of one run by (mode, sample index): resumed from the journal, new ones journaled as they arrive."""

    def __init__(self, journal: Journal, samples: list[Sample], prompt_hashes: list[str]):
        self.journal = journal
        self.ids = [f"{sample.id}:{h}" for sample, h in zip(samples, prompt_hashes)]
        self.errors: dict[tuple[str, int], Generation] = {}

    def item(self, mode: str, index: int) -> str:
        return f"{mode}:{self.ids[index]}"

    def todo(self, mode: str) -> list[int]:
        return [i for i in range(len(self.ids)) if self.item(mode, i) not in self.journal.done]

    def add(self, mode: str, pairs: list[tuple[int, Generation]]) -> None:
        """Keep answers in the journal (fsync'ed); failed requests only in memory, so a rerun asks again."""
        for index, generation in pairs:
            if request_failed(generation):
                self.errors[(mode, index)] = generation
        self.journal.append((self.item(mode, i), asdict(g)) for i, g in pairs if not request_failed(g))

    def get(self, mode: str, index: int) -> Generation:
        if (mode, index) in self.errors:
            return self.errors[(mode, index)]
        row = self.journal.done[self.item(mode, index)]
        return Generation(**{name: row[name] for name in Generation.__dataclass_fields__ if name in row})


def generate_all(samples: list[Sample], model: str, schema: dict[str, Any] | None, settings: EvalConfig,
                 default_system: str, endpoint: str | dict[str, Any] | None, out: Path, progress: bool,
                 fresh: bool = False, tool_format: str = "auto",
                 ) -> tuple[list[tuple[str, Sample, Generation, str, str | None]], dict[str, Any]]:
    """(mode, sample, generation, prompt_hash, template_hash) for every sample in every mode asked for, and what ran.

    Answers are journaled in out/answers.jsonl as they arrive; a rerun with the same model, settings and prompts
    generates only what the journal lacks.
    """
    conversations = [to_messages(sample, default_system, with_answer=False) for sample in samples]
    prompt_hashes = [content_hash(messages) for messages in conversations]
    modes = ["unconstrained"] + (["constrained"] if settings.constrained and schema else [])
    template_hashes: list[str | None] = [None] * len(samples)
    if endpoint is not None:
        budget, reason = answer_budget(samples, settings, None)
        backend = endpoint_backend(endpoint, settings, budget)
        identity: Any = {"endpoint": backend.endpoint.base_url, "model": backend.model}
    else:
        from tuneloop.models import load_causal_lm

        from tuneloop.train.templates import use_tool_format

        lm, tokenizer = load_causal_lm(model)
        # the project's train.tool_format: a base model's prompts then show tools as the trained model's do (a
        # trained model carries its format in its template, which `auto` keeps)
        use_tool_format(tokenizer, tool_format, model)
        budget, reason = answer_budget(samples, settings,
                                       lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]))
        local = LocalBackend(lm, tokenizer, batch_size=settings.batch_size, max_new_tokens=budget, seed=settings.seed)
        rendered = [local.render(messages) for messages in conversations]
        template_hashes = [content_hash(text) for text in rendered]
        lengths = [len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]]
        identity = {"model": model_fingerprint(model), "batch_size": settings.batch_size,
                    **({"tool_format": tool_format} if tool_format != "auto" else {})}  # auto: keys as before
    key = content_hash(identity, budget, settings.seed, schema, length=24)
    answers = _Answers(Journal(out / "answers.jsonl", key, fresh=fresh), samples, prompt_hashes)
    resumed = sum(len(samples) - len(answers.todo(mode)) for mode in modes)
    with progress_bar(progress) as bar:
        if progress:
            say(f"max_tokens {budget}: {reason}")
            if resumed:
                say(f"resuming: {resumed} answers already in {out / 'answers.jsonl'}")
        for mode in modes:
            todo = answers.todo(mode)
            advance = bar(f"eval {mode}", len(samples), completed=len(samples) - len(todo))
            if endpoint is not None:
                response_format = json_schema_format(schema) if mode == "constrained" and schema else None
                backend.generate_chats([conversations[i] for i in todo], response_format, advance,
                                       on_result=lambda j, g, mode=mode, todo=todo: answers.add(mode, [(todo[j], g)]))
                continue
            constraint = schema_constraint(lm, tokenizer, schema) if mode == "constrained" and schema else None
            for batch in length_sorted_batches([lengths[i] for i in todo], settings.batch_size):
                indices = [todo[j] for j in batch]
                generations = local.generate([rendered[i] for i in indices], constraint)
                answers.add(mode, list(zip(indices, generations)))
                advance(len(indices))
    rows = [(mode, sample, answers.get(mode, i), prompt_hashes[i], template_hashes[i])
            for mode in modes for i, sample in enumerate(samples)]
    return rows, {"max_tokens": budget, "max_tokens_reason": reason, "resumed": resumed}


def run_eval(model: str, test_file: str | Path, out_dir: str | Path, schema: dict[str, Any] | None,
             settings: EvalConfig, default_system: str = "", endpoint: str | dict[str, Any] | None = None,
             progress: bool = True, fresh: bool = False, tool_format: str = "auto") -> dict[str, Any]:
    """Evaluate `model` (default, a model/export folder, a run adapter folder) or an endpoint on a test file.

    A rerun into the same out_dir resumes: answers (and judge verdicts) already journaled there are reused, unless
    `fresh`. A request that failed is an error (counted in `errors`), never an answer scored as a failure.
    """
    from tuneloop.eval.judge import judge_results, review_queue
    from tuneloop.eval.report import run_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples, quarantined = load_test_set(test_file, out, settings.max_samples)
    validators = SampleValidators(schema)
    label = (endpoint if isinstance(endpoint, str) else (endpoint or {}).get("model")) if endpoint else str(model)
    started = time.time()
    rows, ran = generate_all(samples, str(model), schema, settings, default_system, endpoint, out, progress, fresh,
                             tool_format)
    results = [
        EvalResult(
            sample_id=sample.id, model=str(label), prompt_hash=prompt_hash, template_hash=template_hash,
            raw=generation.text, finish_reason=generation.finish_reason, prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens, latency_ms=round(generation.latency_ms, 2),
            constrained=mode == "constrained", mode=mode, slices=slices(sample),
            error=generation.error if request_failed(generation) else None,
            constraint_failure=None if request_failed(generation) else generation.error,
            # a failed request has no answer to score: it is counted as an error, not as a wrong answer
            scores={} if request_failed(generation) else score_answer(sample, generation.text, generation.finish_reason,
                                                                      validators.of(sample)),
            sample=sample.model_dump(mode="json"),
        )
        for mode, sample, generation, prompt_hash, template_hash in rows
    ]
    verdicts = judge_results(results, settings.judge, schema, out_dir=out, progress=progress, fresh=fresh) \
        if settings.judge else {}
    queue = review_queue(results, verdicts)
    summary = build_summary(results, model=str(label), test_file=Path(test_file), settings=settings,
                            quarantined=quarantined, seconds=time.time() - started)
    summary.update(ran)
    summary["review_queue"] = len(queue)
    write_results(out / "results.jsonl", results)
    write_jsonl(out / "review_queue.jsonl", queue)
    write_jsonl(out / "errors.jsonl", [{"sample_id": r.sample_id, "mode": r.mode, "error": r.error}
                                       for r in results if r.error])
    write_json(out / "summary.json", summary)
    write_text(out / "report.html", run_report(summary, results))
    return summary


def build_summary(results: list[EvalResult], model: str, test_file: Path, settings: EvalConfig, quarantined: int,
                  seconds: float) -> dict[str, Any]:
    """Rates per mode over the answers; failed requests are counted in `errors` and left out of every rate."""
    modes = {}
    for mode in MODES:
        chosen = [r for r in results if r.mode == mode]
        if chosen:
            answered = [r for r in chosen if not getattr(r, "error", None)]
            modes[mode] = summarize([r.scores for r in answered])
            modes[mode]["completion_tokens"] = sum(r.completion_tokens for r in answered)
            modes[mode]["errors"] = len(chosen) - len(answered)
            modes[mode]["constraint_failures"] = sum(1 for r in answered if getattr(r, "constraint_failure", None))
            verdicts = [r.scores["judge"] for r in answered if "judge" in r.scores]
            judged = [v["mean"] for v in verdicts if "mean" in v]
            modes[mode]["judge_mean"] = sum(judged) / len(judged) if judged else None
            modes[mode]["judge_errors"] = sum(1 for v in verdicts if "error" in v)
    return {
        "kind": "eval", "model": model, "test_file": str(test_file), "test_sha256": file_digest(test_file),
        "samples": len({r.sample_id for r in results}), "quarantined": quarantined, "seconds": round(seconds, 2),
        "settings": settings.model_dump(mode="json"), "modes": modes,
    }


def write_results(path: Path, results: list[EvalResult]) -> None:
    write_jsonl(path, (r.model_dump(mode="json") for r in results))


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
