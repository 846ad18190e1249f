"""Offline clone rules: small edits of a seed's input that keep its answer, in Chinese and English.

Each rule takes a `RuleContext` (the seed's input, the spans its answer depends on, language, entity pools) and a
random generator, and returns an `Edit` (new input + the entity replacements made) or None when it does not apply.
Noise rules never touch a protected span (an answer value the input states), so an order id never gets a typo;
only `entity_swap` changes a protected span, and it reports the replacement so the answer follows it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from random import Random

from tuneloop.data.gate.text import HAN_CHAR


def is_chinese(text: str) -> bool:
    """Whether a text holds any Chinese character (`data.gate.text.HAN_CHAR`): it gets Chinese entities and edits.

    >>> is_chinese("My 无线耳机 broke"), is_chinese("My earbuds broke")
    (True, False)
    """
    return bool(HAN_CHAR.search(text))


@dataclass(frozen=True)
class Edit:
    text: str
    replacements: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RuleContext:
    text: str
    protected: tuple[str, ...] = ()
    answer_strings: Mapping[str, str] = field(default_factory=dict)  # answer field -> its string value
    pools: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @property
    def lang(self) -> str:
        return "zh" if is_chinese(self.text) else "en"


Rule = Callable[[RuleContext, Random], Edit | None]


def segments(text: str, protected: Sequence[str]) -> list[tuple[str, bool]]:
    """The text cut into (piece, is_protected) so edits can skip the spans an answer depends on."""
    spans = sorted({p for p in protected if p}, key=len, reverse=True)
    if not spans:
        return [(text, False)]
    pattern = re.compile("(" + "|".join(re.escape(s) for s in spans) + ")")
    return [(piece, i % 2 == 1) for i, piece in enumerate(pattern.split(text)) if piece]


def edit_free_text(ctx: RuleContext, change: Callable[[str], str]) -> Edit | None:
    """Apply `change` to every unprotected piece; None when nothing changed."""
    text = "".join(piece if locked else change(piece) for piece, locked in segments(ctx.text, ctx.protected))
    return Edit(text) if text != ctx.text else None


# -- noise --------------------------------------------------------------------------------------------------------
ZH_TYPOS = {"的": "得", "在": "再", "已经": "以经", "账": "帐", "做": "作", "吗": "嘛", "订单": "定单"}
WORD = re.compile(r"[A-Za-z]{4,}")


def typo(ctx: RuleContext, rng: Random) -> Edit | None:
    """One misspelt word: swapped, dropped or doubled letter (English) or a common homophone slip (Chinese)."""
    free = "".join(piece for piece, locked in segments(ctx.text, ctx.protected) if not locked)
    if ctx.lang == "zh":
        options = [k for k in ZH_TYPOS if k in free]
        if not options:
            return None
        slip = rng.choice(options)
        done = [False]

        def once(piece: str) -> str:
            if done[0] or slip not in piece:
                return piece
            done[0] = True
            return piece.replace(slip, ZH_TYPOS[slip], 1)

        return edit_free_text(ctx, once)
    words = WORD.findall(free)
    if not words:
        return None
    target = rng.choice(words)
    i = rng.randrange(1, len(target) - 2)
    kind = rng.choice(("swap", "drop", "double"))
    if kind == "swap" and target[i] != target[i + 1]:
        wrong = target[:i] + target[i + 1] + target[i] + target[i + 2:]
    elif kind in ("drop", "swap"):  # swapping two equal letters changes nothing: drop one
        wrong = target[:i] + target[i + 1:]
    else:
        wrong = target[:i] + target[i] + target[i:]
    pattern = re.compile(rf"\b{target}\b")
    done = [False]

    def once_en(piece: str) -> str:
        if done[0] or not pattern.search(piece):
            return piece
        done[0] = True
        return pattern.sub(wrong, piece, count=1)

    return edit_free_text(ctx, once_en)


def whitespace(ctx: RuleContext, rng: Random) -> Edit | None:
    """Doubled spaces, spaces after punctuation, or stray leading/trailing blanks."""
    style = rng.choice(("double", "edges", "punct"))
    if style == "edges":
        return Edit(rng.choice(("  ", " ", "\n")) + ctx.text + rng.choice(("  ", "\n", " \n")))
    if style == "double" and " " in ctx.text:
        return edit_free_text(ctx, lambda piece: piece.replace(" ", "  "))
    return edit_free_text(ctx, lambda piece: re.sub(r"([,.!?，。！？：:])(?!\d)", r"\1 ", piece))


HALF_TO_FULL = {chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)}
FULL_TO_HALF = {v: k for k, v in HALF_TO_FULL.items()} | {"，": ",", "。": ".", "、": ","}
ZH_PUNCT = {",": "，", ".": "。", "!": "！", "?": "？", ":": "：", ";": "；", "(": "（", ")": "）"}
ZH_TABLES = (FULL_TO_HALF, ZH_PUNCT, {c: HALF_TO_FULL[c] for c in "!?,:;()0123456789"}, {"？": "??", "！": "!!", "。": "..."})
EN_TABLES = ({c: HALF_TO_FULL[c] for c in ",.!?:;()"}, {"!": "!!", "?": "??", ".": "...", ",": " ,"})


def punctuation_width(ctx: RuleContext, rng: Random) -> Edit | None:
    """Full-width ↔ half-width characters and Chinese ↔ Latin punctuation, outside the protected spans."""
    tables = ZH_TABLES if ctx.lang == "zh" else EN_TABLES
    edits = [e for e in (edit_free_text(ctx, lambda piece, t=t: swap_chars(piece, t)) for t in tables) if e is not None]
    return rng.choice(edits) if edits else None


def swap_chars(text: str, table: Mapping[str, str]) -> str:
    """Characters swapped by `table`, except a separator inside a number (the "." of 35.50 stays)."""
    return "".join(
        ch if 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit() else table.get(ch, ch)
        for i, ch in enumerate(text)
    )


IRRELEVANT = {
    "en": ("By the way, the weather is lovely today.", "I am writing this from my phone.",
           "My cat keeps walking over the keyboard.", "I have been a customer for years.",
           "Sorry if this is the wrong place to ask."),
    "zh": ("顺便说一句，今天天气不错。", "我是用手机打的字。", "家里的猫一直在旁边捣乱。", "我是你们的老客户了。", "不好意思，不知道是不是问对地方了。"),
}


def irrelevant_sentence(ctx: RuleContext, rng: Random) -> Edit | None:
    """An unrelated sentence before or after the message."""
    extra = rng.choice(IRRELEVANT[ctx.lang])
    sep = "" if ctx.lang == "zh" else " "
    body = ctx.text.strip()
    return Edit(f"{extra}{sep}{body}" if rng.random() < 0.5 else f"{body}{sep}{extra}")


# -- entities, length, tone ---------------------------------------------------------------------------------------
def entity_swap(ctx: RuleContext, rng: Random) -> Edit | None:
    """Replace one answer entity the input states by another of the same field's pool (the answer follows)."""
    options = []
    for key, value in ctx.answer_strings.items():
        pool = [p for p in ctx.pools.get(key, ()) if p != value and p not in ctx.text and is_chinese(p) == is_chinese(value)]
        others = [v for k, v in ctx.answer_strings.items() if k != key]
        if len(value) >= 2 and value in ctx.text and pool and not any(value in o or o in value for o in others):
            options.append((value, pool))
    if not options:
        return None
    old, pool = rng.choice(options)
    new = rng.choice(pool)
    return Edit(ctx.text.replace(old, new), {old: new})


