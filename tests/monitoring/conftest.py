"""One real retinad with traffic per naming, shared by the monitoring tests of a module.

Remote context is on in prometheus naming (the endpoint dashboard's peers row reads the
``retinad_endpoint_remote_*`` series) and off in retina naming, where it changes the
shape of the forward and flag series (exporter/naming.py, ``retina_pair_shape``):
test_retina_dashboards.py runs retina naming with it on, for Retina's own pod-level
dashboard and for retinad's dashboards again in that shape.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.monitoring.stack import Stack, running_stack


@pytest.fixture(scope="module", params=["prometheus", "retina"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    naming = str(request.param)
    workdir = tmp_path_factory.mktemp(f"stack-{naming}")
    with running_stack(naming, workdir, remote_context=naming == "prometheus") as st:
        yield st
