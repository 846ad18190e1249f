"""What a damaged data file still gives: the pieces after a break, one per row, each with where it starts and why.

```
JSON array   [ {row}, {row}, {row, ,  {row}, {row} ]        the break ──▶ one piece per element after it, found by
                              ▲ break   ▲       ▲            the layout of the rows read before the break
CSV          q0,a0 / q1,"never closed / q2,a2 / q3,a3       one piece per line from the unclosed quote on
Parquet      row group 1 ok │ row group 2 damaged │ 3 ok     one piece per row of the damaged group, with the
                                                             columns that still read
```
Nothing past a break is trusted: every piece is quarantined (the containers turn them into `QuarantinedRow`s),
but each row stays its own entry with its own line and raw text, so the counts stay true and a person can mend it.
Pure functions on text and positions; reading files and making quarantine rows is `containers`' part.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

FIX = "fix the file there and import it again"


def skip_space(text: str, at: int) -> int:
    """The first position at or after `at` that is not JSON whitespace."""
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at


def _indent_of(text: str, at: int) -> str | None:
    """The spaces before `at` when it begins a line (after its indent); None when something else precedes it."""
    line_start = text.rfind("\n", 0, at) + 1
    before = text[line_start:at]
    return before if line_start > 0 and not before.strip() else None


def at_row_indent(text: str, at: int, starts: list[int]) -> bool:
    """Whether `at` is where a row could begin: where the rows each began a line (`starts`), at their indent.

    >>> text = '[\\n  {"q": "a"},\\n  {"q": "b", {"q": "c"}\\n]'
    >>> at_row_indent(text, text.index('{"q": "b"'), [4]), at_row_indent(text, text.index('{"q": "c"'), [4])
    (True, False)
    """
    indents = {_indent_of(text, start) for start in starts}
    return not (len(indents) == 1 and None not in indents) or _indent_of(text, at) == indents.pop()


def element_starts(text: str, broken: int, starts: list[int], keys: set[str]) -> list[int]:
    """Where the elements after a break at `broken` begin, found by the layout of the elements read before it.

    Elements that each began a line at one indent (pretty-printed, or one per line) begin at that indent again,
    so a nested object, deeper in, is never taken for a row; elsewhere an element is a `{` after `,` or `[` that
    parses as an object sharing a key with the rows read so far (`starts`: where those began; `keys`: their keys).

    >>> text = '[{"q": "a"}, {"q": "b", {"q": "c", "m": [{"r": 1}]}, {"q": "d"}]'
    >>> [text[at:at + 9] for at in element_starts(text, 13, [1], {"q"})]
    ['{"q": "c"', '{"q": "d"']
    """
    indents = {_indent_of(text, at) for at in (starts or [broken])}
    if len(indents) == 1 and None not in indents:
        pattern = re.compile("\n" + re.escape(indents.pop()) + r"(?=\{)")
        return [m.end() for m in pattern.finditer(text, broken + 1)]
    decoder, found, at = json.JSONDecoder(), [], broken + 1
    while (at := text.find("{", at)) != -1:
        before = at - 1
        while before >= 0 and text[before] in " \t\r\n":
            before -= 1
        value, end = None, at + 1
        if before >= 0 and text[before] in ",[}":  # after '}' too: a comma left out
            try:
                value, end = decoder.raw_decode(text, at)
            except json.JSONDecodeError:
                pass
        after = skip_space(text, end)
        if isinstance(value, dict) and text[after:after + 1] in (",", "]", "") and (not keys or keys & set(value)):
            found.append(at)
            at = end
        else:
            at += 1
    return found


def json_pieces(text: str, broken: int, reason: str, starts: list[int],
                keys: set[str]) -> Iterator[tuple[int, str, str]]:
    """(position, reason, raw text) of each element from a break on: the broken one first, then every one after it.

    >>> text = '[\\n{"q": "a"},\\n{"q": "b",,\\n{"q": "c"}\\n]'
    >>> [(text.count("\\n", 0, at) + 1, raw) for at, _, raw in json_pieces(text, 14, "it breaks", [2], {"q"})]
    [(3, '{"q": "b",'), (4, '{"q": "c"}')]
    """
    bounds = [broken, *element_starts(text, broken, starts, keys), len(text)]
    for number, (begin, end) in enumerate(zip(bounds, bounds[1:])):
        raw = text[begin:end].rstrip()
        if end == len(text):
            raw = raw.removesuffix("]").rstrip()
        raw = raw.removesuffix(",").rstrip()
        if number == 0:
            yield begin, f"{reason}: {FIX}", raw
            continue
        if not raw:
            continue
        try:
            readable = isinstance(json.loads(raw), dict)
        except json.JSONDecodeError:
            readable = False
        if readable:
            yield begin, f"not imported: it comes after the break ({reason}), where the array cannot be trusted; {FIX}", raw
        else:
            yield begin, f"unreadable: it comes after the break ({reason}) and is not a JSON object itself; {FIX}", raw


def csv_pieces(physical: list[str], start: int) -> Iterator[tuple[int, str, str]]:
    """(line, reason, raw) of the record whose quote opened at line `start` is never closed, and of each line after.

    >>> [(line, raw) for line, _, raw in csv_pieces(['q,a', 'q1,"open', 'q2,a2', '', 'q3,a3'], 2)]
    [(2, 'q1,"open'), (3, 'q2,a2'), (5, 'q3,a3')]
    """
    reason = f"a quoted field opened at line {start} is never closed, so the file cannot be read past there"
    for number in range(start, len(physical) + 1):
        raw = physical[number - 1].rstrip("\r")
        if number == start:
            yield number, f'{reason}: close the quote (write a quote inside a field as "")', raw
        elif raw.strip():
            yield number, f"not read: it comes after the break ({reason}); {FIX}", raw


def damaged_row_group(parquet: Any, group: int, first: int, count: int,
                      err: Exception) -> tuple[str, list[dict[str, Any]]]:
    """Why a Parquet row group cannot be read, and per row the values of the columns that still read alone."""
    names = parquet.schema_arrow.names
    readable: dict[str, list[Any]] = {}
    for name in names:
        try:
            values = parquet.read_row_group(group, columns=[name]).column(0).to_pylist()
        except Exception:  # this column's pages are among the damaged ones
            continue
        if len(values) == count:
            readable[name] = values
    lost = [n for n in names if n not in readable]
    message = "".join(c if c.isprintable() else "?" for c in str(err).splitlines()[0][:200])
    reason = (f"row group {group + 1} of {parquet.num_row_groups} (rows {first}-{first + count - 1}, {count} rows) "
              f"is damaged ({message}); unreadable columns: {', '.join(lost) or 'none'} "
              "(the readable ones are in raw): re-export the file")
    return reason, [{name: values[offset] for name, values in readable.items()} for offset in range(count)]
