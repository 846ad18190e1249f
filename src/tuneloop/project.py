"""`tuneloop.yaml` → typed config, and the paths of a project directory.

Every key has a default and a one-line help (the pydantic `description`); `tuneloop init` writes a commented file
from these. A stage reads only its own section. Unknown keys are an error that names the key, so a typo never
silently falls back to a default.

```
myproject/
  tuneloop.yaml
  data/raw/              what the user brings (never modified)
  data/rounds/r0001/     train/val/test/quarantine.jsonl, manifest.json, report.html
  runs/<run-id>/         run card, config used, checkpoints, adapter, metrics.jsonl
  exports/<name>/        merged model, chat template, manifest
  evals/<id>/            per-sample results, report.html
  traces.db              SQLite: traces, feedback, relabel queue, annotations
```
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import pydantic_core
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PROJECT_FILE = "tuneloop.yaml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceConfig(Section):
    path: str = Field(description="Data file or LLaMA-Factory folder, relative to the project.")
    license: str = Field("internal", description="License of the source; must be on data.license_allowlist.")
    format: str = Field("auto", description="auto | alpaca | sharegpt | openai | csv | parquet.")
    dataset: str | None = Field(None, description="Entry of a LLaMA-Factory dataset_info.json to read.")


class TaskConfig(Section):
    name: str = Field("task", description="Short name of the task; names runs and exports.")
    schema_: str | dict[str, Any] | None = Field(
        None, alias="schema", description="JSON Schema of the answer (file or inline); makes it a JSON task."
    )
    system: str = Field("", description="Default system prompt for samples without their own.")
    sop: str | None = Field("sop.md", description="Annotation SOP file used by the annotation tool and the judge.")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SplitConfig(Section):
    val: float = Field(0.1, ge=0, lt=1, description="Share of seed groups held out for validation.")
    test: float = Field(0.1, ge=0, lt=1, description="Share of seed groups held out for the test set.")
    group_by: str = Field("lineage.source_id", description="Field that keeps variants of one seed together.")
    seed: int = Field(0, description="Seed of the group shuffle.")


class DedupConfig(Section):
    threshold: float = Field(0.8, description="Jaccard similarity above which two rows are near-duplicates.")
    same_seed_threshold: float = Field(0.9, description="Higher bar for variants of one seed (same source_id).")
    num_perm: int = Field(128, description="MinHash permutations.")
    word_ngram: int = Field(3, description="Word n-gram size for Latin text.")
    char_ngram: int = Field(4, description="Character n-gram size (3-5) for Chinese text.")


class LeakageConfig(Section):
    char_ngram: int = Field(13, description="Character n-gram (8-13) for Chinese overlap; 13 passes stock phrases.")
    word_ngram: int = Field(13, description="Word n-gram for English overlap.")
    allow: bool = Field(False, description="Report leaks without failing the gate (not recommended).")
    common_share: float = Field(0.01, description="N-grams in more than this share of rows are template text, not leaks.")
    common_min_rows: int = Field(10, description="...and in more than this many rows (so small sets keep their checks).")
    min_overlap: float = Field(0.2, ge=0, le=1, description="An n-gram hit needs this share of one row's n-grams in the other (0: any).")


class PIIConfig(Section):
    mode: Literal["placeholder", "fake"] = Field("placeholder", description="[PHONE_1] placeholders or fake values.")
    extra_patterns: dict[str, str] = Field(default_factory=dict, description="Extra TYPE: regex recognizers.")


class DataConfig(Section):
    sources: list[SourceConfig] = Field(default_factory=list, description="Files the gate reads, with licenses.")
    license_allowlist: list[str] = Field(
        default_factory=lambda: ["internal", "apache-2.0", "mit", "cc-by-4.0", "cc0-1.0"],
        description="Licenses a source may carry.",
    )
    mix: dict[str, float] = Field(
        default_factory=lambda: {"golden": 0.4, "negative": 0.2, "boundary": 0.3, "generic": 0.1},
        description="Target share of each sample type in train.",
    )
    split: SplitConfig = Field(default_factory=SplitConfig, description="How train/val/test are cut.")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="Near-duplicate settings.")
    leakage: LeakageConfig = Field(default_factory=LeakageConfig, description="Train/test overlap settings.")
    pii: PIIConfig = Field(default_factory=PIIConfig, description="PII redaction settings.")
    mix_resample: bool = Field(True, description="Down-sample over-represented sample types toward data.mix.")
    mix_max_drop: float = Field(0.3, ge=0, le=1, description="At most this share of train is dropped to reach the mix.")
    max_rejected_share: float = Field(0.2, description="The check fails when more than this share is quarantined.")
    max_tokens: int | None = Field(None, description="Rows longer than this many tokens are flagged (None: train.max_length).")


class TrainConfig(Section):
    method: Literal["lora", "qlora", "full"] = Field("lora", description="lora | qlora | full fine-tuning.")
    max_length: int = Field(1024, description="Longest row in tokens; longer inputs are windowed, never the answer.")
    window_overlap: int = Field(64, description="Tokens two input windows share when a long input is split.")
    packing: bool = Field(True, description="Pack rows into max_length bins without cross-sample attention.")
    effective_batch: int = Field(64, description="Target samples per optimizer step (64 default, 128 preset).")
    per_device_batch: int = Field(4, description="Rows per device per forward pass.")
    learning_rate: float | None = Field(None, description="None: 2e-4 for LoRA/QLoRA, 1e-5 for full.")
    epochs: float = Field(3, description="Passes over the train set.")
    max_steps: int | None = Field(None, description="Stop after this many optimizer steps (overrides epochs).")
    warmup_ratio: float = Field(0.04, ge=0.03, le=0.05, description="Warmup share of optimizer steps (3-5 %).")
    lora_rank: int = Field(16, description="LoRA rank: 16 default, 32, 64/128 for new-knowledge tasks.")
    lora_alpha: int | None = Field(None, description="None: 2 x rank.")
    lora_dropout: float = Field(0.05, description="Dropout on LoRA layers.")
    eval_steps: int = Field(50, description="Evaluate on val every this many optimizer steps.")
    early_stopping_patience: int = Field(3, description="Stop after this many evaluations without improvement.")
    oscillation_evals: int = Field(4, description="Evaluations of oscillating val loss before suggesting 5e-5.")
    seed: int = Field(42, description="Seed for data order and initialisation.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    memory_budget_gib: float | None = Field(None, gt=0, description="GPU memory (GiB) a tuneloop-engine run may use: "
                                            "it recomputes activations (selective checkpointing) to stay under it.")
    engine: Literal["tuneloop", "trl"] = Field("tuneloop", description="tuneloop's own SFT step, or TRL's SFTTrainer "
                                               "(the reference; multi-GPU runs use TRL).")
    compile: Literal["auto", "on", "off"] = Field("auto", description="torch.compile the decoder layers "
                                                  "(auto: on a GPU with flex_attention, off on CPU).")
    tool_format: Literal["auto", "template", "json_block", "hermes"] = Field(
        "auto", description="How tools and calls are written in the prompt: template (the model's own chat template) | "
                            "json_block (functions as JSON in the system message, a call as bare JSON) | hermes "
                            "(<tools> / <tool_call> / <tool_response>, read by vLLM's hermes parser) | auto (template "
                            "when the model's template renders tools, else json_block); saved in the trained model's "
                            "chat template.")
    cpu_precision: Literal["auto", "fp32", "bf16", "mixed"] = Field(
        "auto", description="CPU training precision of the tuneloop engine: mixed (the frozen base multiplies in "
                            "bf16, sums, adapters and loss in fp32) | fp32 | bf16 (autocast, measured slower and "
                            "3-6 % off in loss) | auto (mixed where the CPU has avx512_bf16 or AMX, else fp32).")


class AlignConfig(Section):
    method: Literal["none", "dpo"] = Field("none", description="none | dpo: `tuneloop run` adds best-of-N + DPO "
                                           "after SFT (stages `best-of-n` and `dpo`, before `eval after`).")
    beta: float = Field(0.1, gt=0, description="DPO beta: higher keeps the model closer to the reference (the SFT model).")
    # TRL's DPO losses that need no setting beyond beta (exo_pair needs label smoothing, so it is not offered)
    loss_type: Literal["sigmoid", "hinge", "ipo", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
                       "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"] = Field(
        "sigmoid", description="DPO loss (TRL's loss_type): sigmoid (DPO) | ipo | hinge | robust | apo_zero | "
                               "sigmoid_norm | ...")
    sft_weight: float = Field(0.0, ge=0, description="DPO: weight of an SFT term (the chosen answer's mean token "
                              "negative log-likelihood, TRL's `sft` loss) added to the DPO loss, as RPO does: keeps "
                              "the chosen answers likely while the rejected ones are pushed down (0: DPO alone).")
    ld_alpha: float | None = Field(None, ge=0, le=1, description="DPO: length desensitization (LD-DPO, TRL's ld_alpha): "
                                   "log-probabilities past the shorter answer of a pair count this much, so a long "
                                   "run-on rejected answer does not win the margin by its length alone (None: off).")
    learning_rate: float | None = Field(None, description="None: 2e-5 for LoRA/QLoRA, 1e-6 for full (a tenth of "
                                        "SFT's rates or less: alignment moves a trained model, gently).")
    epochs: float = Field(1, gt=0, description="Passes over the preference pairs (DPO) or the prompts (GRPO).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    num_generations: int = Field(4, ge=2, description="GRPO: completions per prompt (the group its advantage is "
                                 "computed over).")
    max_completion_length: int | None = Field(None, ge=1, description="GRPO: longest completion in tokens (None: "
                                              "the longest reference answer + completion_margin).")
    completion_margin: float = Field(0.5, ge=0, description="GRPO: share added to the longest reference answer "
                                     "(tokens) to get max_completion_length.")
    temperature: float = Field(1.0, gt=0, description="GRPO: sampling temperature of the rollouts.")
    constrained_rollouts: bool = Field(False, description="GRPO: sample rollouts through the embedded engine "
                                       "constrained to the task schema.")
    preset: Literal["strict", "practice", "format"] = Field("strict", description="Reward preset: strict (every "
                                                             "check), practice (1.0 / 0.5 / -1.0 / -0.5), format "
                                                             "(parse, schema, noise, length); see train/rewards.py.")
    rewards: dict[str, float] = Field(default_factory=dict, description="Reward weights by name, e.g. {json_parses: "
                                      "1.0, no_noise: 0.5}; when given they replace the preset's.")
    n: int = Field(8, ge=2, description="Best-of-N: candidates sampled per prompt.")
    sample_temperature: float = Field(0.8, gt=0, description="Best-of-N: sampling temperature of the candidates.")
    sample_max_new_tokens: int | None = Field(None, ge=1, description="Best-of-N: longest candidate (None: the "
                                              "longest reference answer + half again, at least 32, as eval derives it).")


class EvalGate(Section):
    schema_valid: float | None = Field(0.98, description="Minimum schema-valid rate of the candidate.")
    json_valid: float | None = Field(None, description="Minimum strict JSON parse rate.")
    field_accuracy: float | dict[str, str] | None = Field(
        default_factory=lambda: {"not_worse_than": "baseline"},
        description="A minimum, or {not_worse_than: baseline} (significance-tested).",
    )
    alpha: float = Field(0.05, description="Significance level of the paired tests.")
    refusal_ok: float | None = Field(None, description="Minimum refusal consistency on boundary samples.")
    not_worse: list[str] = Field(
        default_factory=lambda: ["json_valid", "schema_valid", "refusal_ok"],
        description="Binary metrics the candidate must not be significantly worse on than the baseline (McNemar).",
    )
    mode: Literal["unconstrained", "constrained"] = Field("unconstrained", description="Which eval mode is gated.")
    max_errors: int = Field(0, ge=0, description="Failed requests (answers or judge) a gated run may have; more fail it.")


class EvalConfig(Section):
    max_new_tokens: int | None = Field(
        None, description="Longest answer generated (None: the longest reference answer + half again, at least 32).")
    batch_size: int = Field(16, description="Prompts per generation batch (local backend).")
    constrained: bool = Field(False, description="Also run with schema-constrained decoding.")
    max_samples: int | None = Field(None, description="Evaluate at most this many test samples, spread evenly "
                                    "over the test file (every group represented).")
    seed: int = Field(0, description="Seed of generation (greedy decoding is deterministic regardless).")
    concurrency: int = Field(8, description="Requests in flight at once against an endpoint.")
    gate: EvalGate = Field(default_factory=EvalGate, description="What a candidate must reach to pass.")
    judge: dict[str, Any] | None = Field(None, description="LLM judge endpoint: {base_url, model, api_key_env, concurrency, criteria}.")


class ServeConfig(Section):
    backend: Literal["embedded", "vllm"] = Field("embedded", description="embedded | vllm.")
    host: str = Field("127.0.0.1", description="Interface to listen on (loopback by default).")
    port: int = Field(8000, description="Port to listen on.")
    api_key_env: str | None = Field(None, description="Environment variable holding a required API key.")


class LLMConfig(Section):
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint (None: env TUNELOOP_LLM_BASE_URL).")
    model: str | None = Field(None, description="Model name at the endpoint (None: env TUNELOOP_LLM_MODEL).")
    api_key_env: str = Field("TUNELOOP_LLM_API_KEY", description="Environment variable holding the API key.")
    concurrency: int = Field(4, ge=1, description="Requests in flight at once.")
    max_retries: int = Field(4, ge=0, description="Retries with exponential backoff on timeouts, 429 and 5xx.")
    cache: str = Field(".tuneloop/llm-cache.sqlite", description="SQLite request cache; a repeated request never pays twice.")
    temperature: float = Field(0.8, description="Sampling temperature of paraphrase requests.")


class AugmentConfig(Section):
    per_seed: int = Field(3, ge=1, le=8, description="Clone variants made per seed (3-8).")
    rules: list[str] = Field(
        default_factory=lambda: ["typo", "whitespace", "punctuation_width", "irrelevant_sentence", "entity_swap", "length", "tone"],
        description="Offline rules to draw from.",
    )
    pools: str | dict[str, list[str]] | None = Field(
        None, description="Entity pools by answer field (inline or a JSON file) for entity replacement."
    )
    spot_check: int = Field(20, description="Variants sampled into the spot-check file for a human.")
    seed: int = Field(0, description="Seed of rule choice and spot-check sampling.")
    llm: LLMConfig = Field(default_factory=LLMConfig, description="Endpoint for LLM paraphrase (--llm).")


class LangfuseConfig(Section):
    host: str | None = Field(None, description="Langfuse URL (None: env LANGFUSE_HOST or LANGFUSE_BASE_URL).")
    public_key_env: str = Field("LANGFUSE_PUBLIC_KEY", description="Environment variable holding the public key.")
    secret_key_env: str = Field("LANGFUSE_SECRET_KEY", description="Environment variable holding the secret key.")
    api: Literal["auto", "v3", "v4"] = Field("auto", description="v3: self-hosted page-based API; v4: Cloud's "
                                             "cursor-based v2 observations / v3 scores; auto: detected.")
    page_size: int = Field(100, ge=1, le=1000, description="Items per request.")
    max_retries: int = Field(5, ge=0, description="Retries with exponential backoff on timeouts, 429 and 5xx.")
    timeout_s: float = Field(30.0, gt=0, description="Seconds one request may take.")
    trace_name: str | None = Field(None, description="Only traces of this name.")
    tags: list[str] = Field(default_factory=list, description="Only traces carrying all of these tags.")
    environment: str | None = Field(None, description="Only traces of this Langfuse environment.")


class SelectConfig(Section):
    feedback_names: list[str] = Field(default_factory=lambda: ["user-feedback"],
                                      description="Score names that are user feedback.")
    negative_below: float = Field(0.5, description="A feedback score under this (false for booleans) is negative.")
    judge_names: list[str] = Field(default_factory=lambda: ["judge"], description="Score names an LLM judge writes.")
    judge_min: float = Field(0.5, description="A judge score under this is a failure.")


class ClusterConfig(Section):
    method: Literal["kmeans", "hdbscan"] = Field("kmeans", description="k-means with k, or HDBSCAN (finds k itself).")
    k: int | None = Field(None, ge=1, description="Clusters for k-means (None: chosen by silhouette score).")
    min_cluster_size: int = Field(3, ge=2, description="Smallest HDBSCAN cluster.")
    seed: int = Field(0, description="Seed: the same failures give the same clusters.")


class LoopConfig(Section):
    traces: list[str] = Field(default_factory=lambda: ["store"], description="Where traffic comes from: store "
                              "(the project's traces.db), langfuse, or paths of other traces.db files.")
    since_days: float | None = Field(None, gt=0, description="Pull only traffic this many days old or newer "
                                     "(None: everything new since the last pull).")
    langfuse: LangfuseConfig = Field(default_factory=LangfuseConfig, description="The Langfuse project to read.")
    select: SelectConfig = Field(default_factory=SelectConfig, description="What counts as a failure.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="How failures are grouped.")
    holdout: float = Field(0.25, ge=0, lt=1, description="Share of relabeled traffic held out as a fresh test slice.")
    canary_weight: float = Field(0.1, gt=0, le=1, description="Share of traffic the new model gets at canary start.")


class LabelRule(Section):
    field: str = Field(description="Answer field the rule checks: a dotted path (customer.email), [] for each list "
                                   "item (items[].sku).")
    pattern: str | None = Field(None, description="Regular expression a string value must match in full (null skipped).")
    enum: list[Any] | None = Field(None, description="The only values the field may take (null skipped).")
    message: str = Field(description="What the annotator is told when the rule is broken: the fix.")

    @model_validator(mode="after")
    def _one_check(self) -> LabelRule:
        if self.pattern is None and self.enum is None:
            raise ValueError(f"annotate.rules {self.field!r}: give a pattern or an enum to check")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as err:
                raise ValueError(f"annotate.rules {self.field!r}: pattern {self.pattern!r} is no regular expression "
                                 f"({err})") from None
        return self


class AnnotateConfig(Section):
    rules: list[LabelRule] = Field(default_factory=list, description="Custom label rules, checked with the schema and "
                                   "SOP rules before a label is accepted (relabel import, the annotation tool).")


class ProjectConfig(Section):
    task: TaskConfig = Field(default_factory=TaskConfig, description="What the model must do.")
    model: str = Field("default", description="HF model id, local directory, or 'default' (embedded SmolLM2).")
    data: DataConfig = Field(default_factory=DataConfig, description="Sources and the quality gate.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training settings.")
    align: AlignConfig = Field(default_factory=AlignConfig, description="Alignment after SFT: rewards, best-of-N, DPO, GRPO.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation settings.")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="Serving settings.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Clone augmentation of seeds.")
    loop: LoopConfig = Field(default_factory=LoopConfig, description="Traffic back into data: `tuneloop loop`.")
    annotate: AnnotateConfig = Field(default_factory=AnnotateConfig, description="Label rules for relabeling and annotation.")


class ProjectError(ValueError):
    """A project file or directory that cannot be used, with what to change."""


class Project:
    """A project directory and its parsed `tuneloop.yaml`."""

    def __init__(self, root: str | Path, config: ProjectConfig | None = None):
        self.root = Path(root).resolve()
        self.config = config or ProjectConfig()

    @classmethod
    def load(cls, root: str | Path = ".") -> Project:
        root = Path(root)
        path = root / PROJECT_FILE
        if not path.exists():
            raise ProjectError(f"{path}: no project file here. Create one with `tuneloop init {root}` or pass paths.")
        return cls(root, load_config(path))

    # -- paths -------------------------------------------------------------------------------------------------
    def path(self, relative: str | Path) -> Path:
        relative = Path(relative)
        return relative if relative.is_absolute() else self.root / relative

    @property
    def rounds_dir(self) -> Path:
        return self.root / "data" / "rounds"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    @property
    def evals_dir(self) -> Path:
        return self.root / "evals"

    @property
    def traces_db(self) -> Path:
        return self.root / "traces.db"

    @property
    def relabeled_file(self) -> Path:
        """Relabeled traffic accepted for training (`tuneloop loop` writes it); every later gate of the project reads
        it beside data.sources."""
        return self.root / "data" / "traffic" / "relabeled.jsonl"

    def rounds(self) -> list[Path]:
        """Completed round folders, oldest first (a round is complete once its manifest exists)."""
        if not self.rounds_dir.exists():
            return []
        return sorted(p for p in self.rounds_dir.iterdir() if re.fullmatch(r"r\d{4}", p.name) and (p / "manifest.json").exists())

    def latest_round(self) -> Path | None:
        rounds = self.rounds()
        return rounds[-1] if rounds else None

    def next_round(self) -> Path:
        rounds = self.rounds()
        number = int(rounds[-1].name[1:]) + 1 if rounds else 1
        return self.rounds_dir / f"r{number:04d}"

    def schema(self) -> dict[str, Any] | None:
        """The task's JSON Schema (loaded from its file when a path is given)."""
        return resolve_schema(self.config.task.schema_, self.root)


