"""The README tells the truth about commands and settings."""

from __future__ import annotations

from support import ROOT

from hubbub.config import settings_markdown


README = (ROOT / "README.md").read_text()


def test_configuration_table_is_current() -> None:
    assert settings_markdown() in README, "regenerate the table with `hubbub config`"


def test_starts_with_the_two_commands_and_ci_runs_the_test_one() -> None:
    head = README.split("```")[1]
    assert "./run.sh" in head and "./test.sh" in head
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./test.sh" in ci.splitlines()[-1]
