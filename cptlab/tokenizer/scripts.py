"""Which writing system ("script") a character belongs to, and which scripts a base tokenizer speaks: the
vocabulary extension admits a new piece only if it holds a character of a script foreign to the base.

Scripts come from a table of Unicode blocks, not from the Unicode Script property (which Python does not ship),
grouped the way text uses them: "CJK" holds the Han ideographs together with CJK punctuation, bopomofo and the
fullwidth forms (so "，" and "。" go with Chinese), "Kana" both Japanese syllabaries, "Hangul" all Korean blocks.
Everything outside the table (ASCII digits and punctuation, general punctuation, symbols, emoji, "▁") is
"Common": never foreign, so a piece made only of such characters is never admitted by a script rule.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable

COMMON = "Common"
# (first, last, script), sorted and disjoint.
SCRIPT_RANGES = [
    (0x0041, 0x005A, "Latin"), (0x0061, 0x007A, "Latin"), (0x00AA, 0x00AA, "Latin"), (0x00BA, 0x00BA, "Latin"),
    (0x00C0, 0x00D6, "Latin"), (0x00D8, 0x00F6, "Latin"), (0x00F8, 0x02AF, "Latin"),
    (0x0370, 0x03FF, "Greek"), (0x0400, 0x052F, "Cyrillic"), (0x0530, 0x058F, "Armenian"),
    (0x0590, 0x05FF, "Hebrew"), (0x0600, 0x06FF, "Arabic"), (0x0700, 0x074F, "Syriac"), (0x0750, 0x077F, "Arabic"),
    (0x0780, 0x07BF, "Thaana"), (0x08A0, 0x08FF, "Arabic"), (0x0900, 0x097F, "Devanagari"),
    (0x0980, 0x09FF, "Bengali"), (0x0A00, 0x0A7F, "Gurmukhi"), (0x0A80, 0x0AFF, "Gujarati"),
    (0x0B00, 0x0B7F, "Oriya"), (0x0B80, 0x0BFF, "Tamil"), (0x0C00, 0x0C7F, "Telugu"), (0x0C80, 0x0CFF, "Kannada"),
    (0x0D00, 0x0D7F, "Malayalam"), (0x0D80, 0x0DFF, "Sinhala"), (0x0E00, 0x0E7F, "Thai"), (0x0E80, 0x0EFF, "Lao"),
    (0x0F00, 0x0FFF, "Tibetan"), (0x1000, 0x109F, "Myanmar"), (0x10A0, 0x10FF, "Georgian"),
    (0x1100, 0x11FF, "Hangul"), (0x1200, 0x139F, "Ethiopic"), (0x13A0, 0x13FF, "Cherokee"),
    (0x1780, 0x17FF, "Khmer"), (0x1800, 0x18AF, "Mongolian"), (0x1C80, 0x1C8F, "Cyrillic"),
    (0x1D00, 0x1DBF, "Latin"), (0x1E00, 0x1EFF, "Latin"), (0x1F00, 0x1FFF, "Greek"), (0x2C60, 0x2C7F, "Latin"),
    (0x2DE0, 0x2DFF, "Cyrillic"), (0x2E80, 0x2FDF, "CJK"), (0x2FF0, 0x303F, "CJK"), (0x3040, 0x30FF, "Kana"),
    (0x3100, 0x312F, "CJK"), (0x3130, 0x318F, "Hangul"), (0x3190, 0x31EF, "CJK"), (0x31F0, 0x31FF, "Kana"),
    (0x3200, 0x4DBF, "CJK"), (0x4E00, 0x9FFF, "CJK"), (0xA000, 0xA4CF, "Yi"), (0xA640, 0xA69F, "Cyrillic"),
    (0xA720, 0xA7FF, "Latin"), (0xA960, 0xA97F, "Hangul"), (0xAB30, 0xAB6F, "Latin"), (0xAC00, 0xD7FF, "Hangul"),
    (0xF900, 0xFAFF, "CJK"), (0xFB1D, 0xFB4F, "Hebrew"), (0xFB50, 0xFDFF, "Arabic"), (0xFE30, 0xFE4F, "CJK"),
    (0xFE70, 0xFEFF, "Arabic"), (0xFF00, 0xFF65, "CJK"), (0xFF66, 0xFF9F, "Kana"), (0xFFA0, 0xFFDC, "Hangul"),
    (0xFFE0, 0xFFEF, "CJK"), (0x1B000, 0x1B16F, "Kana"), (0x20000, 0x3FFFF, "CJK"),
]  # fmt: skip
_STARTS = [first for first, _, _ in SCRIPT_RANGES]
# A script is the base's own when it holds at least this share of the base's scripted multi-character pieces,
# or of the scripted characters of its base-language sample.
BASE_SHARE = 0.1


def script_of(char: str) -> str:
    """The script group of one character (see the module docstring); COMMON outside the table."""
    code = ord(char)
    at = bisect.bisect_right(_STARTS, code) - 1
    if at >= 0 and code <= SCRIPT_RANGES[at][1]:
        return SCRIPT_RANGES[at][2]
    return COMMON


def scripts_in_range(first: int, last: int) -> set[str]:
    """The script groups of the code points first..last (COMMON where the table has a gap)."""
    found, code = set(), first
    while code <= last:
        at = bisect.bisect_right(_STARTS, code) - 1
        if at >= 0 and code <= SCRIPT_RANGES[at][1]:
            found.add(SCRIPT_RANGES[at][2])
            code = SCRIPT_RANGES[at][1] + 1
        else:
            found.add(COMMON)
            nxt = at + 1
            code = SCRIPT_RANGES[nxt][0] if nxt < len(SCRIPT_RANGES) else last + 1
    return found


def script_counts(strings: Iterable[str], per_string: bool) -> Counter:
    """How often each non-Common script occurs: once per string that holds it (`per_string`) or per character."""
    counts: Counter = Counter()
    for text in strings:
        if per_string:
            counts.update({script_of(c) for c in text} - {COMMON})
        else:
            counts.update(s for s in map(script_of, text) if s != COMMON)
    return counts


def dominant(counts: Counter) -> set[str]:
    """The scripts holding at least BASE_SHARE of `counts`."""
    total = sum(counts.values())
    return {script for script, n in counts.items() if total and n >= BASE_SHARE * total}


def base_scripts(pieces: Iterable[str], sample: Iterable[str] | None = None) -> set[str]:
    """The scripts a base speaks: those that dominate its multi-character pieces (single characters say
    nothing: a base for English still spells a thousand Chinese characters), and, given a base-language
    `sample`, those that dominate the sample's characters."""
    scripts = dominant(script_counts((p for p in pieces if len(p.replace("▁", "")) > 1), per_string=True))
    if sample is not None:
        scripts |= dominant(script_counts(sample, per_string=False))
    return scripts
