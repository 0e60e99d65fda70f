"""bench/kind_learning.py runs end to end at toy size and reports what the docs quote."""

import json

import kind_learning
import pytest


@pytest.mark.parametrize("objective", ["maskcontrast", "detcon"])
def test_kind_learning_reports_both_readouts(objective, tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    kind_learning.main(["--objective", objective, "--steps", "2", "--images", "8", "--out", str(out)])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row == json.loads(out.read_text())
    assert row["objective"] == objective and row["steps"] == 2
    for key in ("kinds_at_init", "kinds_trained"):
        assert 0.25 <= row[key] <= 1.0  # the best match of 4 clusters to 4 kinds holds at least a quarter
    assert 0.0 <= row["linear_kinds_trained"] <= 1.0 and 0.0 <= row["linear_kinds_at_init"] <= 1.0
    assert row["acc_x_chance"] > 0
