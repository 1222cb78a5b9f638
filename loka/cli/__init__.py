"""The ``loka`` command line: the parser (``parser``), the torchrun launcher (``launcher``), what the
commands share (``common``) and one module per command (:mod:`loka.cli.commands`)."""

from __future__ import annotations

from loka.cli.parser import main

__all__ = ["main"]
