"""`python -m controller ...` is the `kdigits` command."""

import sys

from controller.cli import main

sys.exit(main())
