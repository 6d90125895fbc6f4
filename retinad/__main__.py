"""``python -m retinad`` is the same as the ``retinad`` command."""

import sys

from retinad.cli import main

sys.exit(main())
