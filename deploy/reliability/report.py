#!/usr/bin/env python3
"""Prints the figures of a `make reliability` run (the JSON files the tests wrote) as Markdown.

Usage: report.py DIR  -- DIR holds one <test>.json per reliability test.
"""
import json
import pathlib
import sys


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    directory = pathlib.Path(sys.argv[1])
    files = sorted(directory.glob("*.json"))
    if not files:
        print(f"no figures in {directory}: run `make reliability` first", file=sys.stderr)
        return 1
    for path in files:
        try:
            figures = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            print(f"skipping {path.name}: {error}", file=sys.stderr)
            continue
        name = figures.pop("test", path.stem)
        variant = figures.pop("variant", "?")
        date = figures.pop("date", "?")
        print(f"### {name} ({variant}, {date})\n")
        print("| figure | value |")
        print("|---|---:|")
        for key in sorted(figures):
            value = figures[key]
            if isinstance(value, float):
                value = f"{value:.3f}"
            print(f"| {key} | {value} |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
