"""`python -m pullmedic` is the `pullmedic` command."""

import sys

from pullmedic.cli import main

sys.exit(main())
