"""The command line as a user runs it, generation, checkpoints and model loading."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dpolab.cli import main
from dpolab.engine.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint

pytestmark = pytest.mark.slow

TINY = [
    "model.tiny={n_layer: 1, n_embd: 32, n_head: 2}",
    "train.batch_size=4",
    "eval.batch_size=8",
    "output.progress=false",
]
TASK = [
    "data.task=arithmetic",
    "data.task_args={n_train: 16, n_eval: 4, n_terms: [2, 2], max_value: 9}",
    "data.max_length=48",
]


def test_train_command_with_yaml_and_overrides(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "loss:\n  - {name: dpo, params: {beta: 0.2}}\n  - {name: sft, weight: 0.1}\ntrain:\n  max_steps: 2\n"
    )
    rc = main(["train", "--config", str(cfg), *TINY, *TASK, f"output.dir={tmp_path / 'run'}"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "done: 2 steps" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["parameters"]["trainable"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "train.optimzer=adamw"], "error: unknown key 'train.optimzer' (did you mean 'optimizer'?)"),
        (["train", "loss=[{name: nope}]"], "error: loss: unknown loss 'nope'"),
        (["train", "data.train=/nonexistent/pairs.jsonl", "train.max_steps=1"], "/nonexistent/pairs.jsonl"),
        (["train", "data.task=arithmetic", "loss=[{name: madpo}]", "train.max_steps=1"], "rm_margin"),
    ],
)
def test_errors_are_one_line_without_traceback(tmp_path, capsys, args, message):
    rc = main(args + [f"output.dir={tmp_path / 'r'}", *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not any("Traceback" in line for line in err)


def test_bad_row_error_names_file_row_and_field(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": 5, "rejected": "c"}\n')
    rc = main(["train", f"data.train={data}", f"output.dir={tmp_path / 'r'}", *TINY])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and "pairs.jsonl" in err and "row 2" in err and "'chosen'" in err


def test_eval_command_on_a_trained_model(tmp_path, capsys):
    main(["train", *TINY, *TASK, "train.max_steps=2", f"output.dir={tmp_path / 'run'}"])
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": "Q: 1+2\nA: ", "chosen": "1+2=3", "rejected": "1+2=4"}) + "\n" for _ in range(3))
    )
    capsys.readouterr()
    final = str(tmp_path / "run" / "final")
    rc = main(
        [
            "eval",
            "--model",
            final,
            "--reference",
            final,
            "--data",
            str(data),
            "--probes",
            "3",
            "--out",
            str(tmp_path / "e.json"),
        ]
    )
    assert rc == 0
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["pairs"] == 3 and res["logratio_margin"] == 0.0 and res["rewards/chosen"] == 0.0  # model == reference
    assert res["reward_accuracy"] == 0.0 and res["reward_ties"] == 1.0  # every pair an exact tie, reported as such
    assert res["probe/delta/chosen"] == 0.0 and res["probe/delta/greedy"] == 0.0 and res["probe/logp/others"] < 0
    assert res["logps/chosen"] < 0


def test_losses_and_config_commands(capsys):
    assert main(["losses"]) == 0
    out = capsys.readouterr().out
    for name in ("dpo", "beta-dpo", "madpo", "dpop", "cal-dpo", "gate-dpo", "simpo", "orpo"):
        assert f"\n{name} " in "\n" + out
    assert main(["config"]) == 0
    assert "train.lr" in capsys.readouterr().out


def test_help_documents_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("train", "eval", "demo", "losses", "config"):
        assert cmd in out


def test_study_help_lists_every_registered_study(capsys):
    from dpolab.studies import STUDIES, list_studies

    with pytest.raises(SystemExit):
        main(["study", "--help"])
    lines = capsys.readouterr().out.splitlines()
    assert [n for n, _ in list_studies()] == sorted(STUDIES)
    for name, summary in list_studies():
        assert summary and any(line.split() == [name, *summary.split()] for line in lines), name
    with pytest.raises(SystemExit):
        main(["study", "no-such-study"])
    assert "invalid choice: 'no-such-study'" in capsys.readouterr().err


# A user mistake (dpolab.errors.UserError) is one line and exit code 2; anything else is a bug and keeps its traceback.
# The failure is injected into a library function the `losses` command calls.
_FAIL = """
import sys
import dpolab.losses
from dpolab.cli import main
from dpolab.data.types import DataError

def user_error():
    try:
        open("/nonexistent/dpolab-test-file")
    except OSError as e:
        raise DataError("cannot read the thing") from e

def bug():
    raise ValueError("a bug inside the library")