GREETINGS = {"en": ("Hi,", "Hello,", "Hello there,", "Good morning,"), "zh": ("你好，", "您好，", "在吗？", "客服你好，")}
CLOSINGS = {"en": ("Thanks.", "Thank you!", "Thanks in advance.", "Cheers."), "zh": ("谢谢。", "多谢！", "麻烦了。", "辛苦了。")}


def length_change(ctx: RuleContext, rng: Random) -> Edit | None:
    """Longer with a greeting and a closing, or shorter by dropping greetings and closings the message has."""
    lang, sep = ctx.lang, ("" if ctx.lang == "zh" else " ")
    body = ctx.text.strip()
    shorter = body
    for phrase in sorted(GREETINGS[lang] + CLOSINGS[lang], key=len, reverse=True):
        if shorter.startswith(phrase) or shorter.endswith(phrase):
            shorter = shorter.removeprefix(phrase).removesuffix(phrase).strip()
    if shorter and shorter != body and rng.random() < 0.6:
        return Edit(shorter)
    return Edit(f"{rng.choice(GREETINGS[lang])}{sep}{body}{sep}{rng.choice(CLOSINGS[lang])}")


TONES = {
    "en": ("Dear support team, {m} Kind regards.", "hey, {m} thx", "Hello, {m} I would really appreciate your help.",
           "Quick question. {m}", "{m} Please let me know."),
    "zh": ("尊敬的客服：{m} 此致敬礼。", "哈喽，{m} 谢啦", "您好，{m} 麻烦您帮忙看一下。", "问一下，{m}", "{m} 请回复我，谢谢。"),
}


def tone(ctx: RuleContext, rng: Random) -> Edit | None:
    """The message in another register: formal, casual, polite, curt."""
    return Edit(rng.choice(TONES[ctx.lang]).format(m=ctx.text.strip()))


RULES: dict[str, Rule] = {
    "typo": typo,
    "whitespace": whitespace,
    "punctuation_width": punctuation_width,
    "irrelevant_sentence": irrelevant_sentence,
    "entity_swap": entity_swap,
    "length": length_change,
    "tone": tone,
}
