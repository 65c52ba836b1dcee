#!/usr/bin/env python3
"""Rewrite README.md's scoreboard from a bench result.

    h2guard bench --quick --json > bench.json
    .venv/bin/python scripts/scoreboard_readme.py bench.json            # rewrite README.md
    .venv/bin/python scripts/scoreboard_readme.py bench.json --check    # exit 1 if stale

Only the text between ``<!-- scoreboard:start -->`` and ``<!-- scoreboard:end -->`` changes
(see h2guard.bench.markdown). Exit status: 0 done or current, 1 ``--check`` found the README
stale, 2 the markers are missing or the result cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

try:
    from h2guard.bench.markdown import MarkersMissing, render_markdown, replace_section
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(ROOT / "src"))
    from h2guard.bench.markdown import MarkersMissing, render_markdown, replace_section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("result", type=Path, help="the file `h2guard bench --json` wrote")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md",
                        help="the README to update (default: the repository's README.md)")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if the README would change")
    args = parser.parse_args(argv)

    try:
        result = json.loads(args.result.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"scoreboard_readme: cannot read the bench result {args.result}: {exc}",
              file=sys.stderr)
        return 2
    if not isinstance(result, dict):
        print(f"scoreboard_readme: {args.result} is not a bench result (a JSON object)",
              file=sys.stderr)
        return 2
    try:
        readme = args.readme.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"scoreboard_readme: cannot read {args.readme}: {exc}", file=sys.stderr)
        return 2
    try:
        updated = replace_section(readme, render_markdown(result))
    except MarkersMissing as exc:
        print(f"scoreboard_readme: {args.readme}: {exc}. Add the two marker lines where the "
              "scoreboard goes; nothing was changed.", file=sys.stderr)
        return 2

    if updated == readme:
        print(f"{args.readme}: scoreboard is up to date")
        return 0
    if args.check:
        print(f"{args.readme}: scoreboard is stale; run scripts/scoreboard_readme.py "
              f"{args.result}", file=sys.stderr)
        return 1
    args.readme.write_text(updated, encoding="utf-8")
    print(f"{args.readme}: scoreboard updated from {args.result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
