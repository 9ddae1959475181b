"""Study S1's real data (skipped when ../shared/data is absent): the Quora dev TSV as the paraphrase task
(20,212 usable pairs, the 2 malformed rows reported, disjoint splits) and the sonnets (131 train, 12 dev)."""

import pytest

from dpolab.config import DataConfig
from dpolab.data.dataset import load_preference_data
from dpolab.engine.data_setup import task_rows
from dpolab.models.tokenizer import build_char_tokenizer, gpt2_tokenizer_offline
from dpolab.tasks import paraphrase as P
from dpolab.tasks import pretrain_text as T
from dpolab.tasks import sonnets as S

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def quora(shared_data):
    logs = []
    return P.load_pairs(str(shared_data / "quora-paraphrase" / "quora-dev.csv"), log=logs.append), logs


def test_quora_pairs_and_malformed_rows_reported(quora):
    d, logs = quora
    assert len(d.pairs) == 20212
    assert d.skips.counts == {"invalid row (field 'is_duplicate')": 2}
    assert len(d.bad_rows) == 2
    assert "row 2576" in d.bad_rows[0] and "65479" in d.bad_rows[0]
    assert "row 14221" in d.bad_rows[1] and "264614" in d.bad_rows[1]
    assert sum(p.label for p in d.pairs) == 7585 and sum(1 - p.label for p in d.pairs) == 12627
    assert any("row 2576" in m for m in logs) and "20212 question pairs loaded" in logs[-1]


@pytest.mark.parametrize("group", ["pair", "question"])
def test_quora_splits_are_disjoint(quora, group):
    d, _ = quora
    sp = P.split_pairs(d.pairs, seed=0, group=group)
    assert sum(len(v) for v in sp.values()) == 20212
    assert 1900 <= len(sp["dev"]) <= 2150 and 1900 <= len(sp["test"]) <= 2150
    keys = {s: {p.key for p in v} for s, v in sp.items()}
    assert not (keys["train"] & keys["dev"]) and not (keys["train"] & keys["test"]) and not (keys["dev"] & keys["test"])
    ids = {s: {p.id for p in v} for s, v in sp.items()}
    assert sum(len(v) for v in ids.values()) == 20212
    if group == "question":
        qs = {s: {q for p in v for q in p.key} for s, v in sp.items()}
        assert not (qs["train"] & qs["dev"]) and not (qs["train"] & qs["test"]) and not (qs["dev"] & qs["test"])


def test_quora_task_rows_tokenise_to_one_label_token(shared_data):
    gpt2 = gpt2_tokenizer_offline()
    args = {"path": str(shared_data / "quora-paraphrase" / "quora-dev.csv"), "n_train": 200, "n_eval": 50}
    tr, ev = task_rows(DataConfig(task="paraphrase", task_args=args), "preference", 0, tokenizer=gpt2)
    assert len(tr) == 200 and len(ev) == 50
    pairs, skips = load_preference_data(tr, gpt2, max_length=256, log=lambda m: None)
    assert len(pairs) == 200 and skips.total == 0
    assert all(len(p.chosen_ids) == 2 and {p.chosen_ids[0], p.rejected_ids[0]} == {3763, 645} for p in pairs)
    assert not {r["id"] for r in tr} & {r["id"] for r in ev}


def test_sonnets_real_files(shared_data):
    root = shared_data / "shakespeare-sonnets"
    train = S.sft_rows(root / "sonnets.txt")
    assert len(train) == 131 and [r["number"] for r in train] == list(range(1, 132))
    assert train[0]["prompt"].startswith("From fairest creatures we desire increase,\n")
    assert {r["number"]: r["n_lines"] for r in train if r["n_lines"] != 11} == {99: 12, 126: 9}
    assert not any("\r" in r["prompt"] + r["completion"] or "Folger" in r["prompt"] for r in train)
    dev = S.dev_rows(root / "sonnets_held_out_dev.txt", root / "TRUE_sonnets_held_out_dev.txt")
    assert len(dev) == 12 and [r["number"] for r in dev] == list(range(132, 144))
    assert all(r["n_lines"] == 11 and r["reference"] for r in dev)
    assert len(S.parse_sonnets(root / "sonnets_held_out_dev.txt")) == 12
    tr, ev = task_rows(DataConfig(task="sonnets", task_args={"path": str(root)}), "preference", 0)
    assert len(tr) == 131 and len(ev) == 12
    pairs, skips = load_preference_data(tr, build_char_tokenizer(), max_length=1024, log=lambda m: None)
    assert len(pairs) == 131 and skips.total == 0  # no sonnet is cut: longest ~ 600 characters


def test_tiny_shakespeare_windows(shared_data):
    tr, ev = T.pretrain_rows(shared_data / "tiny-shakespeare" / "input.txt", chunk_chars=256, n_eval=64)
    assert len(ev) == 64 and len(tr) > 4000 and max(len(r["text"]) for r in tr + ev) <= 256
    assert tr[0]["text"].startswith("First Citizen:")
