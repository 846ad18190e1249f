"""Text normalization, script detection and n-grams: the pure functions dedup, leakage and split share.

`normalize` is what "the same text" means everywhere in the gate:

    "Ｈｅｌｌｏ，　World\t!"  ──NFKC (full-width → half-width)──▶  "Hello, World\t!"
                            ──casefold, whitespace runs → " "──▶  "hello, world !"

Chinese (CJK) text is compared by character n-grams, Latin text by word n-grams. For a whole corpus the
n-grams are hashed to 64-bit integers with numpy, never with a Python loop per n-gram:

    texts ─▶ one code-point array ─▶ window hashes ─▶ NgramTable(docs, hashes, offsets)
    row k of the table is text docs[k]; its n-gram hashes are hashes[offsets[k]:offsets[k+1]]
    (rows come chunk by chunk, CJK texts first within a chunk: `docs` is not sorted)

A text with fewer units than the n-gram size has no row in the table: it takes the exact-match path only.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

SEPARATOR = "\x00"
# what str.split() treats as whitespace and NFKC leaves alone (NFKC maps U+00A0, U+2000-200A, U+3000 … to " ")
_OTHER_WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\x85\u1680\u2028\u2029"
# The one definition of a CJK character; every CJK test (`is_cjk`, `cjk_mask`, token estimates, a text's language)
# uses it. Han: CJK ideographs, extension A, compatibility ideographs, the supplementary ideograph planes.
_HAN_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FFFF))
_CJK_RANGES = ((0x3040, 0x30FF), *_HAN_RANGES, (0xAC00, 0xD7AF))  # kana, Han, hangul


def _char_class(ranges: Sequence[tuple[int, int]]) -> str:
    return "".join(f"{chr(a)}-{chr(b)}" for a, b in ranges)


CJK_CHARS = _char_class(_CJK_RANGES)  # the inside of a regular expression's [...]
_CJK_CHAR = re.compile(f"[{CJK_CHARS}]")
HAN_CHAR = re.compile(f"[{_char_class(_HAN_RANGES)}]")  # a Chinese character (kana and hangul are not)
CJK_SHARE = 0.3
_U64 = np.uint64
_PRIME = _U64(0x100000001B3)
_WORD_PRIME = _U64(0x9E3779B97F4A7C15)


@contextlib.contextmanager
def bulk_work() -> Iterator[None]:
    """Pause the cyclic garbage collector while millions of short-lived objects are made (it would rescan every
    live sample on each pass); restore it after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def normalize(text: str) -> str:
    """NFKC (full-width → half-width), casefold, whitespace runs to one space, trimmed."""
    return " ".join(unicodedata.normalize("NFKC", text.replace(SEPARATOR, " ")).casefold().split())


def normalize_many(texts: Sequence[str], chunk: int = 5_000) -> list[str]:
    """`normalize` over many texts in a few C-level passes (one big string per chunk, split back)."""
    if len(texts) > chunk:
        distinct = list(dict.fromkeys(texts))  # fixed instructions and empty fields repeat: normalize each once
        if len(distinct) < 0.8 * len(texts):
            normalized = dict(zip(distinct, normalize_many(distinct, chunk)))
            return [normalized[t] for t in texts]
        return [t for begin in range(0, len(texts), chunk) for t in normalize_many(texts[begin:begin + chunk], chunk)]
    if not texts:
        return []
    big = SEPARATOR.join(texts)
    if big.count(SEPARATOR) != len(texts) - 1:  # a text carries NUL itself: take the per-text path
        return [normalize(t) for t in texts]
    if not unicodedata.is_normalized("NFKC", big):
        big = unicodedata.normalize("NFKC", big)
    big = big.casefold()
    for space in _OTHER_WHITESPACE:  # NFKC already turned the wide and no-break spaces into " "
        if space in big:
            big = big.replace(space, " ")
    while "  " in big:
        big = big.replace("  ", " ")
    return big.replace(" " + SEPARATOR, SEPARATOR).replace(SEPARATOR + " ", SEPARATOR).strip(" ").split(SEPARATOR)


