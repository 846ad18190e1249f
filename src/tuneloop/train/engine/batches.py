"""Packed bins → the tensors one micro-step needs, built on the host before the step (no device→host syncs).

```
bins        [A A A B B] [C C C C]              per_device_batch = 2: one flat row, padding-free
input_ids   [A A A B B C C C C]  (+ pad to a fixed length where the step is compiled)
position_ids[0 1 2 0 1 0 1 2 3]                restart per sample: transformers derives the block-diagonal mask
doc_ids     [0 0 0 1 1 2 2 2 2]                the same boundaries as a flex_attention BlockMask on the GPU
targets     [a a - b - c c c -]                labels shifted inside each sample (never across a boundary)
answer_index[positions with a target]          the LM head runs on these rows only
```
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass
class MicroBatch:
    input_ids: torch.Tensor       # [1, L]
    position_ids: torch.Tensor    # [1, L]
    doc_ids: torch.Tensor         # [L]; padding has id -1
    answer_index: torch.Tensor    # [n] positions whose next token is supervised
    answer_targets: torch.Tensor  # [n]
    tokens: int                   # real tokens (no padding)
    answers: int                  # supervised tokens

    def to(self, device: torch.device) -> "MicroBatch":
        if device.type == "cpu":
            return self
        move = lambda t: t.pin_memory().to(device, non_blocking=True)  # noqa: E731
        return MicroBatch(move(self.input_ids), move(self.position_ids), move(self.doc_ids), move(self.answer_index),
                          move(self.answer_targets), self.tokens, self.answers)


def collate(bins: Sequence[dict], pad_to: int | None = None, pad_id: int = 0) -> MicroBatch:
    """One flat row from `bins` ({input_ids, labels, seq_lengths}); `pad_to` fixes its length for a compiled step."""
    ids, positions, docs, targets = [], [], [], []
    doc = 0
    for b in bins:
        offset = 0
        for length in b["seq_lengths"]:
            labels = b["labels"][offset:offset + length]
            ids += b["input_ids"][offset:offset + length]
            positions += range(length)
            docs += [doc] * length
            targets += labels[1:] + [IGNORE]
            offset += length
            doc += 1
    tokens = len(ids)
    if pad_to is not None and pad_to > tokens:
        extra = pad_to - tokens
        ids += [pad_id] * extra
        positions += range(extra)
        docs += [-1] * extra
        targets += [IGNORE] * extra
    target_tensor = torch.tensor(targets)
    index = (target_tensor != IGNORE).nonzero().squeeze(1)
    return MicroBatch(torch.tensor([ids]), torch.tensor([positions]), torch.tensor(docs), index, target_tensor[index],
                      tokens, int(index.numel()))


def epoch_order(rows: int, seed: int, epoch: int) -> list[int]:
    """The bins' order in `epoch`: a permutation seeded by seed + epoch, as the Trainer's seedable sampler draws it."""
    generator = torch.Generator()
    generator.manual_seed(seed + epoch)
    return torch.randperm(rows, generator=generator).tolist()


def optimizer_steps(rows: int, per_device: int, accumulation: int, seed: int, start_epoch: int = 0,
                    skip_steps: int = 0) -> Iterator[tuple[int, list[list[int]]]]:
    """(epoch, micro-batches of bin indices) per optimizer step, endlessly; an epoch's last step may be shorter."""
    epoch, skip = start_epoch, skip_steps
    while True:
        order = epoch_order(rows, seed, epoch)
        micro = [order[i:i + per_device] for i in range(0, rows, per_device)]
        for start in range(0, len(micro), accumulation):
            if skip:
                skip -= 1
                continue
            yield epoch, micro[start:start + accumulation]
        epoch += 1


def steps_per_epoch(rows: int, per_device: int, accumulation: int) -> int:
    micro = -(-rows // per_device)
    return -(-micro // accumulation)
