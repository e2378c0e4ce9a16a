"""The argparse pieces every `jcw` command shares: one-line usage errors and the common options."""
from __future__ import annotations

import argparse
import sys

from jcw.config import CHOICES


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"jcw: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


def action_group(sub, name: str, help_text: str):
    """A command whose actions are subcommands (`jcw latency measure`), one of which is required."""
    actions = sub.add_parser(name, help=help_text).add_subparsers(dest="action", metavar="ACTION",
                                                                  parser_class=Parser)
    actions.required = True
    return actions


def data_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $JCW_DATA, then Debian's)")


def accelerator_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accelerator", choices=CHOICES["accelerator"], default="auto",
                   help="where training and scoring run (default auto: CUDA when torch sees a GPU, with autocast)")


def ray_opts(p: argparse.ArgumentParser, default_workers: int | None = None) -> None:
    p.add_argument("--workers", type=int, default=default_workers,
                   help="Ray scoring actors (default: one forked process per CPU on 2 CPUs or fewer, else one actor "
                        "per CPU; 0: in this process)")
    p.add_argument("--ray-address", default=None, help="join an existing Ray cluster")
