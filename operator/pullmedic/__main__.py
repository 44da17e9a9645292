"""`python -m pullmedic` is the `pullmedic` command."""

import sys

from pullmedic.app.cli import main

sys.exit(main())
