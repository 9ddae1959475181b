"""Hostile inputs, property-based: every loader, every format, arbitrary junk.

For records drawn by hypothesis (missing and extra fields, wrong types, empty and huge strings, lone
surrogates, chat messages with bad roles or contents, identical responses, prompts longer than max_length,
huge and non-finite numbers) plus raw junk lines (broken JSON, invalid UTF-8, deep nesting, unbalanced CSV
quotes), written as JSONL / JSON / CSV / TSV / Parquet or passed in memory:

- ``on_error="raise"``: the loader returns pairs or raises a one-line :class:`DataError` naming the source (and
  the row for a row-level problem); never another exception;
- ``on_error="skip"``: it never raises for a row-level problem, and every record is either loaded or counted;
- every loaded pair fits ``max_length`` with non-empty responses, and a tiny model + DPO loss on it is finite.
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpolab.data.dataset import load_preference_data, load_sft_data
from dpolab.data.types import DataError

pytest.importorskip("pyarrow")

MAX_LEN = 24
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def tok():
    from dpolab.config import ModelConfig
    from dpolab.models.load import load_tokenizer

    return load_tokenizer(ModelConfig())


# -- strategies ------------------------------------------------------------------------------------
any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=30)  # incl. lone surrogates
texts = st.one_of(
    st.just(""),
    any_text,
    st.sampled_from(["same", "Q: 1+2\nA: ", " ", "\x00", "\ufeff"]),
    st.builds(lambda n, c: c * n, st.integers(30, 3000), st.sampled_from(["x", "é", "😀 "])),
)
roles = st.sampled_from(["system", "user", "assistant", "tool", "robot", "", "USER", 5, None])
message = st.one_of(
    st.fixed_dictionaries({"role": roles, "content": st.one_of(texts, st.integers(), st.none())}),
    st.fixed_dictionaries({"role": roles}),
    st.text(max_size=3),
    st.integers(),
)
messages = st.lists(message, max_size=3)
numbers = st.one_of(
    st.integers(),
    st.just(10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1.5", "nan", "inf", "x", ""]),
)
values = st.one_of(
    texts,
    texts,
    messages,
    numbers,
    st.none(),
    st.booleans(),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
FIELDS = ["prompt", "chosen", "rejected", "rm_margin", "completion", "text", "messages", "extra"]


@st.composite
def records(draw):
    rec = {k: draw(values) for k in FIELDS if draw(st.booleans())}
    if draw(st.booleans()):  # often a plausible row, so the happy path and the skips are exercised too
        rec.update(prompt=draw(texts), chosen=draw(texts), rejected=draw(texts), rm_margin=draw(numbers))
    if draw(st.integers(0, 5)) == 0:
        rec["rejected"] = rec.get("chosen", "same")  # identical chosen and rejected
    return rec


junk_lines = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"{",
            b"[1, 2]",
            b'{"prompt": "a", "chosen": "b"',
            b"\xff\xfe\xfa",
            b'"just a string"',
            b"null",
            b"[" * 5000 + b"]" * 5000,
            b'{"chosen": "\xc3\x28", "rejected": "x"}',
            b'a,"unclosed,b',
            b"\x00\x00",
        ]
    ),
)


def _str(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=True)


def _write(fmt: str, folder: Path, recs, junk) -> Path:
    path = folder / f"data.{fmt}"
    if fmt == "jsonl":
        lines = [json.dumps(r).encode() for r in recs]  # ensure_ascii: lone surrogates become \\udXXX escapes
        for i, j in enumerate(junk):
            lines.insert(i * 2 % (len(lines) + 1), j.replace(b"\n", b" "))
        path.write_bytes(b"\n".join(lines) + b"\n")
    elif fmt == "json":
        path.write_text(json.dumps(recs))
    elif fmt in ("csv", "tsv"):
        with open(path, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
            w = csv.writer(f, delimiter="\t" if fmt == "tsv" else ",")
            w.writerow(FIELDS)
            for r in recs:
                w.writerow([_str(r[k]) if k in r else "" for k in FIELDS])
        with open(path, "ab") as f:
            for j in junk:
                f.write(j + b"\n")
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {k: [(_str(r[k]) if k in r else None) for r in recs] for k in FIELDS}
        cols = {k: [None if v is None else v.encode("utf-8", "replace").decode() for v in vs] for k, vs in cols.items()}
        pq.write_table(pa.table(cols), path)
    return path


def _check_error(e: DataError, source: str) -> None:
    msg = str(e)
    assert "\n" not in msg and "\r" not in msg, msg
    assert msg.startswith(source), msg


def _check_pairs(pairs) -> None:
    for p in pairs:
        assert p.chosen_ids and p.rejected_ids
        assert len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) <= MAX_LEN


def _load(kind, source, tok, on_error):
    opts = dict(max_length=MAX_LEN, on_error=on_error, log=lambda s: None)
    if kind == "sft":
        return load_sft_data(source, tok, **opts)
    return load_preference_data(source, tok, extras=("rm_margin",) if kind == "madpo" else (), **opts)


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "tsv", "parquet", "memory"])
@pytest.mark.parametrize("kind", ["preference", "madpo", "sft"])
@SETTINGS
@given(recs=st.lists(records(), max_size=6), junk=st.lists(junk_lines, max_size=2))
def test_every_loader_gives_pairs_a_one_line_error_or_counted_skips(tok, fmt, kind, recs, junk):
    with tempfile.TemporaryDirectory() as d:
        src = recs if fmt == "memory" else _write(fmt, Path(d), recs, junk if fmt in ("jsonl", "csv", "tsv") else [])
        name = "<memory>" if fmt == "memory" else str(src)
        try:
            out, skips = _load(kind, src, tok, "raise")
            _check_pairs(out) if kind != "sft" else None
        except DataError as e:
            _check_error(e, name)
            assert e.row is not None or e.field is None  # a field is always named with its row
        try:
            out, skips = _load(kind, src, tok, "skip")
        except DataError as e:  # only file-level problems may still stop a skip-mode load
            _check_error(e, name)
            assert e.row is None, str(e)
            return
        if kind != "sft":
            _check_pairs(out)
        if fmt in ("memory", "json", "parquet") or (fmt == "jsonl" and not junk):
            assert len(out) + skips.total == len(recs), (len(out), skips.counts, len(recs))  # nothing vanishes


@pytest.fixture(scope="module")
def tiny_model(tok):
    from dpolab.config import LoraConfig, ModelConfig
    from dpolab.models.load import load_policy

    return load_policy(
        ModelConfig(tiny={"n_layer": 1, "n_embd": 16, "n_head": 2}), LoraConfig(), tok, seed=0, max_positions=1024
    )


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(recs=st.lists(records(), min_size=1, max_size=6))
def test_loaded_pairs_give_a_finite_loss(tok, tiny_model, recs):
    """Whatever survives loading trains: finite log-probs, DPO and MADPO losses (policy != reference)."""
    from dpolab.data.collate import collate_preference
    from dpolab.losses import CompositeLoss
    from dpolab.models.preference_logps import preference_outputs

    pairs, _ = _load("madpo", recs, tok, "skip")
    if not pairs:
        return
    batch = collate_preference(pairs, tok.pad_token_id)
    batch.index = torch.arange(len(pairs))

    class Shifted:  # a reference that differs from the policy, so the loss is not trivially ln 2
        mode = "copy"

        def logps(self, b, autocast=None):
            out = preference_outputs(tiny_model, None, b, need_tokens=False)
            return out.policy_chosen_logps.detach() - 3.0, out.policy_rejected_logps.detach() + 1.0

    loss = CompositeLoss([{"name": "dpo"}, {"name": "madpo"}, {"name": "sft", "weight": 0.1}])
    out = preference_outputs(tiny_model, Shifted(), batch, need_tokens=False, extras=("rm_margin",))
    objective, metrics, _ = loss(out)
    assert math.isfinite(objective.item()), metrics
    objective.backward()
    assert all(torch.isfinite(p.grad).all() for p in tiny_model.parameters() if p.grad is not None)
    tiny_model.zero_grad(set_to_none=True)


def test_the_bugs_hypothesis_found_stay_fixed(tok, tmp_path):
    """Each of these crashed with a traceback before (TypeError, OverflowError, RecursionError, csv.Error)."""
    cases = {
        "surrogate.jsonl": b'{"prompt": "a", "chosen": "\\ud800x", "rejected": "c"}\n',
        "huge.jsonl": b'{"prompt": "a", "chosen": "b", "rejected": "c", "rm_margin": 1' + b"0" * 400 + b"}\n",
        # finite as a Python float, infinite in the engine's float32: hypothesis found MADPO raising on it
        "huge32.jsonl": b'{"prompt": "a", "chosen": "b", "rejected": "c", "rm_margin": 3.4028235677973366e+38}\n',
        "deep.jsonl": b'{"prompt": ' + b"[" * 100000 + b"]" * 100000 + b"}\n",
        "deep.json": b"[" * 100000 + b"]" * 100000,
        "bigfield.csv": b"prompt,chosen,rejected\na," + b"x" * 200000 + b",c\n",
        "msg.jsonl": b'{"prompt": [{"role": "user", "content": "\\udcff"}], "chosen": "b", "rejected": "c"}\n',
    }
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
        src = str(tmp_path / name)
        try:
            out, _ = load_preference_data(
                src, tok, extras=("rm_margin",) if name.startswith("huge") else (), max_length=64, log=lambda s: None
            )
        except DataError as e:
            _check_error(e, src)
            assert ("row 1" in str(e)) is (name != "deep.json"), str(e)
        else:
            assert name == "bigfield.csv" and len(out) == 1  # a long field is data, not an error


@pytest.mark.parametrize(
    "raw, where",
    [
        (b'{"prompt": "a", "chosen": "b\xff", "rejected": "c"}\n', "row 1: invalid UTF-8"),
        (
            b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "\\ud800", "rejected": "c"}\n',
            "row 2: field 'chosen'",
        ),
        (
            b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n\n{"prompt": ' + b"[" * 50000 + b"\n",
            "row 3: invalid JSON",
        ),
        (
            b'{"prompt": [{"role": "robot", "content": "hi"}], "chosen": "b", "rejected": "c"}\n',
            "row 1: field 'prompt': message 0: unknown role",
        ),
    ],
)
def test_cli_bad_file_is_one_error_line_and_exit_2(tmp_path, capsys, raw, where):
    from dpolab.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(raw)
    rc = main(["train", f"data.train={bad}", f"output.dir={tmp_path / 'r'}", "output.progress=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith(f"error: {bad}: {where}"), err[-1]
    assert not any("Traceback" in line for line in err)
