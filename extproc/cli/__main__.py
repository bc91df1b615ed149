"""``python -m extproc.cli``: the ``semantic-cache`` command."""

import sys

from extproc.cli.main import main

sys.exit(main())