def text_hash(text: str) -> str:
    """Stable content hash of an already normalized text (sha256, 16 hex digits)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def is_cjk(text: str) -> bool:
    """True when at least 30 % of the non-space characters are CJK: compare it by characters, not words."""
    visible = len(text) - text.count(" ")
    return visible > 0 and len(_CJK_CHAR.findall(text)) >= CJK_SHARE * visible


def char_ngrams(text: str, n: int) -> set[str]:
    """Character n-grams; empty when the text is shorter than n."""
    return {text[i:i + n] for i in range(len(text) - n + 1)}


def words(text: str) -> list[str]:
    """Word units of a normalized text: runs of characters between spaces and punctuation."""
    return [w for w in re.split(r"[\s\x00!-/:-@\[-`{-~\u3000-\u303f]+", text) if w]


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Word n-grams; empty when the text has fewer than n words."""
    units = words(text)
    return {tuple(units[i:i + n]) for i in range(len(units) - n + 1)}


def ngram_set(text: str, char_n: int, word_n: int) -> set:
    """The n-grams a normalized text is compared by: characters for CJK text, words otherwise."""
    return char_ngrams(text, char_n) if is_cjk(text) else word_ngrams(text, word_n)


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b|; 0 for two empty sets (they are compared exactly instead)."""
    if not a and not b:
        return 0.0
    return len(a & b) / len(a | b)


@dataclass
class NgramTable:
    """Hashed n-gram sets of many texts; only texts with at least one n-gram have a row."""

    docs: np.ndarray     # int64, the text index of each row
    hashes: np.ndarray   # uint64, all rows' n-gram hashes back to back
    offsets: np.ndarray  # int64, len(docs) + 1

    def __len__(self) -> int:
        return len(self.docs)

    def row(self, k: int) -> np.ndarray:
        return self.hashes[self.offsets[k]:self.offsets[k + 1]]

    def row_set(self, k: int) -> set[int]:
        return set(self.row(k).tolist())

    def gram_docs(self) -> np.ndarray:
        """The text index of every hash in `hashes`."""
        return np.repeat(self.docs, np.diff(self.offsets))

    def subset(self, rows: np.ndarray) -> NgramTable:
        counts = np.diff(self.offsets)[rows]
        starts = self.offsets[rows]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        index = np.repeat(starts - offsets[:-1], counts) + np.arange(offsets[-1])
        return NgramTable(self.docs[rows], self.hashes[index], offsets)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: spreads window hashes over all 64 bits."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> _U64(30))
        x = x * _U64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> _U64(27))
        x = x * _U64(0x94D049BB133111EB)
        return x ^ (x >> _U64(31))


def _code_points(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All texts as one uint32 code-point array (NUL between texts), with each text's start and length."""
    big = SEPARATOR.join(texts)
    if big.count(SEPARATOR) != len(texts) - 1:
        big = SEPARATOR.join(t.replace(SEPARATOR, " ") for t in texts)
    codes = np.frombuffer(big.encode("utf-32-le"), dtype=np.uint32)
    lengths = np.array(list(map(len, texts)), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64)
    return codes, starts, lengths


OTHER, SEPARATOR_CLASS, CJK_CLASS = 0, 1, 2


@functools.lru_cache(maxsize=1)
def _classes() -> np.ndarray:
    """Class of every code point: word separator (space, NUL, ASCII and CJK punctuation), CJK, or other."""
    classes = np.zeros(0x110000, dtype=np.uint8)
    for low, high in ((0, 47), (58, 64), (91, 96), (123, 126), (0x3000, 0x303F)):
        classes[low:high + 1] = SEPARATOR_CLASS
    for low, high in _CJK_RANGES:
        classes[low:high + 1] = CJK_CLASS
    return classes


_powers_cache: dict[str, np.ndarray] = {}


def _powers(count: int) -> tuple[np.ndarray, np.ndarray]:
    """prime^i and prime^-i (mod 2^64) for i < count, grown and kept between calls."""
    if len(_powers_cache.get("up", ())) < count:
        size = max(count, 2 * len(_powers_cache.get("up", ())), 1 << 16)
        with np.errstate(over="ignore"):
            up = np.full(size, _PRIME, dtype=np.uint64)
            up[0] = 1
            down = np.full(size, _U64(pow(int(_PRIME), -1, 1 << 64)), dtype=np.uint64)
            down[0] = 1
            _powers_cache["up"], _powers_cache["down"] = np.cumprod(up), np.cumprod(down)
    return _powers_cache["up"][:count], _powers_cache["down"]


