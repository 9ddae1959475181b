"""train.mode=kto end to end on tiny models: unpaired rows from built-in pairs and from JSONL files (text and chat),
the step-0 invariant, accumulation over a step's KL estimate, evaluation, and what is refused (one-line errors)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from dpolab.config import build_config
from dpolab.data.types import DataError
from dpolab.engine import Trainer, TrainError
from dpolab.engine.objectives import get_objective
from dpolab.engine.objectives.kto import KTOObjective

pytestmark = pytest.mark.slow

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2}
ARITH = {"n_train": 24, "n_eval": 8, "n_terms": [2, 2], "max_value": 9}


def cfg(tmp_path, *overrides, data=None, name="run"):
    base = {
        "model": {"tiny": TINY},
        "data": data or {"task": "arithmetic", "task_args": ARITH, "max_length": 48, "unpaired_from_pairs": True},
        "train": {"mode": "kto", "batch_size": 8, "max_steps": 4, "lr": 5e-3, "schedule": "constant", "seed": 0},
        "kto": {"beta": 0.5},
        "eval": {"batch_size": 16},
        "output": {"dir": str(tmp_path / name), "progress": False},
    }
    return build_config(base, list(overrides))


def unpaired_file(path, n=40, seed=0):
    """Arithmetic prompts, each with ONE completion: the right sum (label true) or a wrong one (label false)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            a, b = rng.randrange(10), rng.randrange(10)
            good = i % 2 == 0
            f.write(
                json.dumps(
                    {
                        "prompt": f"{a}+{b}=",
                        "completion": str(a + b if good else a + b + rng.randrange(1, 5)),
                        "label": good,
                    }
                )
                + "\n"
            )
    return path


def test_kto_is_one_registered_objective():
    assert get_objective("kto") is KTOObjective and KTOObjective.data_kind.name == "unpaired"


def test_pairs_split_into_unpaired_rows_train_and_the_eval_margin_rises(tmp_path):
    t = Trainer(cfg(tmp_path, "train.max_steps=30", "data.eval_fraction=0"))
    assert len(t.train_data) == 2 * ARITH["n_train"]  # each pair: chosen (true) then rejected (false)
    assert [r.label for r in t.train_data[:4]] == [True, False, True, False]
    assert t.train_data[0].prompt_ids == t.train_data[1].prompt_ids
    assert t.reference.mode == "copy"  # reference.mode=auto is live for KTO
    t.eval_data = t.train_data  # measure on the training rows themselves (a live reference scores any set)
    s = t.fit()
    first, final = s["first_eval"], s["final_eval"]
    # step 0: policy == reference, so every log-ratio and the KL estimate are 0 and each row's loss is 1 - sigma(0)
    assert first["eval/loss"] == pytest.approx(0.5, abs=1e-7) and first["eval/kl"] == 0.0
    assert first["eval/rewards/chosen"] == 0.0 and first["eval/rewards/rejected"] == 0.0
    assert final["eval/rewards/margin"] > first["eval/rewards/margin"] + 0.1
    assert final["eval/loss"] < 0.5
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert len(train_rows) == 30 and all(r["loss"] == r["loss"] and abs(r["loss"]) < 10 for r in train_rows)
    assert {"kl", "rewards/chosen", "rewards/rejected", "rewards/margin"} <= set(train_rows[-1])
    assert (tmp_path / "run" / "final").is_dir()


def test_weighted_step0_loss(tmp_path):
    """Balanced labels, weights 1.5 / 0.5: the step-0 loss is the rows' mean of weight / 2."""
    t = Trainer(cfg(tmp_path, "kto.desirable_weight=1.5", "kto.undesirable_weight=0.5"))
    ev = t.evaluate()
    assert ev["eval/loss"] == pytest.approx((1.5 + 0.5) / 2 * 0.5, abs=1e-7)
    t.close()


def test_unpaired_jsonl_trains(tmp_path):
    path = unpaired_file(tmp_path / "kto.jsonl")
    data = {"train": str(path), "eval": str(path), "max_length": 32}
    s = Trainer(cfg(tmp_path, "train.max_steps=30", data=data)).fit()
    assert s["train_examples"] == 40
    assert s["final_eval"]["eval/rewards/margin"] > s["first_eval"]["eval/rewards/margin"] + 0.1


