"""`tuneloop doctor`: what this machine can do for fine-tuning, and what to do about each failed check.

Each check is a small function returning a `Check`; `run_checks()` runs them all and never raises, so the doctor
works on a CPU-only laptop as well as on a GPU node.
"""

from __future__ import annotations

import importlib.util
import platform
import shutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Level = Literal["ok", "warn", "fail", "info"]
MIN_CUDA = (11, 8)
MIN_CAPABILITY = (8, 0)


@dataclass
class Check:
    name: str
    level: Level
    value: Any
    fix: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


def check_python() -> Check:
    version = platform.python_version()
    ok = sys.version_info >= (3, 11)
    return Check("python", "ok" if ok else "fail", version, "" if ok else "tuneloop needs Python 3.11 or newer.")


def check_torch() -> Check:
    import torch

    cuda = torch.version.cuda
    details = {"cuda_build": cuda, "cuda_available": torch.cuda.is_available()}
    if not torch.cuda.is_available():
        return Check("torch", "info", torch.__version__, "No CUDA device: training and eval run on the CPU "
                     "(fine for the demo and small models; use a GPU machine for anything above ~0.5B).", details)
    if cuda and _version_tuple(cuda) < MIN_CUDA:
        return Check("torch", "warn", torch.__version__, f"CUDA {cuda} is older than 11.8: install a torch build for CUDA 11.8+.", details)
    return Check("torch", "ok", torch.__version__, "", details)


def check_gpus() -> Check:
    import torch

    if not torch.cuda.is_available():
        return Check("gpu", "info", "none", "No GPU found; QLoRA and vLLM need an NVIDIA GPU.")
    gpus = []
    worst = "ok"
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        capability = (props.major, props.minor)
        gpus.append({"index": index, "name": props.name, "capability": f"{props.major}.{props.minor}",
                     "memory_gb": round(total / 2**30, 1), "free_gb": round(free / 2**30, 1)})
        if capability < MIN_CAPABILITY:
            worst = "warn"
    fix = "" if worst == "ok" else "Compute capability below 8.0: no bf16 and no flash attention; train in fp16/fp32 with sdpa."
    return Check("gpu", worst, f"{len(gpus)} × {gpus[0]['name']}", fix, {"gpus": gpus})


def check_bf16() -> Check:
    import torch

    if torch.cuda.is_available():
        ok = torch.cuda.is_bf16_supported()
        return Check("bf16", "ok" if ok else "warn", ok, "" if ok else "No bf16 on this GPU: tuneloop trains in fp16 with loss scaling.")
    return Check("bf16", "info", False, "CPU: tuneloop trains in fp32 (bf16 on CPUs without native support is ~16× slower).")


def _attention_works(implementation: str) -> tuple[bool, str]:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q = torch.randn(1, 2, 16, 32, device=device, dtype=dtype)
    try:
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        if implementation == "sdpa":
            torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        elif implementation == "flex":
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, 16, 16, device=device)
            flex_attention(q, q, q, block_mask=mask)
        elif implementation == "flash_attention_2":
            if importlib.util.find_spec("flash_attn") is None:
                return False, "flash-attn is not installed: `pip install flash-attn --no-build-isolation` on a CUDA machine."
            if device != "cuda":
                return False, "flash-attn needs a CUDA GPU."
            from flash_attn import flash_attn_func

            flash_attn_func(q.transpose(1, 2), q.transpose(1, 2), q.transpose(1, 2), causal=True)
        return True, ""
    except Exception as err:  # a backend that fails here fails in training too; report why
        return False, f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"


def check_attention() -> Check:
    results = {name: _attention_works(name) for name in ("sdpa", "flex", "flash_attention_2")}
    working = [name for name, (ok, _) in results.items() if ok]
    fixes = "; ".join(f"{name}: {why}" for name, (ok, why) in results.items() if not ok)
    level: Level = "ok" if "sdpa" in working else "fail"
    return Check("attention", level, ", ".join(working) or "none", fixes, {n: ok for n, (ok, _) in results.items()})


def check_memory() -> Check:
    import psutil

    memory = psutil.virtual_memory()
    free_gb = memory.available / 2**30
    level: Level = "ok" if free_gb >= 8 else "warn"
    fix = "" if level == "ok" else "Under 8 GB free RAM: close other programs or use a smaller model/batch."
    disk = shutil.disk_usage(".")
    return Check("memory", level, f"{free_gb:.1f} GiB free of {memory.total / 2**30:.1f} GiB", fix,
                 {"cpu_count": psutil.cpu_count(), "disk_free_gb": round(disk.free / 2**30, 1)})


ENGINES = {
    "vllm": "fast serving and eval: install in its own environment (`pip install vllm`), never in tuneloop's.",
    "bitsandbytes": "QLoRA 4-bit training: `pip install bitsandbytes` on a CUDA machine.",
    "liger_kernel": "fused kernels that cut training memory: `pip install liger-kernel`.",
    "deepspeed": "ZeRO sharding for large full fine-tunes: `pip install deepspeed`.",
    "flash_attn": "varlen attention for packed training: `pip install flash-attn --no-build-isolation`.",
}


def check_engines() -> Check:
    found = {name: importlib.util.find_spec(name) is not None for name in ENGINES}
    if not found["vllm"] and shutil.which("vllm"):
        found["vllm"] = True
    missing = [f"{name}: {hint}" for name, hint in ENGINES.items() if not found[name]]
    present = [name for name, ok in found.items() if ok]
    return Check("engines", "info", ", ".join(present) or "none", "; ".join(missing), found)


def check_default_model() -> Check:
    from tuneloop.models import ModelError, default_gguf_path, default_is_current, default_model_dir

    folder = default_model_dir()
    if default_is_current():
        return Check("default model", "ok", str(folder))
    try:
        default_gguf_path()
    except ModelError as err:
        return Check("default model", "fail", "not installed", str(err))
    return Check("default model", "warn", "not converted", "Run `tuneloop models pull default` (about 30 s, offline).")


def check_hub() -> Check:
    """Whether hub ids work here; offline is a normal way to run tuneloop, so this is information, not a failure."""
    from tuneloop.models import hub_unavailable_reason

    reason = hub_unavailable_reason()
    if reason is None:
        return Check("model hub", "ok", "reachable")
    return Check("model hub", "info", "offline", f"{reason}: hub ids work only once in the local Hugging Face cache "
                 "(`hf download ID`); `tuneloop plan` knows the common families offline; the default model needs no hub.")


CHECKS: tuple[Callable[[], Check], ...] = (
    check_python, check_torch, check_gpus, check_bf16, check_attention, check_memory, check_engines, check_default_model,
    check_hub,
)


def run_checks() -> list[Check]:
    results = []
    for check in CHECKS:
        try:
            results.append(check())
        except Exception as err:  # one broken check must not hide the others
            name = check.__name__.removeprefix("check_")
            results.append(Check(name, "fail", "error", f"{type(err).__name__}: {err}"))
    return results


def as_json(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(c) for c in checks]
