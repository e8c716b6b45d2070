"""Write docs/cli.md, every `vibrary` command with its options, from the CLI's own parser.

The README shows the commands a newcomer needs; the rest lived only in `--help`, which nobody reads
before installing. The page is made from `build_parser()`, so it cannot describe options that no longer
exist; `--check` (run by the tests) fails when a command or an option is missing from the page. argparse
words its help a little differently from one Python version to the next, so the check looks for the
commands and options, not for the same text. Run it after changing the CLI:

    python scripts/cli_reference.py            # rewrites docs/cli.md
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "cli.md"
WIDTH = "100"  # argparse wraps at the terminal's width: fixed, so the page is the same on every machine

INTRO = """# The `vibrary` command

Every command and option, as `vibrary CMD --help` prints them (written by `scripts/cli_reference.py`
from the CLI's parser; do not edit by hand). Every command takes `--json`: one JSON object per line on
stdout, progress on stderr. Exit status: 0, 1 for a failure, 2 for a usage error, 130 when interrupted
(Ctrl-C), 143 when ended by SIGTERM (129: SIGHUP; a foreground daemon or trainer stops cleanly on any: 0), 141
when its reader went away. The README shows the everyday commands in context.
"""


Command = tuple[tuple[str, ...], str, argparse.ArgumentParser]  # the words that reach it, its help line, it


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = (), said: str = "") -> Iterator[Command]:
    """Every command one can run, in the order --help lists them."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    own = [word for word in options(parser) if word not in ("-h", "--help", "--json")]
    if not groups or (path and own):  # (`trainer token --data DIR`: an option of a command's group)
        yield path, said, parser
    for group in groups:
        lines = {a.dest: a.help or "" for a in group._choices_actions}
        for name, sub in group.choices.items():
            yield from commands(sub, (*path, name), lines.get(name, said))


def options(parser: argparse.ArgumentParser) -> list[str]:
    """The option strings (`--limit`) and positional names (`QUERY`) of one command."""
    found: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        choices = "{" + ",".join(map(str, action.choices)) + "}" if action.choices else ""
        found += action.option_strings or [str(action.metavar or choices or action.dest)]
    return found


def page() -> str:
    os.environ["COLUMNS"] = WIDTH
    from vibrary.clients.cli import build_parser

    parts = [INTRO]
    for path, said, parser in commands(build_parser()):
        text = parser.format_help().rstrip()
        parts.append(f"## vibrary {' '.join(path)}\n\n{said[:1].upper() + said[1:]}.\n\n```text\n{text}\n```\n")
    return "\n".join(parts)


def missing() -> list[str]:
    """What the page on disk lacks: each command's heading, and each of its options within its section."""
    from vibrary.clients.cli import build_parser

    text = PAGE.read_text() if PAGE.exists() else ""
    sections = {s.partition("\n")[0]: s for s in text.split("\n## ")[1:]}
    lacking = []
    for path, _, parser in commands(build_parser()):
        name = f"vibrary {' '.join(path)}"
        section = sections.get(name)
        if section is None:
            lacking.append(name)
            continue
        lacking += [
            f"{name} {word}"
            for word in options(parser)
            if not re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", section)
        ]
    return lacking


def main() -> int:
    if sys.argv[1:] == ["--check"]:
        lacking = missing()
        for what in lacking:
            print(f"{PAGE.relative_to(ROOT)} lacks `{what}`: run python scripts/cli_reference.py", file=sys.stderr)
        return 1 if lacking else 0
    PAGE.write_text(page())
    print(f"wrote {PAGE.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
