"""Script groups of characters, and which scripts a base speaks (its multi-character pieces, its sample)."""

from __future__ import annotations

from cptlab.tokenizer.scripts import COMMON, SCRIPT_RANGES, base_scripts, script_of, scripts_in_range


def test_script_of_groups_characters_as_text_uses_them():
    assert [script_of(c) for c in "aé中，。ｱかカ한Жα"] == [
        "Latin", "Latin", "CJK", "CJK", "CJK", "Kana", "Kana", "Kana", "Hangul", "Cyrillic", "Greek"]  # fmt: skip
    assert {script_of(c) for c in " 1.,;!?\n\t▁🙂€—“"} == {COMMON}
    assert script_of("\U00020000") == "CJK"  # extension B


def test_the_table_is_sorted_and_disjoint():
    for (first, last, _), (following, _, _) in zip(SCRIPT_RANGES, SCRIPT_RANGES[1:]):
        assert first <= last < following


def test_scripts_in_range_sees_gaps_as_common():
    assert scripts_in_range(0x4E00, 0x4E3F) == {"CJK"}
    assert scripts_in_range(0x4000, 0x4FFF) == {"CJK", COMMON}  # the Yijing hexagrams sit between
    assert scripts_in_range(0x41, 0x5A) == {"Latin"}
    assert scripts_in_range(0x30, 0x41) == {COMMON, "Latin"}


def test_base_scripts_come_from_multi_character_pieces_and_the_sample():
    pieces = ["▁the", "ing", "▁a", "中", "国", "的", "Ж", "▁中"] + ["▁" + w for w in ("and", "of", "to", "in")]
    # A thousand Chinese characters spelled whole say nothing; words do.
    assert base_scripts(pieces) == {"Latin"}
    assert base_scripts(pieces + ["中国"] * 2) == {"Latin", "CJK"}  # 2 of 8 scripted words: >= 10%
    assert base_scripts(pieces, ["plain English text " * 20 + "中国"]) == {"Latin"}
    assert base_scripts(pieces, ["English 和中文混合的文本"]) == {"Latin", "CJK"}
    assert base_scripts(["12", "..", "▁▁"]) == set()
