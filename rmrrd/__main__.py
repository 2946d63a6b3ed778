"""``python -m rmrrd`` runs the command line."""

import sys

from rmrrd.cli import main

sys.exit(main())
