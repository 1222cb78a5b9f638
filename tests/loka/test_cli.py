"""The `loka` command line: exit codes, output, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loka.cli import main

LOKA = Path(sys.executable).parent / "loka"


def test_testbed_command_prints_the_table(tiny_testbed, testbed_cache, capsys):
    code = main(["testbed", "--size", "tiny", "--cache-dir", str(testbed_cache), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert str(tiny_testbed.root) in out
    assert tiny_testbed.accuracy_table().format() in out
    assert "forget facts" in out and "oracle" in out


def test_user_errors_are_one_line_with_exit_2(tmp_path, capsys):
    assert main(["testbed", "--size", "tiny", "--seed", "-1", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "error: seed must be a non-negative integer, got -1\n"
    assert not any(tmp_path.iterdir())


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        main(["testbed", "--seed", "-1", "--cache-dir", str(tmp_path), "--debug"])


@pytest.mark.skipif(not LOKA.exists(), reason="console script not installed in this environment")
@pytest.mark.parametrize("command", ["testbed", "demo"])
def test_console_script_help_shows_an_example(command):
    result = subprocess.run([str(LOKA), command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "example:" in result.stdout and f"loka {command}" in result.stdout


def test_unknown_command_is_a_usage_error():
    result = subprocess.run(
        [sys.executable, "-m", "loka.cli", "frobnicate"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr
