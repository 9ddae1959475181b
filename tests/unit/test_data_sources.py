"""sources.read_records: every format round trip, and one-line errors naming file and row."""

import json

import pytest

from dpolab.data.sources import iter_records, read_records, sniff_delimiter
from dpolab.data.types import DataError

ROWS = [{"prompt": "p1", "chosen": "a", "rejected": "b"}, {"prompt": "p2", "chosen": "c", "rejected": "d"}]


def _records(path, **kw):
    return list(read_records(str(path), **kw))


def test_jsonl_round_trip_and_blank_lines(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n")
    assert _records(p) == [(1, ROWS[0]), (3, ROWS[1])]  # physical line numbers


def test_jsonl_bad_line_names_file_and_row(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(DataError) as e:
        _records(p)
    assert e.value.row == 2 and str(p) in str(e.value) and "row 2" in str(e.value) and "\n" not in str(e.value)


def test_jsonl_invalid_utf8_names_row(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + b'{"prompt": "\xff\xfe"}\n')
    with pytest.raises(DataError, match=r"row 2: invalid UTF-8"):
        _records(p)
    kinds = [type(r).__name__ for _, r in iter_records(str(p))]
    assert kinds == ["dict", "DataError"]  # the tolerant iterator keeps going


def test_json_list_and_data_key(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(ROWS))
    b.write_text(json.dumps({"data": ROWS}))
    assert _records(a) == _records(b) == [(1, ROWS[0]), (2, ROWS[1])]
    (tmp_path / "c.json").write_text('{"x": 1}')
    with pytest.raises(DataError, match="expected a JSON list"):
        _records(tmp_path / "c.json")


@pytest.mark.parametrize("name,delim", [("d.csv", ","), ("d.tsv", "\t"), ("tab_named.csv", "\t")])
def test_csv_tsv_round_trip_with_sniffed_delimiter(tmp_path, name, delim):
    p = tmp_path / name
    lines = [delim.join(["prompt", "chosen", "rejected"])] + [delim.join(r.values()) for r in ROWS]
    p.write_text("\n".join(lines) + "\n")
    assert _records(p) == [(1, ROWS[0]), (2, ROWS[1])]


def test_csv_quoted_newline_and_wrong_field_count(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('prompt,chosen,rejected\n"multi\nline",a,b\nx,y\n')
    recs = list(iter_records(str(p)))
    assert recs[0] == (1, {"prompt": "multi\nline", "chosen": "a", "rejected": "b"})
    assert recs[1][0] == 2 and isinstance(recs[1][1], DataError) and "expected 3 fields, got 2" in str(recs[1][1])


def test_csv_invalid_utf8_names_row(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_bytes(b"prompt\tchosen\trejected\nok\ta\tb\nbad\t\xc3\x28\tb\n")
    with pytest.raises(DataError, match=r"d.tsv: row 2: invalid UTF-8"):
        _records(p)


def test_sniff_delimiter_prefers_header_evidence():
    assert sniff_delimiter("\tid\tsentence1\tsentence2\tis_duplicate", ",") == "\t"
    assert sniff_delimiter("a,b,c", "\t") == ","
    assert sniff_delimiter("single", ",") == ","


def test_parquet_round_trip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), p)
    assert _records(p) == [(1, ROWS[0]), (2, ROWS[1])]


def test_saved_hf_dataset_folder(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    assert _records(tmp_path / "ds") == [(1, ROWS[0]), (2, ROWS[1])]
    datasets.DatasetDict({"test": datasets.Dataset.from_list(ROWS[:1])}).save_to_disk(str(tmp_path / "dd"))
    assert _records(tmp_path / "dd", split="test") == [(1, ROWS[0])]
    with pytest.raises(DataError, match="no split 'train'"):
        _records(tmp_path / "dd", split="train")


def test_missing_file_names_path(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        _records(tmp_path / "nope.jsonl")


def test_memory_source():
    assert list(read_records(ROWS)) == [(1, ROWS[0]), (2, ROWS[1])]
    with pytest.raises(DataError, match=r"<memory>: row 1: expected a dict"):
        list(read_records(["x"]))


def test_hub_name_failure_is_a_clear_data_error(monkeypatch):
    import datasets

    def fail(name, split=None):
        raise ConnectionError("offline\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(
        DataError,
        match=r"^someone/prefs: no such local file, and loading it as a Hugging Face hub dataset "
        r"\(split='test'\) failed: offline$",
    ):
        list(read_records("someone/prefs", split="test"))