def test_chat_message_rows(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [
        {
            "prompt": [{"role": "user", "content": f"{a}+{a}?"}],
            "completion": [{"role": "assistant", "content": str(2 * a)}],
            "label": True,
        }
        for a in range(5)
    ]
    rows += [
        {"messages": [{"role": "user", "content": f"{a}+1?"}, {"role": "assistant", "content": str(a)}], "label": False}
        for a in range(5)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = Trainer(
        cfg(
            tmp_path,
            "train.max_steps=2",
            "train.batch_size=4",
            "data.eval_fraction=0.2",
            data={"train": str(path), "max_length": 64},
        )
    )
    assert sorted(r.label for r in t.train_data + t.eval_data) == [False] * 5 + [True] * 5
    s = t.fit()
    assert all(v == v for k, v in s["final_eval"].items() if k.startswith("eval/"))


def _flat_grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_gradient_accumulation_equals_big_batch_with_the_steps_kl(tmp_path):
    """The KL estimate is taken over the optimiser step (not per micro-batch, TRL's way): 2 micro-batches of 4 give
    the gradient of one batch of 8, with a policy away from its reference so the estimate is not 0."""
    big = Trainer(cfg(tmp_path, "train.batch_size=8", "train.grad_accum=1", name="big"))
    small = Trainer(cfg(tmp_path, "train.batch_size=4", "train.grad_accum=2", name="small"))
    grads, kls = [], []
    for t in (big, small):
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in t.policy.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        rows = t._accumulate()  # forward + backward of every micro-batch of step 0
        grads.append(_flat_grads(t.model))
        kls.append([float(r["kl"]) for r in rows])
        t.close()
    assert kls[0][0] > 0.01  # a real estimate, not the clamp at 0
    assert kls[1] == pytest.approx([kls[0][0]] * 2, abs=1e-6)  # one estimate for the whole step
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)
    # per micro-batch (TRL's way) the two halves would each have their own estimate, and a different gradient
    obj = small.objective
    halves = [obj.kl_estimate(small.model, [small.train_data[i] for i in m], 4) for m in small.plan.micro_batches(0, 0)]
    assert max(abs(float(h) - kls[0][0]) for h in halves) > 1e-3


def test_evaluation_takes_the_kl_over_the_whole_eval_set(tmp_path):
    t = Trainer(cfg(tmp_path, "train.max_steps=3"))
    t.fit()
    out = {}
    for bs in (3, 16):
        t.cfg.eval.batch_size = bs
        out[bs] = t.evaluate()
    assert out[3]["eval/kl"] > 0
    for k in ("eval/loss", "eval/kl", "eval/rewards/chosen", "eval/rewards/rejected"):
        assert out[3][k] == pytest.approx(out[16][k], abs=1e-6)


def test_lora_uses_the_adapter_disabled_reference(tmp_path):
    t = Trainer(cfg(tmp_path, "lora.enabled=true", "lora.r=4", "train.max_steps=1"))
    assert t.reference.mode == "adapter"
    s = t.fit()
    assert s["reference_mode"] == "adapter" and s["final_eval"]["eval/loss"] == s["final_eval"]["eval/loss"]


@pytest.mark.parametrize(
    "override, match",
    [
        ("eval.probes=true", "eval.probes .* not available in train.mode=kto"),
        ("reference.mode=precomputed", "reference.mode=precomputed is not available in train.mode=kto"),
        ("reference.mode=none", "reference.mode=none is not available"),
    ],
)
def test_refused_before_anything_loads(tmp_path, override, match):
    with pytest.raises(TrainError, match=match):
        Trainer(cfg(tmp_path, override))
    assert not (tmp_path / "run").exists()


def test_a_step_of_one_row_is_refused(tmp_path):
    with pytest.raises(TrainError, match=r"batch_size \* train.grad_accum \* processes >= 2"):
        Trainer(cfg(tmp_path, "train.batch_size=1"))
    Trainer(cfg(tmp_path, "train.batch_size=1", "train.grad_accum=2", "output.overwrite=true")).close()


def test_built_in_pairs_need_the_split_flag(tmp_path):
    with pytest.raises(DataError, match="data.unpaired_from_pairs=true"):
        Trainer(cfg(tmp_path, "data.unpaired_from_pairs=false"))


@pytest.mark.parametrize(
    "row, field, reason",
    [
        ({"prompt": "1+1=", "completion": "2"}, "label", "missing"),
        ({"prompt": "1+1=", "completion": "2", "label": 1}, "label", "expected true or false, got int 1"),
        ({"prompt": "1+1=", "completion": "2", "label": "yes"}, "label", "expected true or false, got str 'yes'"),
        ({"prompt": "1+1=", "completion": "2", "label": None}, "label", "expected true or false, got None"),
        ({"prompt": "1+1=", "chosen": "2", "rejected": "3"}, "completion", "data.unpaired_from_pairs=true"),
    ],
)
def test_bad_rows_are_one_line_errors_naming_file_row_and_field(tmp_path, row, field, reason):
    path = tmp_path / "bad.jsonl"
    good = {"prompt": "2+2=", "completion": "4", "label": True}
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as e:
        Trainer(cfg(tmp_path, data={"train": str(path), "max_length": 32}))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: row 2: field '{field}': ") and reason in msg


def test_csv_labels_are_text(tmp_path):
    from dpolab.data.dataset import load_unpaired_data
    from dpolab.models.tokenizer import build_char_tokenizer

    path = tmp_path / "kto.csv"
    path.write_text("prompt,completion,label\n1+1=,2,true\n1+1=,3,False\n")
    rows, _ = load_unpaired_data(str(path), build_char_tokenizer(), log=lambda s: None)
    assert [r.label for r in rows] == [True, False] and "label" not in rows[0].meta


def test_resumed_run_matches_uninterrupted_with_a_synced_reference(tmp_path):
    """Resume: the live reference comes back (moved by TR-DPO's reference.sync_every, TRL's sync_ref_model) and the
    run continues exactly like an uninterrupted one."""
    from safetensors.torch import load_file

    over = ["train.max_steps=4", "reference.mode=copy", "reference.sync_every=1", "reference.mixup_alpha=0.5"]
    s_full = Trainer(cfg(tmp_path, *over, name="full")).fit()
    part = cfg(tmp_path, *over, "output.save_every=2", name="part")
    t = Trainer(part)
    t.total_steps = 2  # a run stopped right after the step-2 checkpoint
    t.fit()
    (tmp_path / "part" / "DONE").unlink()
    s_part = Trainer(part, resume=True).fit()
    assert s_part["final_eval"]["eval/loss"] == s_full["final_eval"]["eval/loss"]
    assert s_part["final_eval"]["eval/kl"] == s_full["final_eval"]["eval/kl"]
    wa = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "part" / "final" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_synced_reference_needs_a_frozen_copy(tmp_path):
    with pytest.raises(TrainError, match="sync_every .* reference is adapter"):
        Trainer(cfg(tmp_path, "lora.enabled=true", "reference.mode=adapter", "reference.sync_every=1"))
    t = Trainer(cfg(tmp_path, "lora.enabled=true", "lora.r=4", "reference.sync_every=1", name="auto"))
    assert t.reference.mode == "copy"  # reference.mode=auto takes the frozen copy TR-DPO can move
    t.close()


def _launch_two(args):
    """`accelerate launch` two CPU processes (gloo) running `dpolab train`."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--main_process_port",
        str(port),
        "-m",
        "dpolab.cli",
        "train",
        *args,
    ]
    env = dict(
        os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES=""
    )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize(
    "split", [["train.batch_size=4"], ["train.batch_size=2", "train.grad_accum=2"]], ids=["2x4", "2x2x2accum"]
)
def test_two_processes_match_one(tmp_path, split):
    """The mismatched pairs rotate over the whole step (across processes) and z0 is gathered over every process's
    pairs: two processes of 4 rows give one process's batch of 8 (per-step loss and kl, final weights). SGD, so the
    weights follow the gradients linearly (Adam would turn float noise in a zero gradient into a full step)."""
    from safetensors.torch import load_file

    from dpolab.cli import main
    from dpolab.engine.logging import read_metrics

    args = [
        "model.tiny={n_layer: 1, n_embd: 32, n_head: 2}",
        "train.mode=kto",
        "kto.beta=0.5",
        "data.task=arithmetic",
        "data.task_args={n_train: 16, n_eval: 4, n_terms: [2, 2], max_value: 9}",
        "data.unpaired_from_pairs=true",
        "data.max_length=48",
        "train.max_steps=4",
        "train.optimizer=sgd",
        "train.lr=0.3",
        "train.schedule=constant",
        "reference.mode=copy",
        "eval.batch_size=8",
        "output.progress=false",
    ]
    assert main(["train", *args, "train.batch_size=8", f"output.dir={tmp_path / 'one'}"]) == 0
    _launch_two([*args, *split, f"output.dir={tmp_path / 'two'}"])
    a, b = ([r for r in read_metrics(tmp_path / n) if "grad_norm" in r] for n in ("one", "two"))
    assert len(a) == len(b) == 4
    assert max(r["kl"] for r in a) > 0.01  # the estimate is really exercised
    for ra, rb in zip(a, b):
        assert set(ra) == set(rb)
        for k in ("loss", "kl", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
            assert rb.get(k) == pytest.approx(ra.get(k), abs=1e-5), (k, ra["step"])
    wa, wb = (load_file(str(tmp_path / n / "final" / "model.safetensors")) for n in ("one", "two"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5, rtol=0) for k in wa)
