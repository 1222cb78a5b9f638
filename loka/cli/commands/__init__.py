"""One module per ``loka`` command; :mod:`loka.cli.parser` wires them to the parser."""
