"""The `oppy` command."""

from __future__ import annotations

import argparse

from oppy import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oppy", description="An onion-routing client proxy daemon.")
    parser.add_argument("--version", action="version", version=f"oppy {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    return 0
