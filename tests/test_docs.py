"""The commands shown in README.md and docs/*.md still fit the code.

Every ``python -m <module> ...`` (or ``torchrun ... -m <module> ...``) line inside a fenced code
block is parsed by that module's own argument parser: an unknown or renamed flag, a missing
required argument or a bad choice fails here. Where the module takes ``--config`` and
``key=value`` overrides, the config is also resolved against its schema, so a renamed config key
or a missing YAML file fails too. Shell variables (``$D``, ``~``) are left unexpanded: nothing is
read or run. ``python bench/<script>.py ...`` lines are parsed too: the script runs as ``__main__`` and is
stopped right after its ``parse_args``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from maskcontrast.config import PretrainConfig
from maskcontrast.config_loading import load_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(
    r"(?:^|\s)(?:\S*python3?|torchrun(?:\s+--?[\w-]+(?:[= ]\S+)?)*)\s+-m\s+((?:maskcontrast|saliency|eval)[\w.]*)(.*)"
)
BENCH = re.compile(r"(?:^|\s)\S*python3?\s+(bench/\w+\.py)(.*)")
SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "2>", "2>&1", "&"}


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """``(where, module, argv)`` of every module command in a fenced block of the docs."""
    found = []
    for doc in DOCS:
        in_block, line_no, buf = False, 0, ""
        for n, raw in enumerate(doc.read_text().splitlines(), 1):
            if raw.lstrip().startswith("```"):
                in_block, buf = not in_block, ""
                continue
            if not in_block:
                continue
            line = raw.strip()
            if not buf:
                line_no = n
            buf = f"{buf} {line}" if buf else line
            if buf.endswith("\\"):
                buf = buf[:-1]
                continue
            text, buf = buf, ""
            if text.startswith("#"):
                continue
            m = COMMAND.search(text) or BENCH.search(text)
            if m is None:
                continue
            argv = []
            for token in shlex.split(m.group(2), comments=True):
                if token in SHELL_OPERATORS:
                    break
                argv.append(token)
            found.append((f"{doc.name}:{line_no}", m.group(1), argv))
    return found


ALL = documented_commands()
COMMANDS = [c for c in ALL if not c[1].startswith("bench/")]
BENCH_COMMANDS = [c for c in ALL if c[1].startswith("bench/")]


def _schema(module: str):
    """The config schema a module resolves ``--config`` and overrides against (None: no config)."""
    if module == "maskcontrast.pretrain":
        return PretrainConfig
    if module == "maskcontrast.moco":
        from maskcontrast.config import MocoConfig

        return MocoConfig
    if module in ("maskcontrast.detcon", "maskcontrast.densecl", "maskcontrast.stego"):
        import importlib

        return importlib.import_module(module).CLI["schema"]
    if module == "saliency.refine":
        from saliency.refine import RefineConfig

        return RefineConfig
    if module == "eval.linear":
        from eval.linear import LinearConfig

        return LinearConfig
    if module == "saliency.generate":
        from saliency.fusion import FusionConfig

        return FusionConfig
    return None


def _parser(module: str):
    import importlib

    return importlib.import_module(module).build_parser()


def test_the_docs_show_commands_of_every_entry_point():
    modules = {m for _, m, _ in COMMANDS}
    for entry in (
        "maskcontrast.pretrain",
        "maskcontrast.moco",
        "eval.kmeans",
        "eval.linear",
        "saliency.generate",
        "saliency.refine",
        "saliency.evaluate",
        "maskcontrast.extract",
        "eval.oneshot",
        "eval.propagation",
        "maskcontrast.data.download",
        "maskcontrast.detcon",
        "maskcontrast.densecl",
        "maskcontrast.stego",
    ):
        assert entry in modules, f"no documented command of python -m {entry}"


@pytest.mark.parametrize("where,module,argv", COMMANDS, ids=[f"{w}:{m}" for w, m, _ in COMMANDS])
def test_documented_command_parses(where, module, argv, monkeypatch):
    monkeypatch.chdir(ROOT)  # config paths in the docs are relative to the repository
    parser = _parser(module)
    # a shell variable given to an option with choices (a loop over methods) stands for one of them
    argv = list(argv)
    for i in range(1, len(argv)):
        action = parser._option_string_actions.get(argv[i - 1])
        if action is not None and action.choices and argv[i].startswith("$"):
            argv[i] = next(iter(action.choices))
    try:
        args = parser.parse_intermixed_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: python -m {module} {shlex.join(argv)} does not parse (see the usage above)")
    schema = _schema(module)
    if schema is not None and (getattr(args, "config", None) or getattr(args, "overrides", None)):
        load_config(schema, args.config, args.overrides)  # ConfigError names the unknown key or file


class _Parsed(Exception):
    pass


@pytest.mark.parametrize("where,script,argv", BENCH_COMMANDS, ids=[f"{w}:{m}" for w, m, _ in BENCH_COMMANDS])
def test_documented_bench_command_parses(where, script, argv, monkeypatch):
    import argparse
    import importlib.util
    import os
    import sys

    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    saved_env, saved_path = dict(os.environ), list(sys.path)  # the scripts set thread variables and sys.path
    try:
        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        monkeypatch.setattr(sys, "argv", [script, *argv])
        # run as the script would run (__name__ == "__main__"), up to its parse_args
        spec = importlib.util.spec_from_file_location("__main__", ROOT / script)
        with pytest.raises(_Parsed):
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
    except SystemExit:
        pytest.fail(f"{where}: python {script} {shlex.join(argv)} does not parse (see the usage above)")
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.path[:] = saved_path


def test_the_docs_show_bench_commands():
    assert {m for _, m, _ in BENCH_COMMANDS} >= {
        "bench/quality.py",
        "bench/saliency_speed.py",
        "bench/refiner_output_rules.py",
    }
