from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Tests never reach a model hub; the embedded default and the tiny model are all they use.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# CI replays the same property-test examples every run (a failure there is reproducible, never a coin toss);
# local runs draw new examples each time, so new counter-examples keep turning up where someone is working
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
LLAMAFACTORY_DEMO = FIXTURES / "llamafactory-demo"
# Small files of every format, written for these tests: what a fresh clone tests without ../shared.
LOCAL_FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2 with a trained byte-level BPE tokenizer and a ChatML template."""
    from tuneloop.testing.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_tied_model_dir(tmp_path_factory) -> Path:
    """The tiny model with tied input/output embeddings."""
    from tuneloop.testing.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_tied") / "model", tie_word_embeddings=True)


@pytest.fixture(scope="session")
def llamafactory_demo() -> Path:
    """LLaMA-Factory's real demo folder from ../shared; the tests that read it skip, saying so, where it is absent."""
    if not LLAMAFACTORY_DEMO.exists():
        pytest.skip(f"{LLAMAFACTORY_DEMO} is absent (CI lays ../shared beside the checkout); "
                    "tests/fixtures/llamafactory covers the format without it")
    return LLAMAFACTORY_DEMO


@pytest.fixture(scope="session")
def llamafactory_folder() -> Path:
    """tuneloop's own small LLaMA-Factory folder: alpaca, sharegpt with tools, ranking, KTO, a missing file, a hub entry."""
    return LOCAL_FIXTURES / "llamafactory"
