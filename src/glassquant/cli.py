"""Command line: ``glassquant demo``."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from . import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="glassquant", description=__doc__)
    parser.add_argument("--version", action="version", version=f"glassquant {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the guided tour: the seed post computed, then an int8 MLP "
                          "proven equal to PyTorch's")
    demo.add_argument("--engine", default="x86", choices=["x86", "fbgemm", "qnnpack", "onednn"],
                      help="PyTorch quantized engine to match (default: x86)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import tour

        result = tour.run(Console(), engine=args.engine)
        return 1 if result.get("mismatches", 0) else 0
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
