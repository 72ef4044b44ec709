"""pytest fixtures shared by every test module; the helpers they use live in helpers.py."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from helpers import LogCapture

from softfactory_obs import configure_logging
from softfactory_obs._failures import reset_failure_counts


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    capture = LogCapture()
    configure_logging("DEBUG", stream=capture.stream, service="test-svc")
    yield capture
    capture.lines()  # every test's output must parse


@pytest.fixture(autouse=True)
def _clean_logging_and_failures() -> Iterator[None]:
    reset_failure_counts()
    root = logging.getLogger()
    before = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in before[0]:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(before[1])
    logging.getLogger("softfactory_obs.access").setLevel(logging.NOTSET)
    reset_failure_counts()
