"""``python -m zerolora ARGS...``: the command line, as the ``zerolora`` executable."""

import sys

from .commands import main

sys.exit(main())
