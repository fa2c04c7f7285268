"""Every config flag of `lstmkit train` and `lstmkit classify train` says in --help what it
does and what its default is (and its allowed values, where there is a list)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from lstmkit.classify.config import ClassifierConfig
from lstmkit.cli import main
from lstmkit.lm.config import LMConfig


def help_text(capsys, *command: str) -> str:
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def flag_entries(text: str) -> dict[str, str]:
    """Each `--flag V` entry of a help text with its (wrapped) description, as one line."""
    entries, name = {}, None
    for line in text.splitlines():
        flag = re.match(r"^  (--[a-z-]+) V\b\s*(.*)", line)
        if flag:
            name = flag.group(1)
            entries[name] = flag.group(2)
        elif name and re.match(r"^ {20,}\S", line):
            entries[name] = f"{entries[name]} {line.strip()}".strip()
        else:
            name = None
    return entries


@pytest.mark.parametrize(("command", "config"), [(("train",), LMConfig),
                                                 (("classify", "train"), ClassifierConfig)])
def test_every_config_flag_has_a_description_and_a_default(capsys, command, config):
    entries = flag_entries(help_text(capsys, *command))
    for field in dataclasses.fields(config):
        flag = f"--{field.name.replace('_', '-')}"
        assert flag in entries, f"{flag} missing from {' '.join(command)} --help"
        described = re.fullmatch(r"(\S.{9,}) \((?:one of (.+); )?(?:true or false; )?"
                                 r"default: (\S+)\)", entries[flag])
        assert described, f"{flag}: {entries[flag]!r}"
        for choice in field.metadata.get("choices", ()):
            assert choice in (described.group(2) or ""), f"{flag} does not list {choice}"


def test_the_learning_rate_flag_shows_the_field_default(capsys):
    entries = flag_entries(help_text(capsys, "train"))
    assert entries["--learning-rate"].endswith("(default: 1.0)")
    assert entries["--cell"] == "recurrent cell (one of lstm, gru, rnn; default: lstm)"
