"""The logs of a run: the log file copy."""

import logging

import pytest

from maskcontrast.run_logs import run_log


def test_run_log_writes_the_error_that_ends_the_run(tmp_path):
    path = tmp_path / "train.log"
    with pytest.raises(ValueError), run_log(path):
        logging.getLogger("maskcontrast.test").warning("before")
        raise ValueError("the loss became nan")
    text = path.read_text()
    assert "before" in text and "ValueError: the loss became nan" in text
    assert not any(getattr(h, "baseFilename", None) == str(path) for h in logging.getLogger().handlers)
