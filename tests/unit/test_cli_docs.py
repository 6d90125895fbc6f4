"""What operators reach for: retinad(8), bash/zsh completion, print-default-config and the
example config, each kept true to the program."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from retinad.cli import build_parser, main
from retinad.config.load import load_config
from retinad.config.schema import Settings

ROOT = Path(__file__).resolve().parents[2]
MAN = ROOT / "man" / "retinad.8"
BASH = ROOT / "completions" / "retinad.bash"
ZSH = ROOT / "completions" / "_retinad"


def option_strings() -> list[str]:
    return sorted(
        s for a in build_parser()._actions for s in a.option_strings if s.startswith("--")
    )


def test_man_page_and_completions_are_not_stale() -> None:
    """The committed files are what scripts/gen_cli_docs.py makes from the parser now."""
    p = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_cli_docs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr


def test_man_page_lists_every_flag_and_command_and_formats_cleanly() -> None:
    text = MAN.read_text()
    assert text.startswith('.TH RETINAD "8" ')
    for flag in option_strings():
        if flag != "--help":  # argparse-manpage leaves -h/--help to the synopsis
            assert flag.replace("-", r"\-") in text, flag
    for command in ("run", "check", "check-config", "print-default-config"):
        assert f".B {command}" in text or f".BI {command}" in text, command
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed")
    lint = subprocess.run(
        ["groff", "-ww", "-z", "-man", str(MAN)], capture_output=True, text=True, timeout=30
    )
    assert (lint.returncode, lint.stderr) == (0, "")


def bash_complete(words: list[str]) -> list[str]:
    """What the committed bash completion offers for ``words`` (the last one is completed),
    run in a real bash."""
    script = (
        f"source {BASH}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        f'COMP_LINE="{" ".join(words)}"; COMP_POINT=${{#COMP_LINE}}\n'
        "_shtab_retinad\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    p = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return [w.strip() for w in p.stdout.splitlines() if w.strip()]


def test_bash_completion_offers_every_flag_and_command() -> None:
    for flag in option_strings():
        assert flag in bash_complete(["retinad", flag[:-1]]), flag
    assert bash_complete(["retinad", "check"]) == ["check", "check-config"]
    assert bash_complete(["retinad", "pri"]) == ["print-default-config"]
    assert bash_complete(["retinad", "--log.level", ""]) == ["debug", "info", "warn", "error"]


def test_zsh_completion_names_every_flag() -> None:
    text = ZSH.read_text()
    assert text.startswith("#compdef retinad")
    for flag in option_strings():
        assert flag in text, flag
    assert "(run check check-config print-default-config)" in text
    assert "--config.file[" in text and ":FILE:_files" in text


def test_print_default_config_is_the_commented_embedded_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["print-default-config"]) == 0
    out = capsys.readouterr().out
    assert out == (ROOT / "retinad" / "default.toml").read_text()
    assert out.count("\n# ") >= 40  # every key has its comment


def test_printed_default_config_checks_and_equals_the_defaults(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "retinad", "print-default-config"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    cfg = tmp_path / "retinad.toml"
    cfg.write_text(p.stdout)
    assert main(["check-config", str(cfg)]) == 0
    assert load_config(cfg) == Settings()


def test_example_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    example = ROOT / "examples" / "retinad.toml"
    assert main(["check-config", str(example)]) == 0
    assert capsys.readouterr().out == f"{example}: OK\n"
