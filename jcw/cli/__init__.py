"""The `jcw` command line: a thin layer over the Python API (see `jcw.cli.main`)."""
from jcw.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
