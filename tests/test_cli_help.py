"""Every command's --help: each flag has a sentence of its own, shows its default at most
once, and `--help` exits 0. Builds the real parsers; runs nothing."""

from __future__ import annotations

import argparse
import importlib
import re

import pytest

# Every command-line entry point, by module; each has build_parser().
COMMANDS = (
    "tuner.lr_search",
    "tuner.sweep",
    "tuner.promote",
    "tuner.report",
    "tuner.lr_audit",
    "tuner.ledger",
    "tuner.cluster_config",
    "nfnet.train",
    "nfnet.finetune",
    "nfnet.summary",
)


def _parsers(module: str) -> list[tuple[str, argparse.ArgumentParser]]:
    """The command's parser and its subcommands' parsers (`tuner.ledger show`, ...)."""
    parser = importlib.import_module(module).build_parser()
    found = [(module, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [(f"{module} {name}", sub) for name, sub in action.choices.items()]
    return found


PARSERS = [pair for module in COMMANDS for pair in _parsers(module)]
OPTIONS = [
    pytest.param(parser, action, id=f"{name} {'/'.join(action.option_strings) or action.dest}")
    for name, parser in PARSERS
    for action in parser._actions
    if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _rendered_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The option's help as --help prints it (the formatter's own additions included)."""
    formatter = parser._get_formatter()
    return formatter._expand_help(action) if action.help else ""


@pytest.mark.parametrize("parser,action", OPTIONS)
def test_every_option_has_a_sentence_and_its_default_at_most_once(parser, action):
    assert action.help and action.help is not argparse.SUPPRESS, "no help text"
    text = _rendered_help(parser, action)
    names = {action.dest, *(o.lstrip("-") for o in action.option_strings)}
    # "sam rho", "data dir": the flag's name reworded is not a sentence.
    words = [w for w in _words(text.split("(default")[0]) if w not in ("the", "a", "an")]
    assert all(words != _words(name) for name in names) and len(words) > 3, f"help only names the flag: {text!r}"
    defaults = re.findall(r"(?<![/\w])default(?![/\w])", text.lower())  # not a value such as runs/default
    assert len(defaults) <= 1, f"default shown more than once: {text!r}"


@pytest.mark.parametrize("name,parser", PARSERS, ids=[name for name, _ in PARSERS])
def test_help_exits_zero(name, parser, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_sweep_preset_help_names_every_preset():
    from search_spaces import known_presets
    from tuner.sweep import build_parser

    (action,) = [a for a in build_parser()._actions if "--preset" in a.option_strings]
    assert all(name in action.help for name in known_presets())


def test_progress_reads_as_an_on_off_switch():
    from nfnet.train import build_parser

    parser = build_parser()
    (action,) = [a for a in parser._actions if "--progress" in a.option_strings]
    assert "--no-progress" in action.option_strings and "True" not in _rendered_help(parser, action)
    assert parser.parse_args(["--no-progress"]).progress is False
    assert parser.parse_args(["--progress"]).progress is True
    assert not hasattr(parser.parse_args([]), "progress")
