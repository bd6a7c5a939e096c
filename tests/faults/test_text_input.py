"""Issue 12, problem 8: `scan --text` refuses binary files, uses the first tokens of long paragraphs, and every
Atlas column definition states the settings actually used."""

from __future__ import annotations

import json

import pytest

from workbench.atlas import Atlas
from workbench.cli import main
from workbench.errors import InputError
from workbench.stimuli.text import paragraphs, read_text


def error_of(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("workbench: error: ") and "\n" not in err, err
    return err


def words(n: int, start: int = 1) -> str:
    """n words of the tiny tokenizer's vocabulary ('w1 w2 ...'): one token each."""
    return " ".join(f"w{start + i % 80}" for i in range(n))


@pytest.mark.parametrize("content, message", [
    (b"w1 w2 w3 " * 50 + b"\x00\x01\x02" + b"w4 " * 100, "not a text file \\(it contains NUL bytes, the first at byte 450\\)"),
    (bytes(range(128, 256)) * 8, "not UTF-8 text \\(byte 0 cannot be decoded\\)"),
])
def test_binary_files_are_refused(tmp_path, capsys, tiny_folder, content, message):
    path = tmp_path / "blob.bin"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_text(path)
    out = tmp_path / "scan"
    err = error_of(capsys, ["scan", "--model", str(tiny_folder), "--detectors", "sink", "--text", str(path),
                            "--out", str(out)])
    assert "blob.bin is not" in err and not out.exists()


def test_text_with_a_bom_and_unicode_still_reads(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("\ufeffCafé — naïve text\n\nsecond paragraph".encode("utf-8"))
    assert read_text(path).startswith("Café")


def test_a_paragraph_longer_than_the_context_is_cut_to_what_is_used(tmp_path, capsys, tiny_folder):
    path = tmp_path / "long.txt"
    path.write_text(words(600) + "\n\n" + words(120, start=3) + "\n")  # tiny model's context: 512 tokens
    assert len(paragraphs(path, min_chars=300)[0].split()) == 600
    out = tmp_path / "scan"
    assert main(["scan", "--model", str(tiny_folder), "--detectors", "sink", "--text", str(path), "--out", str(out),
                 "--device", "cpu"]) == 0
    atlas = Atlas.load(out)
    sink = atlas.meta["stimuli"]["sink"]
    assert {k: v for k, v in sink.items() if k != "memory"} == {"kind": "text", "tokens": 64, "batch": 2, "bos": True}
    assert sink["memory"]["mode"] == "exact"
    assert atlas.table["sink_rate"].between(0, 1).all()
    definition = atlas.meta["columns"]["sink_rate"]["definition"]
    assert "2 prompts of 64 tokens starting with BOS: paragraphs of a text file" in definition


def test_atlas_definitions_state_the_settings_used(tmp_path, tiny_folder):
    out = tmp_path / "scan"
    assert main(["scan", "--model", str(tiny_folder), "--detectors", "induction,previous_token,copying,sink",
                 "--seq-len", "20", "--batch", "3", "--repeats", "3", "--seed", "4", "--out", str(out),
                 "--device", "cpu"]) == 0
    columns = json.loads((out / "atlas.json").read_text())["columns"]
    repeat = "BOS + 20 random tokens x 3, batch 3, seed 4"
    assert repeat in columns["induction"]["definition"] and repeat in columns["previous_token"]["definition"]
    assert "50 random tokens" not in json.dumps(columns) and "batch 10" not in json.dumps(columns)
    assert "last 12 queries of 3 repeated-token sequences" in columns["copying"]["definition"]
    assert "20 prompts of 64 tokens starting with BOS: random tokens" in columns["sink_rate"]["definition"]
