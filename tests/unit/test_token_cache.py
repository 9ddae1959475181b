"""The tokenised-data cache: a second run with the same settings skips tokenisation, any changed setting, tokenizer or
data file misses, entries are written atomically, ``data.cache=false`` turns it off, truncation counts are reported
on a hit."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import pytest

from dpolab.config import build_config
from dpolab.data.token_cache import cached_tokenisation, default_cache_dir
from dpolab.engine.data_setup import prepare_data
from dpolab.models.tokenizer import build_char_tokenizer

TOK = build_char_tokenizer()


def _data(tmp_path, *over, rows=12):
    f = tmp_path / "pairs.jsonl"
    if not f.exists():
        f.write_text(
            "".join(
                json.dumps({"prompt": f"question {i} " * 3, "chosen": f"good answer {i}", "rejected": f"bad {i}"})
                + "\n"
                for i in range(rows)
            )
        )
    return build_config(
        {"data": {"train": str(f), "max_length": 24, "cache_dir": str(tmp_path / "cache")}}, list(over)
    ).data


def _run(data, tok=TOK, mode="preference", seed=0):
    lines, calls = [], []
    from dpolab.engine import data_setup

    real = data_setup._prepare

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    data_setup._prepare = counting
    try:
        train, evals = prepare_data(data, tok, mode, seed, log=lines.append)
    finally:
        data_setup._prepare = real
    return train, evals, lines, len(calls)


def test_second_run_skips_tokenisation_and_reports_the_same_counts(tmp_path):
    data = _data(tmp_path)
    t1, e1, log1, n1 = _run(data)
    t2, e2, log2, n2 = _run(data)
    assert (n1, n2) == (1, 0)
    assert t1 == t2 and e1 == e2 and t1
    assert any("from the cache" in line for line in log2)
    truncation = [line for line in log1 if "trunc" in line.lower() or "loaded" in line]
    assert truncation and all(line in log2 for line in truncation)  # the counts are logged on a hit too
    files = os.listdir(tmp_path / "cache")
    assert len(files) == 1 and files[0].endswith(".json")  # no temporary file left behind


@pytest.mark.parametrize(
    "change",
    [
        "data.max_length=20",
        "data.max_prompt_length=5",
        "data.truncation_mode=keep_start",
        "data.columns={prompt: prompt, chosen: rejected, rejected: chosen}",
        "data.limit=5",
        "data.eval_fraction=0.25",
    ],
)
def test_any_changed_setting_misses(tmp_path, change):
    _run(_data(tmp_path))
    assert _run(_data(tmp_path, change))[3] == 1


def test_seed_kind_tokenizer_and_chat_template_miss(tmp_path):
    data = _data(tmp_path)
    _run(data)
    assert _run(data, seed=1)[3] == 1
    assert (
        _run(_data(tmp_path, "data.sft_from_pairs=chosen"), mode="sft")[3] >= 1
    )  # (computed: _prepare recurses once for pairs)
    assert _run(data, tok=build_char_tokenizer(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 "))[3] == 1
    assert _run(data, tok=build_char_tokenizer(chat_template=False))[3] == 1
    assert _run(data)[3] == 0  # the first one is still there


def test_a_changed_data_file_misses(tmp_path):
    data = _data(tmp_path)
    _run(data)
    f = tmp_path / "pairs.jsonl"
    f.write_text(f.read_text().replace("good", "fine"))
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    t, _, _, n = _run(data)
    assert n == 1 and any("fine" in TOK.decode(x.chosen_ids) for x in t)


def test_cache_off_and_unreadable_entries(tmp_path):
    data = _data(tmp_path, "data.cache=false")
    assert _run(data)[3] == 1 and _run(data)[3] == 1
    assert not (tmp_path / "cache").exists()
    data = _data(tmp_path)
    _run(data)
    entry = next((tmp_path / "cache").iterdir())
    entry.write_bytes(b"not a pickle")
    _, _, lines, n = _run(data)
    assert n == 1 and any("unreadable" in line for line in lines)
    assert _run(data)[3] == 0  # rewritten


def test_hub_names_and_default_file_tasks_are_not_cached(tmp_path):
    lines = []
    settings = asdict(_data(tmp_path))
    settings["train"] = "someone/some-hub-dataset"
    out = cached_tokenisation(
        settings, TOK, "preference", 0, lambda lg: ([1], [2]), log=lines.append, cache_dir=tmp_path / "c"
    )
    assert out == ([1], [2]) and "not a local file" in lines[0] and not (tmp_path / "c").exists()
    settings.update(train=None, task="paraphrase", task_args={})
    cached_tokenisation(settings, TOK, "preference", 0, lambda lg: ([], []), log=lines.append, cache_dir=tmp_path / "c")
    assert "reads a default file" in lines[1]


def test_generated_task_is_cached(tmp_path):
    data = build_config(
        {
            "data": {
                "task": "arithmetic",
                "task_args": {"n_train": 8, "n_eval": 2},
                "max_length": 48,
                "cache_dir": str(tmp_path / "cache"),
            }
        }
    ).data
    assert [_run(data)[3], _run(data)[3]] == [1, 0]


def test_default_folder_is_beside_the_pretrained_cache(monkeypatch, tmp_path):
    from dpolab.engine.pretrain import default_cache_dir as pretrained

    monkeypatch.setenv("DPOLAB_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "tokens" and pretrained().parent == default_cache_dir().parent
    monkeypatch.delenv("DPOLAB_CACHE")
    assert default_cache_dir().parent == pretrained().parent


def test_a_same_size_rewrite_with_the_same_mtime_misses(tmp_path):
    data = _data(tmp_path)
    _run(data)
    f = tmp_path / "pairs.jsonl"
    st = f.stat()
    f.write_text(f.read_text().replace("good", "nice"))  # same length
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size
    t, _, _, n = _run(data)
    assert n == 1 and any("nice" in TOK.decode(x.chosen_ids) for x in t)


def _swap_first_pair(entry):
    """Swap chosen and rejected of the first training pair, leaving the rest of the entry (and any checksum) as is."""
    if entry.suffix == ".pkl":  # the format before issue 32.3: a pickle, used as found
        import pickle

        stored = pickle.loads(entry.read_bytes())
        first = stored["train"][0]
        first.chosen_ids, first.rejected_ids = first.rejected_ids, first.chosen_ids
        entry.write_bytes(pickle.dumps(stored))
        return
    header, _, body = entry.read_bytes().partition(b"\n")
    stored = json.loads(body)
    first = stored["train"][0]
    first["chosen_ids"], first["rejected_ids"] = first["rejected_ids"], first["chosen_ids"]
    entry.write_bytes(header + b"\n" + json.dumps(stored, separators=(",", ":")).encode())


def _flip_one_bit(entry):
    data = bytearray(entry.read_bytes())
    data[len(data) * 2 // 3] ^= 0x01
    entry.write_bytes(bytes(data))


@pytest.mark.parametrize("tamper", [_swap_first_pair, _flip_one_bit])
def test_a_tampered_entry_is_recomputed_with_a_notice(tmp_path, tamper):
    data = _data(tmp_path)
    first, _, _, _ = _run(data)
    entry = next((tmp_path / "cache").iterdir())
    tamper(entry)
    train, _, lines, n = _run(data)
    assert n == 1, "a tampered entry was used"
    assert train == first  # the recomputed pairs, not the swapped ones
    assert any(str(entry) in line and "tokenising again" in line for line in lines), lines
    assert _run(data)[3] == 0 and _run(data)[0] == first  # rewritten, and good again


def test_entries_are_json_never_pickle(tmp_path):
    data = _data(tmp_path)
    _run(data)
    entry = next((tmp_path / "cache").iterdir())
    header, _, body = entry.read_bytes().partition(b"\n")
    import hashlib

    assert json.loads(header)["sha256"] == hashlib.sha256(body).hexdigest()
    assert json.loads(body)["train"][0]["type"] == "TokenizedPair"
    import pickle

    entry.write_bytes(pickle.dumps({"format": 2, "train": [], "eval": [], "log": []}))  # never unpickled
    _, _, lines, n = _run(data)
    assert n == 1 and any("tokenising again" in line for line in lines)
