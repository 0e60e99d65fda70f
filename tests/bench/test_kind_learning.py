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


def test_the_decoder_readout_reads_other_prototypes(tmp_path, capsys):
    import torch
    from omegaconf import OmegaConf

    from eval.kinds import object_prototypes
    from maskcontrast.config import PretrainConfig
    from maskcontrast.data.synthetic import write_shapes_folder
    from maskcontrast.objectives import MaskContrastObjective

    cfg = OmegaConf.structured(PretrainConfig)
    cfg.model.backbone.arch = "resnet18"
    torch.save(MaskContrastObjective(cfg.model, cfg.objective).checkpoint(), tmp_path / "mc.pt")
    folder = write_shapes_folder(tmp_path / "shapes", n=4, size=64)
    head, kinds = object_prototypes(tmp_path / "mc.pt", folder)
    decoder, same_kinds = object_prototypes(tmp_path / "mc.pt", folder, readout="features")
    assert head.shape == (len(kinds), 32) and decoder.shape == (len(kinds), 256) and (kinds == same_kinds).all()
    kind_learning.main(["--objective", "maskcontrast", "--steps", "1", "--images", "8", "--readout", "features"])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["readout"] == "features" and 0.25 <= row["kinds_trained"] <= 1.0


def test_an_unknown_readout_is_refused(tmp_path):
    from eval.kinds import object_prototypes

    with pytest.raises(ValueError, match=r"readout must be one of \('embed', 'features'\), got 'logits'"):
        object_prototypes(tmp_path / "x.pt", tmp_path, readout="logits")
