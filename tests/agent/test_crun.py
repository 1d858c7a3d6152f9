"""crun has runc's checkpoint and restore commands, but only when it is built with CRIU."""

from __future__ import annotations

import shutil

import pytest

from kocoon.agent.drivers.base import Available, Unsupported
from kocoon.agent.drivers.criutool import CriuTool
from kocoon.agent.drivers.runc import CrunDriver

pytestmark = pytest.mark.criu


async def test_crun_is_offered_exactly_when_it_is_built_with_criu() -> None:
    if shutil.which("crun") is None:
        pytest.skip("crun is not installed (setup/node.sh installs it)")
    driver = CrunDriver(CriuTool())
    availability = await driver.probe()
    features = await driver._tool.features()
    assert "SECCOMP" in features  # the feature list was read at all
    if "CRIU" in features:
        assert isinstance(availability, Available), availability
    else:
        assert isinstance(availability, Unsupported)
        assert "built without CRIU" in availability.reason
        assert "+SECCOMP" in availability.reason
