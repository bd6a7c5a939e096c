"""`workbench sweep` end to end on the default model (two heads, tiny prompts)."""

import pytest

from workbench.cli import main
from workbench.sweeps import load_sweep


@pytest.mark.model
def test_sweep_command_writes_resumes_and_refuses_to_overwrite(tmp_path, capsys, smollm2):
    out = tmp_path / "s"
    argv = ["sweep", "--model", "smollm2-135m", "--task", "induction", "--prompts", "2", "--seq-len", "8",
            "--no-filter", "--heads", "L17H3", "L18H6", "--metric", "loss,accuracy", "--out", str(out)]
    assert main(argv) == 0
    df = load_sweep(out)
    assert sorted(df["heads"].unique()) == ["L17H3", "L18H6"] and len(df) == 4
    assert (out / "sweep.html").is_file()
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0
    assert main(["sweep", "--task", "induction", "--cells", "pairs", "--out", str(tmp_path / "p"),
                 "--prompts", "2", "--seq-len", "8"]) == 2


def test_sweep_command_screens_and_verifies(tmp_path, capsys, tiny_folder):
    out = tmp_path / "v"
    argv = ["sweep", "--model", str(tiny_folder), "--task", "induction", "--prompts", "4", "--seq-len", "6",
            "--no-filter", "--intervention", "mean", "--out", str(out), "--screen", "attribution", "--verify", "2",
            "--atp-fixes", "qk,graddrop"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "top 10 cells by |estimate| (atp*)" in printed and "spearman_verified" in printed
    df = load_sweep(out)
    assert set(df["method"]) == {"atp*", "exact"} and df.loc[df["method"] == "exact", "heads"].nunique() == 4
    assert main(["sweep", "--model", str(tiny_folder), "--task", "induction", "--out", str(tmp_path / "w"),
                 "--verify", "2"]) == 2
    assert "--screen" in capsys.readouterr().err
    assert main(["sweep", "--model", str(tiny_folder), "--task", "induction", "--out", str(tmp_path / "x"),
                 "--screen", "attribution", "--atp-fixes", "kq"]) == 2
    assert "unknown AtP* fix" in capsys.readouterr().err
