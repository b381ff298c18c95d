"""Every command's --help describes each flag; ``visq quantize`` prints the whole summary only when asked."""

import argparse
import dataclasses
import importlib
import re
from pathlib import Path

import pytest

from pipelines import _cli

ROOT = Path(__file__).resolve().parents[2]
# every job and benchmark whose flags come from a Config dataclass (pipelines._cli.parse)
CONFIG_COMMANDS = sorted(
    f"{path.parent.name}.{path.stem}" for folder in ("pipelines", "eval") for path in (ROOT / folder).glob("*.py")
    if re.search(r"_cli import parse\b|_cli\.parse\(", path.read_text()))


def _undescribed(parser: argparse.ArgumentParser) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += [f"{name} {m}" for m in _undescribed(sub)]
        elif not isinstance(action, argparse._HelpAction) and not action.help:
            missing.append(action.dest)
    return missing


@pytest.mark.parametrize("module", CONFIG_COMMANDS)
def test_every_config_flag_has_help(module):
    assert len(CONFIG_COMMANDS) >= 15  # the discovery found the jobs
    cfg = importlib.import_module(module).Config
    parser = _cli.parser(cfg)
    assert _undescribed(parser) == []
    parser.format_help()  # a '%' in a comment must not break --help


@pytest.mark.parametrize("module, entry", [("eval.bench_vit_qat", "_parse"), ("eval.bench_mixed", "_parse_args"),
                                           ("eval.bench_speed", "_parse"), ("eval.report_html", "main")])
def test_argparse_commands_have_help(module, entry, monkeypatch):
    seen = []

    def capture(parser, *args, **kwargs):
        seen.append(parser)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        getattr(importlib.import_module(module), entry)(["--help"])
    assert seen and _undescribed(seen[0]) == []


def test_hand_written_parsers_have_help():
    from eval.bench_vit import _parse
    from eval.images import _parser
    from visq.cli import parser

    assert _undescribed(_parser()) == [] and _undescribed(parser()) == []
    with pytest.raises(SystemExit):
        _parse(["--help"])


def test_field_help_sources():
    @dataclasses.dataclass(frozen=True)
    class Config:
        # the comment line above documents this field
        size: int = 3
        steps: int = 2  # a trailing comment wins over the glossary
        seed: int = 0
        rate: float = dataclasses.field(default=0.5, metadata={"help": "from metadata"})  # not this
        guidance: float = 4.0

    helps = _cli.field_help(Config)
    assert helps == {"size": "the comment line above documents this field", "steps": "a trailing comment wins over "
                     "the glossary", "seed": _cli.GLOSSARY["seed"], "rate": "from metadata",
                     "guidance": _cli.GLOSSARY["guidance"]}


def test_visq_quantize_prints_the_summary_only_when_asked(tmp_path, capsys):
    from visq.cli import main
    from visq.testing import tiny_sd

    tiny_sd().save_pretrained(tmp_path / "pipe")
    (tmp_path / "prompts.txt").write_text("a red circle\n")
    args = ["quantize", str(tmp_path / "pipe"), "w8a8", "--calib", str(tmp_path / "prompts.txt"), "--steps", "2"]
    main([*args, "--out", str(tmp_path / "q")])
    short = capsys.readouterr().out
    assert "layers kept float; every site: -v" in short and "conv_in" not in short
    main([*args, "--out", str(tmp_path / "q2"), "-v"])
    assert "conv_in" in capsys.readouterr().out
