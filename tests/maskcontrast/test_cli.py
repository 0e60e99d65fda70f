"""maskcontrast.cli.run_main: bad input is one logged line and exit 2; a bug keeps its traceback."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from maskcontrast.cli import USER_ERRORS, run_main
from maskcontrast.config_checks import ConfigError
from maskcontrast.data import DataError


@pytest.mark.parametrize(
    "error", [ValueError("bad value"), FileExistsError("out exists"), DataError("bad file"), ConfigError("bad key")]
)
def test_user_errors_exit_2_with_one_line(error: Exception, caplog: pytest.LogCaptureFixture) -> None:
    def main() -> None:
        raise error

    with caplog.at_level(logging.ERROR, logger="eval.test"), pytest.raises(SystemExit) as exit_info:
        run_main(main, "eval.test")
    assert exit_info.value.code == 2
    assert [r.getMessage() for r in caplog.records if r.name == "eval.test"] == [str(error)]


def test_other_errors_propagate() -> None:
    def main() -> None:
        raise RuntimeError("a bug")

    assert not issubclass(RuntimeError, USER_ERRORS)
    with pytest.raises(RuntimeError, match="a bug"):
        run_main(main, "eval.test")


def test_success_returns() -> None:
    calls = []
    run_main(lambda: calls.append(1), "eval.test")
    assert calls == [1]


def test_an_entry_point_exits_2_on_bad_input(tmp_path) -> None:
    """End to end through one real entry point: the message names the folder, no traceback."""
    missing = tmp_path / "nope.pt"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "maskcontrast.extract",
            "--checkpoint",
            str(missing),
            "--images",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "is empty" in proc.stderr and str(tmp_path) in proc.stderr  # the images folder is checked first
