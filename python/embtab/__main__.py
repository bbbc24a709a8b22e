"""Command line: ``python -m embtab bench [--quick] [--threads N ...]``."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embtab", description="embtab command line")
    sub = parser.add_subparsers(dest="command", required=True)
    from ._bench.runner import add_arguments

    add_arguments(sub.add_parser("bench", help="benchmark embtab against numpy (and torch, mmh3, scikit-learn)"))
    args = parser.parse_args(argv)
    if args.command == "bench":
        from ._bench.runner import run

        return run(args)
    return 2  # pragma: no cover (argparse enforces the sub-command)


if __name__ == "__main__":
    sys.exit(main())
