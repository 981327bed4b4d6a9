#!/usr/bin/env python3
"""Every link in README.md, docs/, bench/ and tests/ Markdown resolves inside the
repository (a fresh clone never links outside itself, DESIGN §1): relative
targets must exist, `#anchors` must name a heading of the target file, and
no link may climb out of the repository. http(s) links are left alone.
Exit 1 with one line per broken link."""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(path: Path) -> set:
    out = set()
    incode = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            incode = not incode
        if not incode and line.startswith("#"):
            out.add(slug(line.lstrip("#")))
    return out


def main() -> int:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md")),
             *sorted((ROOT / "bench").glob("*.md")), ROOT / "BENCHMARKS.md"]
    bad = []
    for f in files:
        if not f.exists():
            continue
        incode = False
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if line.startswith("```"):
                incode = not incode
            if incode:
                continue
            for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
                if re.match(r"[a-z]+:", target):
                    continue
                path, _, anchor = target.partition("#")
                dest = (f.parent / path).resolve() if path else f
                where = f"{f.relative_to(ROOT)}:{n}: {target}"
                if ROOT not in dest.parents and dest != ROOT:
                    bad.append(f"{where}: outside the repository")
                elif not dest.exists():
                    bad.append(f"{where}: no such file")
                elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                    bad.append(f"{where}: no heading #{anchor}")
    for b in bad:
        print(b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
