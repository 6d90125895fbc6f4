"""One real retinad with traffic per naming, shared by the monitoring tests of a module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.monitoring.stack import Stack, running_stack


@pytest.fixture(scope="module", params=["prometheus", "retina"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    naming = str(request.param)
    with running_stack(naming, tmp_path_factory.mktemp(f"stack-{naming}")) as st:
        yield st
