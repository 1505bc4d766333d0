"""`python -m numoe` = the `numoe` command."""

import sys

from .cli import main

sys.exit(main())
