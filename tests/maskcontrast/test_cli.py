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


def test_an_error_from_a_dataloader_worker_is_reported_as_its_own_message(caplog):
    """torch re-raises a worker's exception with the worker's traceback as its message; the user
    sees only the original line (here a DataError naming the file), and exit status 2."""
    from torch.utils.data import DataLoader, Dataset

    from maskcontrast.cli import run_main, user_message
    from maskcontrast.data import DataError

    class Broken(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise DataError(f"/photos/{i}.jpg: cannot decode (truncated); re-export or remove the file")

    with pytest.raises(DataError) as info:
        next(iter(DataLoader(Broken(), num_workers=1)))
    assert str(info.value).startswith("Caught DataError in DataLoader worker process 0")
    assert user_message(info.value) == "/photos/0.jpg: cannot decode (truncated); re-export or remove the file"
    assert user_message(ValueError("plain\nmessage")) == "plain\nmessage"

    def main():
        next(iter(DataLoader(Broken(), num_workers=1)))

    with pytest.raises(SystemExit) as code:
        run_main(main, "t")
    assert code.value.code == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "/photos/0.jpg: cannot decode (truncated); re-export or remove the file"
    ]
