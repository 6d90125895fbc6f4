"""A packetparser reload that needs new programs compiles them in a new child first; if that
compile fails, nothing running changes (issue 13).

The plugin runs from a copy of bpf/ that the test breaks between start and reload, so the
failure is a real bcc compile error, not a fake.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from retinad.config.schema import InterfaceSelection, PacketParserSettings
from retinad.errors import PluginError
from retinad.kernel.compile import find_bpf_dir
from retinad.kernel.tcx import BPF_TCX_EGRESS, BPF_TCX_INGRESS, tcx_prog_ids
from tests.kernel.pp_helpers import ifindex, make_plugin, samples, send_udp, value
from tests.netns import VethLink


def settings(link: VethLink, max_endpoints: int) -> PacketParserSettings:
    return PacketParserSettings(
        interfaces=InterfaceSelection(include=[link.host]),
        container_interfaces=False,
        attach_mode="tcx",
        max_endpoints=max_endpoints,
    )


def ingress_packets(pp: object) -> float:
    return value(samples(pp.collect()), "retinad_forward_packets_total", direction="ingress")  # type: ignore[attr-defined]


def test_a_failed_recompile_on_reload_keeps_the_running_programs(
    veth: VethLink, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "bpf"
    shutil.copytree(find_bpf_dir(), src)
    pp = make_plugin(settings(veth, 1024))
    pp.ctx = dataclasses.replace(pp.ctx, bpf_dir=src)
    pp.start()
    try:
        dev = ifindex(veth.host)
        progs = (tcx_prog_ids(dev, BPF_TCX_INGRESS), tcx_prog_ids(dev, BPF_TCX_EGRESS))
        assert all(len(p) == 1 for p in progs)
        send_udp(veth.ns, veth.host_ip, 10, 100)
        before = ingress_packets(pp)
        assert before >= 10

        good = (src / "packetparser.c").read_text()
        (src / "packetparser.c").write_text(good + "\nthis is not C;\n")
        old = pp.settings
        # Refused (so the daemon records the old settings as what runs and retries the new
        # ones at the next SIGHUP), with bcc's message.
        with pytest.raises(PluginError) as refused:
            pp.reload(settings(veth, 2048), pp.ctx.metrics)
        assert str(refused.value) == (
            "packetparser: new settings refused (their programs did not compile), the running "
            f"programs keep counting: {src / 'packetparser.c'}: bcc could not compile or load "
            f"it: Failed to compile BPF module b'{src / 'packetparser.c'}'"
        )
        assert pp.settings is old
        assert (tcx_prog_ids(dev, BPF_TCX_INGRESS), tcx_prog_ids(dev, BPF_TCX_EGRESS)) == progs
        send_udp(veth.ns, veth.host_ip, 7, 100)
        assert ingress_packets(pp) == before + 7  # same maps, still counting

        (src / "packetparser.c").write_text(good)
        pp.reload(settings(veth, 2048), pp.ctx.metrics)  # now it compiles: new programs
        assert pp.settings.max_endpoints == 2048
        new = (tcx_prog_ids(dev, BPF_TCX_INGRESS), tcx_prog_ids(dev, BPF_TCX_EGRESS))
        assert all(len(p) == 1 for p in new) and new != progs
    finally:
        pp.stop()
