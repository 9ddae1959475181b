"""The docs site's generated pages, made from the code each time the site is built (so they never go stale).

- ``index.md``: the README, its ``docs/...`` links rewritten to point inside the site;
- ``reference/cli.md``: every ``dpolab`` command's ``--help``, from the parser ``dpolab.cli.build_parser`` builds;
- ``reference/config.md``: every config option with its default and help, what ``dpolab config`` prints.

As an MkDocs hook (``hooks:`` in ``mkdocs.yml``), ``on_files`` adds the three pages to the build. Run as a script,
``python scripts/docs_pages.py cli|config|index`` prints one page.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
HELP_WIDTH = "100"  # argparse wraps --help to $COLUMNS: fixed here so that the page does not depend on the terminal


@contextmanager
def _columns(width: str) -> Iterator[None]:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = width
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def _subcommands(parser: argparse.ArgumentParser, prefix: str) -> List[Tuple[str, str, argparse.ArgumentParser]]:
    """(command line, one-line help, parser) for every (sub)command under ``parser``, depth first, in parser order."""
    out: List[Tuple[str, str, argparse.ArgumentParser]] = []
    for action in parser._actions:  # argparse has no public accessor for subparsers
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                out.append((f"{prefix} {name}", helps.get(name, ""), sub))
                out.extend(_subcommands(sub, f"{prefix} {name}"))
    return out


def cli_reference() -> str:
    """The CLI reference page: ``dpolab --help``, then each command's ``--help`` under its own heading."""
    from dpolab.cli import build_parser

    with _columns(HELP_WIDTH):
        parser = build_parser()
        lines = [
            "# CLI reference",
            "",
            "Generated from `dpolab.cli.build_parser` each time this site is built: the same text as "
            "`dpolab COMMAND --help`. Every command also accepts `--traceback` (the full traceback of an "
            "error, with its chain of causes).",
            "",
            "## dpolab",
            "",
            "```text",
            parser.format_help().rstrip(),
            "```",
            "",
        ]
        for command, summary, sub in _subcommands(parser, "dpolab"):
            lines += [f"## {command}", ""]
            if summary:
                lines += [summary[0].upper() + summary[1:] + ".", ""]
            lines += ["```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def config_reference() -> str:
    """The config reference page: the text of ``dpolab config`` (``dpolab.config.describe_config``), one section per
    config section (the lines starting with ``[``)."""
    from dpolab.config import describe_config

    text = describe_config()
    sections: List[Tuple[str, List[str]]] = []
    for line in text.splitlines():
        if line.startswith("["):
            sections.append((line, []))
        elif sections:
            sections[-1][1].append(line)
        elif line.strip():
            raise ValueError(f"dpolab config printed an option before any [section] line: {line!r}")
    if not sections:
        raise ValueError("dpolab config printed no [section] line; the config reference would be empty")
    lines = [
        "# Config reference",
        "",
        "Generated from `dpolab.config.describe_config` each time this site is built: what `dpolab config` "
        "prints. A config is YAML with these sections; any key can be overridden on the command line as "
        "`section.key=value` (values are parsed as YAML). Each option is `key = default {choices}`, with its "
        "help below it.",
        "",
    ]
    for head, body in sections:
        name, _, what = head.partition("]")
        lines += [f"## `{name.lstrip('[')}`", ""]
        if what.strip():
            lines += [what.strip()[0].upper() + what.strip()[1:] + ".", ""]
        lines += ["```text", "\n".join(body).rstrip("\n"), "```", ""]
    return "\n".join(lines)


_DOCS_LINK = re.compile(r"\]\(docs/([^)]*)\)")


def index_page(readme: str) -> str:
    """The README as the site's home page: links into ``docs/`` made relative to the site's root."""
    return _DOCS_LINK.sub(lambda m: f"]({m.group(1) or 'index.md'})", readme)


def pages() -> Dict[str, str]:
    """Every generated page, by its path inside the site."""
    return {
        "index.md": index_page((ROOT / "README.md").read_text(encoding="utf-8")),
        "reference/cli.md": cli_reference(),
        "reference/config.md": config_reference(),
    }


def on_files(files, config):  # MkDocs hook: add the generated pages to the build
    from mkdocs.structure.files import File

    for uri, content in pages().items():
        if files.get_file_from_path(uri) is not None:
            raise ValueError(f"docs/{uri} exists, but the site generates that page; remove the file")
        files.append(File.generated(config, uri, content=content))
    return files


def main(argv: List[str]) -> int:
    which = {"cli": "reference/cli.md", "config": "reference/config.md", "index": "index.md"}
    if len(argv) != 1 or argv[0] not in which:
        print(f"usage: python scripts/docs_pages.py {{{'|'.join(which)}}}", file=sys.stderr)
        return 2
    print(pages()[which[argv[0]]])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
