"""``python -m loka.cli`` is ``loka``."""

import sys

from loka.cli.parser import main

sys.exit(main())