dpolab.losses.list_losses = user_error if sys.argv[1] == "user" else bug
sys.exit(main(sys.argv[2:]))
"""


def _run_cli(*args):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", _FAIL, *args], capture_output=True, text=True, timeout=300)
    return p.returncode, p.stderr.strip().splitlines()


def test_a_library_value_error_keeps_its_traceback(monkeypatch, capsys):
    import dpolab.losses

    monkeypatch.setattr(dpolab.losses, "list_losses", lambda: int("not a number"))
    with pytest.raises(ValueError, match="not a number"):  # not turned into `error: ...`
        main(["losses"])
    assert "error:" not in capsys.readouterr().err
    rc, err = _run_cli("bug", "losses")
    assert rc == 1 and err[0].startswith("Traceback") and err[-1] == "ValueError: a bug inside the library"
    assert not any(line.startswith("error:") for line in err)


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "--model", "m", "--data", "d", "--batch-size", "0"], "error: --batch-size must be >= 1, got 0"),
        (["eval", "--model", "m", "--data", "d", "--probes", "-1"], "error: --probes must be >= 0, got -1"),
        (["eval", "--model", "m", "--data", "d", "--column", "prompt"], "error: --column must look like field=column"),
        (["study", "dpop", "--seeds", "0"], "error: --seeds must be >= 1, got 0"),
    ],
)
def test_bad_command_line_numbers_are_one_line_errors(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)


def test_a_user_error_is_one_line_and_traceback_shows_its_cause():
    rc, err = _run_cli("user", "losses")
    assert rc == 2 and err == ["error: cannot read the thing"]
    for args in (["--traceback", "losses"], ["losses", "--traceback"]):  # before or after the command
        rc, err = _run_cli("user", *args)
        text = "\n".join(err)
        assert rc == 2 and err[-1] == "error: cannot read the thing", args
        assert "FileNotFoundError: [Errno 2] No such file or directory: '/nonexistent/dpolab-test-file'" in text
        assert "The above exception was the direct cause of the following exception" in text
        assert "dpolab.data.types.DataError: cannot read the thing" in text


def test_demo_quick_writes_report_and_plot(tmp_path):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    report = (tmp_path / "demo" / "report.md").read_text()
    for method in ("DPO", "DPOP", "Gate-DPO"):
        assert f"| {method}" in report
    assert (tmp_path / "demo" / "logprob_trajectories.png").stat().st_size > 1000


def test_left_padded_batched_generation_matches_one_by_one():
    from transformers import AutoModelForCausalLM

    from dpolab.evaluation.generation import generate
    from dpolab.models.load import tiny_config
    from dpolab.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("tiny-gpt2", tok, {"n_layer": 1, "n_embd": 32, "n_head": 2}))
    prompts = ["Q: 1+2\nA: ", "Q: 10+20-3\nA: ", "x"]
    batched = generate(model, tok, prompts, max_new_tokens=6, batch_size=3)
    single = [generate(model, tok, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single


def test_checkpoint_write_is_atomic(tmp_path):
    """A writer killed mid-way leaves only a temporary folder, which is ignored; the previous checkpoint stays."""
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    save = lambda p: (p.mkdir(parents=True), torch.save(model.state_dict(), p / "w.pt"))  # noqa: E731
    first = save_checkpoint(tmp_path, 1, save_model=save, optimizer=opt, scheduler=sched, loss_state={}, state={})

    def dying_save(p):
        p.mkdir(parents=True)
        raise KeyboardInterrupt  # stands in for a kill during the write

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, save_model=dying_save, optimizer=opt, scheduler=sched, loss_state={}, state={})
    assert latest_checkpoint(tmp_path) == first
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000001"]
    for step in (3, 4, 5):
        save_checkpoint(
            tmp_path, step, save_model=save, optimizer=opt, scheduler=sched, loss_state={}, state={}, keep_last=2
        )
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000004", "step-0000005"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_dropout_off_by_default_and_on_when_asked():
    from dpolab.config import LoraConfig, ModelConfig
    from dpolab.models.load import load_policy
    from dpolab.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    ids = torch.tensor([tok("Q: 1+2")["input_ids"]])
    for keep, same in ((False, True), (True, False)):
        m = load_policy(
            ModelConfig(tiny={"n_layer": 1, "n_embd": 32, "n_head": 2, "resid_pdrop": 0.5}, dropout=keep),
            LoraConfig(),
            tok,
        )
        m.train()
        a, b = m(ids).logits, m(ids).logits
        assert torch.equal(a, b) is same


def test_bf16_autocast_runs_on_cpu(tmp_path):
    rc = main(["train", *TINY, *TASK, "train.max_steps=2", "train.bf16=true", f"output.dir={tmp_path / 'run'}"])
    assert rc == 0
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert math.isfinite(s["final_eval"]["eval/loss"])


@pytest.mark.parametrize("path", ["/no/such/model", "./missing-model", "runs/x/final"])
def test_a_model_folder_that_does_not_exist_is_one_line(tmp_path, capsys, path):
    """Not transformers' 'Repo id must be in the form ...' for a path the user meant as a folder."""
    from dpolab.cli import main

    rc = main(
        [
            "train",
            f"model.name_or_path={path}",
            "data.task=arithmetic",
            f"output.dir={tmp_path / 'run'}",
            "output.progress=false",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith(f"error: model folder not found: {path}"), err[-3:]
    assert "Repo id" not in "\n".join(err)
