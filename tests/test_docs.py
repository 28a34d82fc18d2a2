"""The documentation stays navigable: every relative link in the README, docs/*.md, benchmarks/README.md and the
study READMEs points at a file that exists (and, with a #fragment into a markdown file, at a heading that
exists); the README fits a screen (at most 220 lines); its configuration table names every option file under
conf/, and its command tables every console script and make target. (The study pages' figures are checked
against their per-run records by experiments.check: tests/compare/test_compare_archive.py.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 220

DOCS = sorted({README, *(ROOT / "docs").glob("*.md"), ROOT / "benchmarks" / "README.md",
               ROOT / "experiments" / "README.md", *(ROOT / "experiments").glob("*/README.md")})
DOCS = [p for p in DOCS if p.is_file()]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """The text without fenced code blocks and code spans (a `[x](y)` in code is not a link)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(path: Path) -> list[str]:
    return LINK.findall(prose(path.read_text(encoding="utf-8")))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.replace("`", "").strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def is_external(target: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I))  # http:, https:, mailto:, ...


def broken_links(path: Path) -> list[str]:
    bad = []
    for target in links(path):
        if is_external(target):
            continue
        file_part, _, fragment = target.partition("#")
        dest = path if not file_part else (path.parent / file_part).resolve()
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif fragment and dest.is_file() and dest.suffix == ".md" and fragment not in anchors(dest):
            shown = dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest.name
            bad.append(f"{target}: no heading #{fragment} in {shown}")
    return bad


def test_the_documents_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in DOCS}
    assert {"README.md", "docs/results.md", "docs/configuration.md", "docs/reliability.md",
            "experiments/README.md", "experiments/levers/README.md"} <= names


@pytest.mark.parametrize("path", DOCS, ids=[p.relative_to(ROOT).as_posix() for p in DOCS])
def test_every_relative_link_resolves(path):
    assert broken_links(path) == [], f"{path.relative_to(ROOT)}: broken links"


def test_the_readme_fits_a_screen():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES}): move detail to docs/"


def test_the_readme_names_every_config_option():
    """The README's configuration table is complete: each option file under conf/<group>/ is named in its
    group's row (conf/hydra/launcher/ in the hydra/launcher row)."""
    text = README.read_text(encoding="utf-8")
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z_/]+)`[^|\n]*\|.*$", text, re.M)}
    missing = []
    for option in sorted((ROOT / "conf").glob("**/*.yaml")):
        group = option.parent.relative_to(ROOT / "conf").as_posix()
        if group == ".":
            continue  # train.yaml, the primary config
        row = rows.get(group)
        if row is None or f"`{option.stem}`" not in row:
            missing.append(f"{group}={option.stem}")
    assert missing == [], f"README.md's configuration table lacks {missing}"


def test_the_readme_names_every_command_and_make_target():
    text = README.read_text(encoding="utf-8")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    targets = re.findall(r"^([a-z][a-z-]*):.*##", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M)
    assert targets, "no documented make target found"
    missing = [s for s in scripts if f"`{s}" not in text] + [t for t in targets if f"make {t}" not in text]
    assert missing == [], f"README.md does not name {missing}"


def test_link_checker_catches_a_broken_link(tmp_path):
    (tmp_path / "other.md").write_text("# A heading: with `code`\n\n## Twice\n## Twice\n")
    doc = tmp_path / "doc.md"
    doc.write_text("[ok](other.md) [anchor](other.md#a-heading-with-code) [dup](other.md#twice-1) "
                   "[gone](missing.md) [bad anchor](other.md#nope) [web](https://example.org/x) "
                   "`[code](not-a-link.md)`\n```\n[fenced](also-not.md)\n```\n")
    assert broken_links(doc) == ["missing.md: no such file", "other.md#nope: no heading #nope in other.md"]
