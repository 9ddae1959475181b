"""The sonnet task on synthetic files in the real layout (9-line header, CRLF, a number alone on a line):
parsing, SFT and dev rows, the model-free rejected constructions, and the task_rows wiring."""

import pytest

from dpolab.config import DataConfig
from dpolab.data.dataset import load_preference_data, load_sft_data
from dpolab.data.types import DataError
from dpolab.engine.data_setup import task_rows
from dpolab.models.tokenizer import build_char_tokenizer
from dpolab.tasks import sonnets as S

CHAR = build_char_tokenizer()
HEADER = [
    "Sonnets",
    "by William Shakespeare",
    "Edited by Barbara A. Mowat and Paul Werstine",
    "  with Michael Poston and Rebecca Niles",
    "Folger Shakespeare Library",
    "https://shakespeare.folger.edu/shakespeares-works/shakespeares-sonnets/",
    "Created on Jul 31, 2015, from FDT version 0.9.0.1",
    "",
    "",
]


def sonnet(n, k=14):
    return [
        f"Line {i} of sonnet {n}, a verse{',' if i % 2 else '.'}" if i < 13 else f"  Couplet {i} of {n}."
        for i in range(1, k + 1)
    ]


def render(sonnets, eol="\r\n", first_lines=None):
    out = list(HEADER) + ["", ""]
    for n, lines in sonnets.items():
        out += [str(n), ""] + (lines[:first_lines] if first_lines else lines) + [""]
    return eol.join(out) + eol


@pytest.fixture
def folder(tmp_path):
    train = {n: sonnet(n, 15 if n == 2 else 14) for n in range(1, 6)}
    dev = {n: sonnet(n) for n in (132, 133, 134)}
    (tmp_path / "sonnets.txt").write_bytes(render(train).encode())
    (tmp_path / "sonnets_held_out_dev.txt").write_bytes(render(dev, "\n", first_lines=3).encode())
    (tmp_path / "TRUE_sonnets_held_out_dev.txt").write_bytes(render(dev, "\n").encode())
    return tmp_path


def test_parse_handles_header_crlf_and_indentation(folder):
    s = S.parse_sonnets(folder / "sonnets.txt")
    assert list(s) == [1, 2, 3, 4, 5]
    assert len(s[1]) == 14 and len(s[2]) == 15
    assert s[1][0] == "Line 1 of sonnet 1, a verse," and s[1][-1] == "  Couplet 14 of 1."  # indentation kept, no '\r'
    assert not any("\r" in line or "Shakespeare" in line for lines in s.values() for line in lines)
    assert S.parse_sonnets("x", text="\ufeff7\r\rOne\rTwo\r") == {7: ["One", "Two"]}  # BOM and bare CR


def test_parse_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        S.parse_sonnets(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="no sonnets"):
        S.parse_sonnets("x", text="just a header\nand prose\n")
    with pytest.raises(DataError, match="appears twice"):
        S.parse_sonnets("x", text="1\n\na\n\n1\n\nb\n")
    with pytest.raises(DataError, match="no lines"):
        S.parse_sonnets("x", text="1\n\n2\n\nb\n")


def test_sft_and_dev_rows(folder):
    rows = S.sft_rows(folder / "sonnets.txt")
    assert len(rows) == 5
    r = rows[0]
    assert r["prompt"] == "\n".join(sonnet(1)[:3]) + "\n" and r["completion"] == "\n".join(sonnet(1)[3:])
    assert r["n_lines"] == 11 and rows[1]["n_lines"] == 12 and r["id"] == "sonnet-1"
    dev = S.dev_rows(folder / "sonnets_held_out_dev.txt", folder / "TRUE_sonnets_held_out_dev.txt")
    assert [d["number"] for d in dev] == [132, 133, 134] and dev[0]["reference"] == "\n".join(sonnet(132)[3:])
    toks, skips = load_sft_data(rows, CHAR, max_length=1024, log=lambda m: None)
    assert len(toks) == 5 and skips.total == 0


def test_dev_prompt_must_match_reference(folder, tmp_path):
    bad = tmp_path / "bad_prompts.txt"
    bad.write_text(render({132: ["Not the", "right", "start"]}, "\n"), encoding="utf-8")
    with pytest.raises(DataError, match="does not match"):
        S.dev_rows(bad, folder / "TRUE_sonnets_held_out_dev.txt")
    bad.write_text(render({999: sonnet(999)[:3]}, "\n"), encoding="utf-8")
    with pytest.raises(DataError, match="no reference"):
        S.dev_rows(bad, folder / "TRUE_sonnets_held_out_dev.txt")


def test_model_free_rejected_constructions(folder):
    rows = S.sft_rows(folder / "sonnets.txt")
    shuf = S.shuffled_rejected_rows(rows, seed=1)
    assert shuf == S.shuffled_rejected_rows(rows, seed=1) and shuf != S.shuffled_rejected_rows(rows, seed=2)
    for r, p in zip(rows, shuf):
        assert p["chosen"] == r["completion"] and p["rejected"] != p["chosen"]
        assert sorted(p["rejected"].split("\n")) == sorted(p["chosen"].split("\n"))
        assert p["rejected_kind"] == "shuffle"
    other = S.other_sonnet_rejected_rows(rows, seed=0)
    assert all(p["donor_number"] != p["number"] and p["rejected"] != p["chosen"] for p in other)
    assert sorted(p["rejected"] for p in other) == sorted(r["completion"] for r in rows)  # every continuation used once
    pairs, skips = load_preference_data(shuf + other, CHAR, max_length=1024, log=lambda m: None)
    assert len(pairs) == 10 and skips.total == 0
    with pytest.raises(DataError, match="rejected must be"):
        S.model_free_rejected_rows(rows, "sampled")
    with pytest.raises(ValueError):
        S.other_sonnet_rejected_rows(rows[:1])


def test_cut_lines():
    assert S.cut_lines("a\nb\nc\nd", 2) == "a\nb" and S.cut_lines("a\n", 5) == "a"


def test_task_rows_wiring(folder):
    tr, ev = task_rows(DataConfig(task="sonnets", task_args={"path": str(folder)}), "sft", 0)
    assert len(tr) == 5 and len(ev) == 3 and "completion" in tr[0]
    tr, ev = task_rows(
        DataConfig(task="sonnets", task_args={"path": str(folder), "rejected": "other", "n_train": 3}), "preference", 0
    )
    assert len(tr) == 3 and all(r["rejected_kind"] == "other" for r in tr + ev)
    with pytest.raises(DataError, match="needs data.task_args.path"):
        task_rows(DataConfig(task="sonnets", task_args={}), "sft", 0)
