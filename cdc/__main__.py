"""Allow `python -m cdc`."""

import sys

from cdc.cli import main

sys.exit(main())