def resolve_schema(schema: str | dict[str, Any] | None, base: Path) -> dict[str, Any] | None:
    if schema is None or isinstance(schema, dict):
        return schema
    path = Path(schema) if Path(schema).is_absolute() else base / schema
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProjectError(f"{path}: task.schema points to a file that does not exist; fix the path in tuneloop.yaml.") from None
    except json.JSONDecodeError as err:
        raise ProjectError(f"{path}, line {err.lineno}: the schema is not valid JSON ({err.msg}).") from None


def load_config(path: str | Path) -> ProjectConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ProjectError(f"{path}{where}: not valid YAML ({problem}); check the indentation and quoting there.") from None
    try:
        return ProjectConfig.model_validate(raw)
    except ValidationError as err:
        lines = _key_lines(path.read_text(encoding="utf-8"))
        problems = "; ".join(_where(e["loc"], lines) + f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in err.errors())
        raise ProjectError(f"{path}: {problems}. See `tuneloop init --help` for every key with its help.") from None


def _key_lines(text: str) -> dict[tuple[Any, ...], int]:
    """Line number of every key (and list item) of a YAML mapping, by its path: so an error can cite the line."""
    found: dict[tuple[Any, ...], int] = {}

    def walk(node: yaml.Node, at: tuple[Any, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                found[(*at, key.value)] = key.start_mark.line + 1
                walk(value, (*at, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                found[(*at, index)] = item.start_mark.line + 1
                walk(item, (*at, index))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return found


def _where(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> str:
    for end in range(len(loc), 0, -1):  # a missing key has no line: cite its parent's
        if tuple(loc[:end]) in lines:
            return f"line {lines[tuple(loc[:end])]}: "
    return ""


def dump_config(config: ProjectConfig) -> str:
    """The config as YAML with each key's help as a comment above it."""
    lines: list[str] = []

    def emit(model: BaseModel, indent: int) -> None:
        for name, field in type(model).model_fields.items():
            key = field.alias or name
            value = getattr(model, name)
            pad = "  " * indent
            if field.description:
                lines.append(f"{pad}# {field.description}")
            if isinstance(value, BaseModel):
                lines.append(f"{pad}{key}:")
                emit(value, indent + 1)
            else:
                # JSON is valid YAML flow style and keeps each value on one line
                plain = pydantic_core.to_jsonable_python(value, by_alias=True)  # lists of sections, e.g. data.sources
                lines.append(f"{pad}{key}: {json.dumps(plain, ensure_ascii=False)}")

    emit(config, 0)
    return "\n".join(lines) + "\n"
