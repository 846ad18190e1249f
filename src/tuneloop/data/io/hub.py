"""Hugging Face data set ids as a source: loaded through `datasets`, only when online.

Each row records where it came from in `meta.source` — `hf:ID[:config]/split (license: L; fields: a, b, c)` — and
the license alone in `meta.license`, so the license allow-list of the quality gate can check it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tuneloop.data.io.containers import RawRow
from tuneloop.data.io.formats import ReadResult, collect, detect_shape, row_to_sample
from tuneloop.data.io.shapes import Columns, Tags
from tuneloop.records import Sample

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class HubUnavailable(RuntimeError):
    """A data set id was given but the hub cannot be reached; the message says what to do instead."""


def looks_like_hub_id(source: str) -> bool:
    """True for `owner/name` (or `name`) that is not an existing path."""
    return not Path(source).exists() and bool(HUB_ID.match(source)) and "/" in source


def hub_reachable() -> bool:
    """Whether the hub answers now (tuneloop.models decides once for models and data sets alike, failing fast)."""
    from tuneloop.models import hub_unavailable_reason

    return hub_unavailable_reason() is None


def source_label(dataset_id: str, config: str | None, split: str, license_name: str | None, fields: list[str]) -> str:
    where = f"hf:{dataset_id}{':' + config if config else ''}/{split}"
    return f"{where} (license: {license_name or 'unknown'}; fields: {', '.join(fields)})"


def card_license(dataset_id: str) -> str | None:
    """The license named in a data set's card (most data sets name it there, not in the loaded info)."""
    from huggingface_hub import HfApi

    try:
        card = HfApi().dataset_info(dataset_id).card_data
    except Exception:  # the card is optional: an unreachable or missing card leaves the license unknown
        return None
    value = card.get("license") if card else None
    return ", ".join(value) if isinstance(value, list) else value


def read_hub(dataset_id: str, split: str = "train", config: str | None = None, format: str = "auto",
             columns: Columns = Columns(), tags: Tags = Tags(), stage: str = "import") -> ReadResult:
    """Samples from a Hugging Face data set; rows that do not map are quarantined with their row number."""
    if not hub_reachable():
        raise HubUnavailable(
            f"'{dataset_id}' looks like a Hugging Face data set id, and loading it needs network (HF_HUB_OFFLINE is set "
            "or huggingface.co cannot be reached). Connect and unset HF_HUB_OFFLINE, or download the files and "
            "import them as a file or folder.")
    import datasets

    dataset = datasets.load_dataset(dataset_id, name=config, split=split)
    license_name = (dataset.info.license or "").strip() or card_license(dataset_id)
    label = source_label(dataset_id, config, split, license_name, list(dataset.column_names))
    shape = format if format in ("alpaca", "sharegpt", "openai") else None

    def convert(row: dict[str, Any]) -> Sample:
        nonlocal shape
        shape = shape or detect_shape(row, columns)
        sample = row_to_sample(row, shape, columns, tags, source=label)
        if license_name and not getattr(sample.meta, "license", None):
            setattr(sample.meta, "license", license_name)  # noqa: B010  (an extra field of Meta)
        return sample

    rows = (RawRow(number, dict(row)) for number, row in enumerate(dataset, start=1))
    return collect(f"hf:{dataset_id}", rows, convert, stage)