def _prefix(values: np.ndarray) -> np.ndarray:
    """Running sum of value × prime^i: any span's hash is a difference of two entries (see `_span_hashes`)."""
    up, _ = _powers(len(values))
    with np.errstate(over="ignore"):
        return np.concatenate([np.zeros(1, np.uint64), np.cumsum(values.astype(np.uint64) * up, dtype=np.uint64)])


def _span_hashes(prefix: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Polynomial hash of values[start:end] for each span, independent of where the span sits."""
    _, down = _powers(int(starts.max(initial=0)) + 1)
    with np.errstate(over="ignore"):
        return (prefix[ends] - prefix[starts]) * down[starts]


def _segment_sums(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    total = np.concatenate([[0], np.cumsum(values, dtype=np.int64)])
    return total[starts + lengths] - total[starts]


def _cjk_docs(classes: np.ndarray, codes: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    n_cjk = _segment_sums(classes == CJK_CLASS, starts, lengths)
    n_visible = lengths - _segment_sums(codes == 32, starts, lengths)
    return (n_visible > 0) & (n_cjk >= CJK_SHARE * n_visible)


def cjk_mask(texts: Sequence[str]) -> np.ndarray:
    """`is_cjk` for many texts at once (vectorized)."""
    if not texts:
        return np.zeros(0, dtype=bool)
    codes, starts, lengths = _code_points(texts)
    return _cjk_docs(_classes()[codes], codes, starts, lengths)


def _valid_windows(starts: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Window positions lying inside one text, and each text's number of windows."""
    counts = np.maximum(lengths - n + 1, 0)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    positions = np.repeat(starts - offsets[:-1], counts) + np.arange(offsets[-1])
    return positions, counts


def _char_grams(prefix: np.ndarray, starts: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    positions, counts = _valid_windows(starts, lengths, n)
    return _mix(_span_hashes(prefix, positions, positions + n) ^ _U64(0x51 + n)), counts


def _word_grams(prefix: np.ndarray, inside: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                n: int) -> tuple[np.ndarray, np.ndarray]:
    """Word n-grams of the texts at `starts`: words are runs between spaces, ASCII and CJK punctuation."""
    edges = np.diff(np.concatenate([[False], inside, [False]]).view(np.int8))
    begins, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    word_hashes = _mix(_span_hashes(prefix, begins, ends))
    first = np.searchsorted(begins, starts)  # each text's words: those beginning inside it
    words_per_doc = np.searchsorted(begins, starts + lengths) - first
    positions, counts = _valid_windows(first, words_per_doc, n)
    return _mix(_span_hashes(_prefix(word_hashes), positions, positions + n) ^ _U64(0x77 + n)), counts


def ngram_table(texts: Sequence[str], char_n: int, word_n: int, chunk: int = 4_000) -> NgramTable:
    """Hashed n-grams of normalized texts: character n-grams for CJK texts, word n-grams for the rest."""
    docs, hashes, counts = [], [], []
    # small chunks keep numpy's temporaries in reused heap memory instead of fresh page-faulting mappings
    for begin in range(0, len(texts), chunk):
        codes, starts, lengths = _code_points(texts[begin:begin + chunk])
        classes = _classes()[codes]
        prefix = _prefix(codes)
        cjk = _cjk_docs(classes, codes, starts, lengths)
        inside = classes != SEPARATOR_CLASS
        for index, by_char in ((np.flatnonzero(cjk), True), (np.flatnonzero(~cjk), False)):
            if not len(index):
                continue
            if by_char:
                part_hashes, part_counts = _char_grams(prefix, starts[index], lengths[index], char_n)
            else:
                part_hashes, part_counts = _word_grams(prefix, inside, starts[index], lengths[index], word_n)
            keep = part_counts > 0
            docs.append(index[keep] + begin)
            counts.append(part_counts[keep])
            hashes.append(part_hashes)
    if not docs:
        return NgramTable(np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(1, np.int64))
    return NgramTable(np.concatenate(docs).astype(np.int64), np.concatenate(hashes),
                      np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64))
