"""``key=value`` arguments: the one parser of config overrides (``optim.lr=0.01``), the evaluation
CLIs' ``--dataset-arg`` and ``python -m maskcontrast.data.check --option``.

Each caller names its flag, so that a malformed item is an error naming the flag and the item.

Example::

    split_key_value("optim.lr=0.01", "override")               # ("optim.lr", "0.01")
    parse_key_values(["target=species", "n=3"])                   # {"target": "species", "n": 3}
    parse_key_values(["protocol=23"], "--option", typed=False)    # {"protocol": "23"}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["split_key_value", "parse_value", "parse_key_values"]


def split_key_value(item: str, what: str, example: str | None = None) -> tuple[str, str]:
    """``"key=value"`` -> ``(key, value)``: the key without surrounding spaces, the value as written
    (everything after the first ``=``, possibly empty).

    Args:
        item: one argument as given on the command line.
        what: the flag or kind of argument it came from, for the message (``--dataset-arg``, ``override``).
        example: a well-formed item shown in the message, e.g. ``target=species``.

    Raises:
        ValueError: no ``=``, or no key before it; the message names ``what`` and ``item``.
    """
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        hint = f" (e.g. {example})" if example else ""
        raise ValueError(f"{what} '{item}' is not of the form key=value{hint}")
    return key, value


def parse_value(text: str) -> bool | int | float | str:
    """``true``/``false`` (any case) -> bool, then an int, then a float; anything else stays text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return text


def parse_key_values(
    items: Sequence[str], what: str = "--dataset-arg", *, typed: bool = True, example: str | None = None
) -> dict[str, Any]:
    """``["target=species", "n=3"]`` -> ``{"target": "species", "n": 3}``; a later key wins.

    Args:
        items: ``key=value`` strings.
        what: the flag they came from, for messages (see :func:`split_key_value`).
        typed: convert each value with :func:`parse_value`; False keeps every value as text.
        example: a well-formed item shown in the message of a malformed one.

    Raises:
        ValueError: an item that is not ``key=value``, naming ``what``.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, value = split_key_value(item, what, example)
        out[key] = parse_value(value) if typed else value
    return out
