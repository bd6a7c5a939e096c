"""The command line: bad input ends with a one-line error and exit code 2."""

import pytest

from workbench.cli import main
from workbench.cli.pattern_cmd import parse_head
from workbench.errors import InputError




def error_of(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("workbench: error: ") and "\n" not in err
    return err


def test_unknown_model(capsys):
    assert "smollm2-135m, gemma3-270m" in error_of(capsys, ["scan", "--model", "nonexistent-model"])


def test_empty_prompt_long_prompt_and_bad_head(capsys, tiny_folder, tmp_path):
    out = str(tmp_path / "p.html")
    assert "empty" in error_of(capsys, ["pattern", "--model", str(tiny_folder), "--prompt", " ", "--head", "0.0", "--out", out])
    long = " ".join(["w1"] * 600)
    assert "at most 512" in error_of(capsys, ["pattern", "--model", str(tiny_folder), "--prompt", long, "--head", "0.0", "--out", out])
    assert "out of range" in error_of(capsys, ["pattern", "--model", str(tiny_folder), "--prompt", "w1 w2", "--head", "3.0", "--out", out])
    assert "unknown detector" in error_of(capsys, ["scan", "--model", str(tiny_folder), "--detectors", "telepathy"])


def test_pattern_writes_html(capsys, tiny_folder, tmp_path):
    out = tmp_path / "p.html"
    assert main(["pattern", "--model", str(tiny_folder), "--prompt", "w1 w2 w3 w1 w2", "--head", "L1H2", "--out", str(out)]) == 0
    assert out.is_file() and "L1H2" in out.read_text()


def test_parse_head():
    assert parse_head("18.6") == parse_head("L18H6") == parse_head("18,6") == (18, 6)
    with pytest.raises(InputError):
        parse_head("eighteen")
