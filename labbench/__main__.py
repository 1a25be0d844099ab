"""`python -m labbench` is the `labbench` command."""

import sys

from labbench.cli import main

sys.exit(main())
