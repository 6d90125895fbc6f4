"""``python -m retinad`` is the same as the ``retinad`` command.

The compile child (retinad/kernel/loader.py) runs as ``python -m retinad __compile-bpf FD``;
it is dispatched here before the CLI's imports (prometheus-client, pyroute2, the plugins),
which the child does not need and would only slow every compile down.
"""

import sys

if sys.argv[1:2] == ["__compile-bpf"]:
    from retinad.kernel.loader import child_main

    child_main(int(sys.argv[2]))

from retinad.cli import main

sys.exit(main())
