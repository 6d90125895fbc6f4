"""dropreason reads BTF in a child (plugins/dropreason_btf.py): the names arrive intact and
the parse's ~50 MiB peak stays out of the process that serves metrics.

The plugin runs in a fresh interpreter so that its VmHWM (peak resident memory) before and
after start() is its own; this test process reads the same BTF itself to compare.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from retinad.kernel.btf import VMLINUX_BTF, Btf
from retinad.kernel.dropreasons import load_names
from retinad.plugins.dropreason import MODULE_BTF_DIR, kernel_defines

REPO = Path(__file__).resolve().parents[2]

START = """
import json, logging
from retinad.config.schema import DropReasonSettings, MetricsSettings
from retinad.kernel.compile import find_bpf_dir
from retinad.plugins.base import PluginContext
from retinad.plugins.dropreason import create
from retinad.resolvers.base import ResolverChain

def hwm():
    return int([l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")][0])

ctx = PluginContext(metrics=MetricsSettings(mode="advanced"), resolver=ResolverChain([]),
                    bpf_dir=find_bpf_dir(), logger=logging.getLogger("t"))
plugin = create(DropReasonSettings(), ctx)
before = hwm()
plugin.start()
try:
    after = hwm()
    names = plugin.names
    print(json.dumps({"hwm_growth_kib": after - before,
                      "core": {str(k): v for k, v in names.core.items()},
                      "subsystems": {str(k): v for k, v in names.subsystems.items()},
                      "defines": plugin._defines}))
finally:
    plugin.stop()
"""

PEAK_BOUND_KIB = 20 * 1024
"""The BTF parse alone took the daemon's VmHWM up by ~45 MiB when it ran in-process."""


def test_names_come_back_intact_and_the_parse_peak_is_not_in_this_process() -> None:
    out = subprocess.run([sys.executable, "-c", START], capture_output=True, text=True,
                         timeout=600, cwd=REPO, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout)
    btf = Btf.from_file(VMLINUX_BTF)
    want = load_names(btf, MODULE_BTF_DIR)
    assert got["core"] == {str(k): v for k, v in want.core.items()}
    assert got["subsystems"] == {str(k): v for k, v in want.subsystems.items()}
    assert got["defines"] == kernel_defines(btf, want)
    assert got["hwm_growth_kib"] < PEAK_BOUND_KIB, got["hwm_growth_kib"]
