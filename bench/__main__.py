"""`python -m bench`: the `labbench` command, kept for study launchers started before the command
moved to labbench/ (they spawn ``python -m bench worker``). New code runs ``python -m labbench``.

A script, not part of bench's import graph: nothing imports it, so bench still imports nothing
above it (tests/test_layers.py checks both).
"""

import sys

from labbench.cli import main

sys.exit(main())
