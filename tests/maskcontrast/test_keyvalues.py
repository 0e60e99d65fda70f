"""maskcontrast.keyvalues: the one ``key=value`` parser of config overrides, ``--dataset-arg`` and
``data.check --option``; every error names the flag it came from."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from eval.arguments import add_dataset_arguments, dataset_from_args
from maskcontrast.config_checks import ConfigError
from maskcontrast.config_loading import load_config
from maskcontrast.data.check import main as check_main
from maskcontrast.keyvalues import parse_key_values, parse_value, split_key_value


@dataclass
class _Cfg:
    epochs: int = 1


def test_split_keeps_the_value_as_written_and_strips_the_key():
    assert split_key_value(" optim.lr =0.01", "override") == ("optim.lr", "0.01")
    assert split_key_value("a=b=c", "override") == ("a", "b=c")
    assert split_key_value("a=", "override") == ("a", "")


@pytest.mark.parametrize("item", ["epochs", "=3", " =3", ""])
def test_malformed_items_name_the_flag(item):
    with pytest.raises(ValueError, match=rf"^--dataset-arg '{item}' is not of the form key=value$"):
        split_key_value(item, "--dataset-arg")
    with pytest.raises(ValueError, match=r"key=value \(e\.g\. target=species\)$"):
        parse_key_values([item], "--option", example="target=species")


def test_values_are_typed_unless_asked_not_to():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("TRUE") is True
    assert parse_value("false") is False and parse_value("species") == "species"
    assert parse_key_values(["target=species", "n=3", "n=4"]) == {"target": "species", "n": 4}
    assert parse_key_values(["protocol=23"], "--option", typed=False) == {"protocol": "23"}


def test_each_cli_names_its_own_flag(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"^override 'epochs' is not of the form key=value$"):
        load_config(_Cfg, overrides=["epochs"])

    parser = argparse.ArgumentParser()
    add_dataset_arguments(parser)
    args = parser.parse_args(["--dataset", "msrc", "--root", str(tmp_path), "--dataset-arg", "protocol"])
    with pytest.raises(ValueError, match=r"--dataset-arg 'protocol' is not of the form key=value"):
        dataset_from_args(args)
    with pytest.raises(SystemExit):
        check_main(["--dataset", "pet", "--root", str(tmp_path), "--option", "target"])
    assert "--option 'target' is not of the form key=value (e.g. target=species)" in capsys.readouterr().err
