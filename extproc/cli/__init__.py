"""The ``semantic-cache`` command line: run, serve, check-config, eval, admin, Envoy launch."""

from extproc.cli.main import main

__all__ = ["main"]
