"""Example projects `tuneloop init DIR --example NAME` writes."""

from __future__ import annotations

EXAMPLES = {"json-extraction": "tuneloop.examples.json_extraction.demo"}
