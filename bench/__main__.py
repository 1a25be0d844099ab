"""`python -m bench` is the `labbench` command."""

import sys

from bench.cli import main

sys.exit(main())
