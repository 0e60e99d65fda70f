"""The CLIs under test call ``setup_logging()``, which adds a handler on the current (captured)
stderr; remove what a test added so later tests do not log into a closed capture stream."""

from __future__ import annotations
