"""The `graphcred` command."""

from __future__ import annotations

import argparse

from . import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="graphcred", description=__doc__)
    parser.add_argument("--version", action="version", version=f"graphcred {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 0
