#!/usr/bin/env python3
"""Regenerate (or check) the default-config table of ``docs/autotune.md`` from the code.

The table sits between the markers ``<!-- default-configs:begin -->`` and
``<!-- default-configs:end -->`` and lists every registered schedule's ``default_configs``
(kind -> head-dim bound -> config), the configs a kernel launches with when nothing is tuned.

    python tools/autotune_doc.py           # rewrite the table in docs/autotune.md
    python tools/autotune_doc.py --check   # exit 1 if the doc differs from the code
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "autotune.md"
BEGIN = "<!-- default-configs:begin -->"
END = "<!-- default-configs:end -->"


def render() -> str:
    """The markdown table of every registered schedule's default configs."""
    sys.path.insert(0, str(ROOT))
    from attncc.schedules import SCHEDULES

    lines = ["| kind | schedule | head dim up to | default config |", "|---|---|---|---|"]
    for schedule in SCHEDULES:
        for kind, table in schedule.default_configs.items():
            for bound in sorted(table):
                config = ", ".join(f"`{name}={value}`" for name, value in table[bound].items())
                lines.append(f"| `{kind}` | {schedule.name} | {bound} | {config} |")
    return "\n".join(lines)


def documented(text: str) -> str:
    """The text between the markers (stripped); ValueError when they are missing."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{DOC}: markers {BEGIN} ... {END} not found")
    return text[start + len(BEGIN):end].strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/autotune.md differs from the code")
    args = ap.parse_args()
    text = DOC.read_text(encoding="utf-8")
    table = render()
    if args.check:
        same = documented(text) == table
        print(f"{DOC.relative_to(ROOT)}: default configs {'match' if same else 'differ from'} the code")
        return 0 if same else 1
    documented(text)  # the markers must be there
    start, end = text.find(BEGIN) + len(BEGIN), text.find(END)
    DOC.write_text(f"{text[:start]}\n{table}\n{text[end:]}", encoding="utf-8")
    print(f"wrote the default-config table of {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
