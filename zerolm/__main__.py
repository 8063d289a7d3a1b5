"""``python -m zerolm`` runs the console script."""

import sys

from zerolm.cli import main

sys.exit(main())
