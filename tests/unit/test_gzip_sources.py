"""Gzipped inputs (.jsonl.gz, .json.gz, .csv.gz, .tsv.gz) read like the plain files: same records, same row numbers,
same one-line errors naming the (.gz) file; a corrupt or truncated gzip file is a one-line DataError naming it.
(At 58b3a56 every one of them was refused as "unsupported file type '.gz'".)"""

import gzip
import json

import pytest

from dpolab.data.dataset import load_preference_data
from dpolab.data.sources import iter_records, read_records
from dpolab.data.types import DataError
from dpolab.models.tokenizer import build_char_tokenizer

ROWS = [{"prompt": "p1", "chosen": "a", "rejected": "b"}, {"prompt": "p2", "chosen": "c", "rejected": "d"}]
PLAIN = {
    "d.jsonl": (json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n").encode(),  # blank line: rows 1 and 3
    "d.json": json.dumps(ROWS).encode(),
    "d.csv": b'prompt,chosen,rejected\n"multi\nline",a,b\np2,c,d\n',
    "d.tsv": b"prompt\tchosen\trejected\np1\ta\tb\np2\tc\td\n",
}


def _pair(tmp_path, name, raw):
    plain, gz = tmp_path / name, tmp_path / (name + ".gz")
    plain.write_bytes(raw)
    gz.write_bytes(gzip.compress(raw))
    return plain, gz


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_gzip_reads_like_the_plain_file(tmp_path, name):
    plain, gz = _pair(tmp_path, name, PLAIN[name])
    got = list(read_records(str(gz)))
    assert got == list(read_records(str(plain))) and len(got) == 2
    if name == "d.jsonl":
        assert [row for row, _ in got] == [1, 3]  # physical line numbers, as for the plain file


def test_gzip_with_an_upper_case_suffix_and_a_bom(tmp_path):
    p = tmp_path / "D.JSONL.GZ"
    p.write_bytes(gzip.compress(b"\xef\xbb\xbf" + json.dumps(ROWS[0]).encode() + b"\n"))
    assert list(read_records(str(p))) == [(1, ROWS[0])]


@pytest.mark.parametrize(
    "name, raw, match",
    [
        ("d.jsonl", json.dumps(ROWS[0]).encode() + b"\n{not json\n", r"row 2: invalid JSON"),
        ("d.jsonl", json.dumps(ROWS[0]).encode() + b'\n{"prompt": "\xff"}\n', r"row 2: invalid UTF-8"),
        ("d.csv", b"prompt,chosen,rejected\nx,y\n", r"row 1: expected 3 fields, got 2"),
        ("d.json", b"[1,", r"invalid JSON at line 1"),
    ],
)
def test_row_errors_name_the_gz_file_and_the_same_row(tmp_path, name, raw, match):
    plain, gz = _pair(tmp_path, name, raw)
    for path in (plain, gz):
        with pytest.raises(DataError, match=match) as e:
            list(read_records(str(path)))
        assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)


def _corrupt_files(tmp_path):
    big = "".join(json.dumps(r) + "\n" for r in ROWS * 3000).encode()
    packed = gzip.compress(big)
    flipped = bytearray(gzip.compress(json.dumps(ROWS).encode()))
    flipped[-8] ^= 1  # the CRC
    files = {
        "truncated.jsonl.gz": packed[: len(packed) // 2],
        "not-gzip.jsonl.gz": big[:200],
        "bad-crc.json.gz": bytes(flipped),
        "truncated.csv.gz": gzip.compress(b"prompt,chosen,rejected\n" + b"p,a,b\n" * 5000)[:100],
        "garbage.tsv.gz": b"\x1f\x8b\x08\x00" + b"\xff" * 64,
    }
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
    return [tmp_path / n for n in files]


def test_corrupt_gzip_is_a_one_line_error_naming_the_file(tmp_path):
    for path in _corrupt_files(tmp_path):
        with pytest.raises(DataError, match="corrupt or truncated gzip file") as e:
            list(iter_records(str(path)))  # file-level: raised even by the tolerant iterator
        msg = str(e.value)
        assert msg.startswith(f"{path}: ") and "\n" not in msg and e.value.row is None, msg


def test_corrupt_gzip_stops_a_skip_mode_load_with_one_line(tmp_path):
    tok = build_char_tokenizer()
    path = _corrupt_files(tmp_path)[0]
    with pytest.raises(DataError, match=r"truncated\.jsonl\.gz: corrupt or truncated gzip file after line \d+"):
        load_preference_data(str(path), tok, on_error="skip", log=lambda m: None)


def test_load_preference_data_from_gzip(tmp_path):
    tok = build_char_tokenizer()
    _, gz = _pair(tmp_path, "d.jsonl", PLAIN["d.jsonl"])
    logs = []
    pairs, skips = load_preference_data(str(gz), tok, log=logs.append)
    assert (
        len(pairs) == 2
        and skips.total == 0
        and logs
        == [
            f"{gz}: 2 pairs loaded; no rows skipped; truncation cut no "
            "prompt or response of 2 rows (max_length 512, max_prompt_length 256)"
        ]
    )


def test_unsupported_and_missing_gz_files(tmp_path):
    (tmp_path / "d.parquet.gz").write_bytes(b"x")
    with pytest.raises(DataError, match=r"unsupported file type '\.parquet\.gz' \(expected one of .*\.jsonl\.gz"):
        list(read_records(str(tmp_path / "d.parquet.gz")))
    with pytest.raises(DataError, match=r"missing\.jsonl\.gz: file not found$"):
        list(read_records(str(tmp_path / "missing.jsonl.gz")))
    with pytest.raises(DataError, match=r"nested/x\.csv\.gz: file not found$"):  # not tried as a hub name
        list(read_records("nested/x.csv.gz"))


def test_a_too_long_file_name_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot open"):
        list(read_records(str(tmp_path / ("x" * 300 + ".jsonl"))))
