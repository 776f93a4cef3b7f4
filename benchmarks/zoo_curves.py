"""Every shipped model's accuracy against training time, from the manifests (no computation): prints the markdown
table that BENCHMARKS.md carries, or with ``--write`` replaces that table in BENCHMARKS.md.

    python benchmarks/zoo_curves.py [--write]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metalib.outputs import write_atomic
from metalib.pretrained.report import MARKERS, curves_markdown

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help=f"replace the table in {BENCHMARKS.name}")
    a = p.parse_args(argv)
    block = curves_markdown()
    if not a.write:
        print(block)
        return
    text = BENCHMARKS.read_text(encoding="utf-8")
    start, end = text.find(MARKERS[0]), text.find(MARKERS[1])
    if start < 0 or end < start:
        sys.exit(f"error: {BENCHMARKS} has no block between the markers {MARKERS[0]!r} and {MARKERS[1]!r}; add both "
                 f"lines where the table belongs")
    write_atomic(BENCHMARKS, text[:start] + block + text[end + len(MARKERS[1]):], "benchmarks file")
    print(f"wrote the table of {block.count(chr(10)) - 5} models to {BENCHMARKS}")


if __name__ == "__main__":
    main()
