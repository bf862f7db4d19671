"""Issue 15.9: shell completion is installable and completes commands and options."""

from __future__ import annotations

from helpers import run_cli


def test_show_completion_prints_a_bash_script() -> None:
    result = run_cli("--show-completion", "bash", env={"SHELL": "/bin/bash"})
    assert result.exit_code == 0, result.stderr
    assert "_prodai_completion()" in result.stdout
    assert "complete -o default -F _prodai_completion prodai" in result.stdout


def test_completion_completes_commands_and_subcommands() -> None:
    top = run_cli(env={"_PRODAI_COMPLETE": "complete_bash", "COMP_WORDS": "prodai mo", "COMP_CWORD": "1"})
    assert top.exit_code == 0, top.stderr
    assert top.stdout.split() == ["models"]
    sub = run_cli(env={"_PRODAI_COMPLETE": "complete_bash", "COMP_WORDS": "prodai models pr", "COMP_CWORD": "2"})
    assert sub.exit_code == 0, sub.stderr
    assert sorted(sub.stdout.split()) == ["promote"]
