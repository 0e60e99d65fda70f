"""The CLIs under test call ``setup_logging()``, which adds a handler on the current (captured)
stderr; remove what a test added so later tests do not log into a closed capture stream."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _restore_root_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
