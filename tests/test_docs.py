"""The docs' relative links and #anchors resolve (README.md, ARCHITECTURE.md, docs/*.md): a page
renamed or a heading reworded once left links that led nowhere."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target) and ![alt](target); the text may hold `code` and brackets one level deep.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: links and code marks dropped, lower case, punctuation but
    `-` and `_` removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "")
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path):
    """(line number, target) of every link outside code (fenced blocks and `spans`)."""
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for match in LINK.finditer(CODE_SPAN.sub("", line)):
            yield number, match.group(1)


def broken_links(pages=PAGES, root=ROOT) -> list[str]:
    broken = []
    for page in pages:
        for number, target in links(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            where = f"{page.relative_to(root)}:{number}: {target}"
            linked = (page.parent / file_part).resolve() if file_part else page
            if not linked.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{where} (no such heading)")
    return broken


def test_slug_follows_github():
    assert slug("Choosing a style: previews") == "choosing-a-style-previews"
    assert slug("The result at the layer's size") == "the-result-at-the-layers-size"
    assert slug("The preview in the dialog (GIMP 3)") == "the-preview-in-the-dialog-gimp-3"
    assert slug("The `stylefu` command") == "the-stylefu-command"
    assert slug("Trained VGG16 weights from the package index") == \
        "trained-vgg16-weights-from-the-package-index"


def test_the_checker_finds_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](#nothing) [file](missing.md)\n"
                    "```\n[in code](#ignored)\n```\n", encoding="utf-8")
    assert [t for _, t in links(page)] == ["#title", "#nothing", "missing.md"]
    assert broken_links([page], tmp_path) == ["page.md:3: #nothing (no such heading)",
                                              "page.md:3: missing.md (no such file)"]


def test_every_relative_link_and_anchor_resolves():
    assert broken_links() == []
