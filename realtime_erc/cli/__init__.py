"""The ``realtime-erc`` command line: thin commands over library functions."""

from realtime_erc.cli.app import app, main

__all__ = ["app", "main"]
