"""Speed of the data gate's dedup + leakage on generated mixed Chinese/English Alpaca rows.

    .venv/bin/python bench/data_gate.py --rows 1000000

Generates `--rows` rows (half Chinese, half English) with planted exact duplicates (5 %, re-cased and full-width),
near-duplicates (5 %, one word or character changed) and leaks (0.1 % of rows copy a 15-word / 20-character
passage of another row), builds `Sample` records, then times `dedup` and `find_leaks` (train vs val/test cut
80/10/10 by source id) and prints the figures and the peak resident memory of the process as JSON. Wall and
CPU seconds are both printed: on a shared machine the wall time includes waiting for a core.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from collections.abc import Iterator

import numpy as np

from tuneloop.data.gate.dedup import dedup
from tuneloop.data.gate.leakage import find_leaks
from tuneloop.project import DedupConfig, LeakageConfig
from tuneloop.records import Sample

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "de", "fi", "go", "hu", "ja", "by",
             "ex", "ol", "um", "st", "ar", "in", "on"]
INSTRUCTIONS_EN = ["Summarize the text below.", "Extract the order fields as JSON.", "Answer the customer question.",
                   "Classify the ticket by urgency.", "Rewrite the message politely."]
INSTRUCTIONS_ZH = ["请总结下面的内容。", "请把订单信息提取为JSON。", "请回答客户的问题。", "请判断工单的紧急程度。", "请礼貌地改写这条消息。"]


def vocabulary(rng: np.random.Generator, size: int = 20_000) -> np.ndarray:
    parts = rng.integers(0, len(SYLLABLES), size=(size, 4))
    lengths = rng.integers(2, 5, size=size)
    return np.array(["".join(SYLLABLES[p] for p in row[:n]) for row, n in zip(parts, lengths)])


def generate_rows(count: int, seed: int = 0) -> Iterator[dict]:
    """Alpaca rows with lineage: 90 % unique, 5 % exact duplicates, 5 % near duplicates, 0.1 % leaks (streamed)."""
    rng = np.random.default_rng(seed)
    vocab = vocabulary(rng)
    hanzi = np.array([chr(c) for c in range(0x4E00, 0x4E00 + 3000)])
    unique = int(count * 0.9)
    english = rng.random(unique) < 0.5
    leaks = set(rng.integers(8, max(unique, 9), size=max(count // 1000, 1)).tolist())
    originals: list[tuple[str, str, str]] = []
    for index in range(unique):
        if english[index]:
            text_in = " ".join(vocab[rng.integers(0, len(vocab), rng.integers(10, 30))])
            text_out = " ".join(vocab[rng.integers(0, len(vocab), rng.integers(15, 40))])
            instruction = INSTRUCTIONS_EN[index % len(INSTRUCTIONS_EN)]
        else:
            text_in = "".join(hanzi[rng.integers(0, len(hanzi), rng.integers(20, 60))])
            text_out = "".join(hanzi[rng.integers(0, len(hanzi), rng.integers(20, 80))])
            instruction = INSTRUCTIONS_ZH[index % len(INSTRUCTIONS_ZH)]
        if index in leaks:  # a passage of an earlier row's input: an n-gram leak once they land in different splits
            donor = originals[index - 7][1]
            text_in += " " + (" ".join(donor.split()[:15]) if " " in donor else donor[:20])
        originals.append((instruction, text_in, text_out))
        yield {"id": f"r{index}", "instruction": instruction, "input": text_in, "output": text_out,
               "lineage": {"source_id": f"s{index}"}}
    for index in range(unique, count):
        instruction, text_in, text_out = originals[int(rng.integers(0, unique))]
        if index % 2:
            text_in = text_in.upper()  # exact duplicate after normalization
        else:  # near duplicate: one word (one character in Chinese) of the input and the output changed
            text_in, text_out = (t[:len(t) // 2] + ("x" if " " not in t else " zz ") + t[len(t) // 2 + 1:]
                                 for t in (text_in, text_out))
        yield {"id": f"r{index}", "instruction": instruction, "input": text_in, "output": text_out,
               "lineage": {"source_id": f"s{index}"}}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    samples = [Sample.model_validate(row) for row in generate_rows(args.rows, args.seed)]
    generated = time.perf_counter() - started
    gc.freeze()  # the samples live for the whole run: keep the collector from rescanning them

    started, cpu = time.perf_counter(), time.process_time()
    result = dedup(samples, DedupConfig())
    dedup_seconds, dedup_cpu = time.perf_counter() - started, time.process_time() - cpu

    buckets = {"train": [], "val": [], "test": []}
    for sample in result.kept:
        slot = hash(sample.lineage.source_id) % 10
        buckets["test" if slot == 0 else "val" if slot == 1 else "train"].append(sample)
    started, cpu = time.perf_counter(), time.process_time()
    leaks = find_leaks(buckets["train"], {"val": buckets["val"], "test": buckets["test"]}, LeakageConfig(), DedupConfig())
    leakage_seconds, leakage_cpu = time.perf_counter() - started, time.process_time() - cpu

    figures = {
        "rows": args.rows, "generate_s": round(generated, 1), "dedup_s": round(dedup_seconds, 1),
        "leakage_s": round(leakage_seconds, 1), "dedup_plus_leakage_s": round(dedup_seconds + leakage_seconds, 1),
        "dedup_plus_leakage_cpu_s": round(dedup_cpu + leakage_cpu, 1), "load_average_1min": os.getloadavg()[0],
        "removed_duplicates": len(result.removed), "clusters": len(result.clusters),
        "leak_hits": leaks.counts(), "peak_rss_gb": round(peak_rss_gb(), 2),
    }
    json.dump(figures, sys.stdout, indent=2)
    print()
    return figures


if __name__ == "__main__":
    main()
