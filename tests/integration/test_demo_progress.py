"""`dpolab demo` says what it does as it goes: each stage with an estimate of its time, a note when other jobs share
the cores, and at the end the report's path and commands to try next, each of which works on what it wrote."""

from __future__ import annotations

import io
import re
import shlex

import pytest

from dpolab.cli import main
from dpolab.demo import FULL, Pace, _machine_words, busy_note, clock, n_evals


def test_estimates_follow_the_measured_pace():
    pace = Pace(FULL, stages=3)
    pace.sft_done(100.0, {"wall_clock_s": 80.0, "steps": 1500})  # 20 s of evaluations and set-up, 5 evaluations
    assert n_evals(1500, 375) == 5 and n_evals(150, 25) == 7 and n_evals(4, 0) == 2
    per_stage = 150 * (80.0 / 1500) * 1.3 + 7 * (20.0 / 5)
    assert pace.pref_stage_s() == pytest.approx(per_stage) and pace.remaining_s() == pytest.approx(3 * per_stage)
    pace.pref_done(30.0)  # a measured preference stage replaces the estimate
    assert pace.pref_stage_s() == 30.0 and pace.remaining_s() == 60.0
    assert clock(45.4) == "45 s" and clock(125) == "2 min 05 s"


def test_a_busy_machine_is_said_in_the_log_and_the_report():
    assert "load average 6.8 on 2 cores" in busy_note({"cores": 2, "load": 6.8})
    assert busy_note({"cores": 2, "load": 1.5}) is None and busy_note({"cores": 2, "load": None}) is None
    busy = _machine_words({"cores": 2, "load": 6.8})
    assert busy.endswith("(other jobs shared the cores: quiet ones take much less)")
    assert _machine_words({"cores": 2, "load": 0.3}) == " on 2 CPU cores, load average 0.3 when it started"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("d") / "demo"
    import contextlib

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        assert main(["demo", "--quick", "--out", str(out)]) == 0
    return out, text.getvalue().splitlines()


def test_each_stage_is_announced_with_an_estimate_and_the_end_says_what_to_try(demo_run):
    out, lines = demo_run
    demo = [line for line in lines if line.startswith("[demo]")]
    assert demo[0].startswith(f"[demo] SFT, then DPO, DPOP, Gate-DPO (seq) from the SFT model, then a report in {out}")
    assert any(re.fullmatch(r"\[demo\]   SFT step 3 of 6, .* in: about .* left in this stage", d) for d in demo), demo
    assert re.search(
        r"\[demo\] 1/4 done in .*; the 3 preference stages take about \d.* more at this machine's pace", "\n".join(demo)
    )
    for i, name in ((2, "DPO"), (3, "DPOP"), (4, "Gate-DPO \\(seq\\)")):
        assert any(
            re.fullmatch(rf"\[demo\] {i}/4 {name} from the SFT model \(4 steps of 4 pairs; about \d.*\)", d)
            for d in demo
        ), demo
    assert demo[-2] == f"[demo] done in {demo[-2].split('done in ')[1].split(':')[0]}: {out / 'report.md'}"
    assert demo[-1] == "[demo] what to try next:" and lines[-1].startswith("  dpolab train --config")


def test_the_commands_to_try_next_work(demo_run, capsys, monkeypatch):
    out, lines = demo_run
    commands = [line.strip().split("    # ")[0] for line in lines[lines.index("[demo] what to try next:") + 1 :]]
    assert len(commands) == 3
    printf, generate = commands[0].split(" | ")
    text = shlex.split(printf)[1].replace("\\n", "\n")
    assert text.startswith("Q: ") and text.endswith("\nA: ")
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    for command in (generate, *commands[1:]):
        args = shlex.split(command)
        assert args[0] == "dpolab"
        if args[1] == "train":  # the quick sizes' run, shortened further
            args += ["train.max_steps=1", "output.progress=false"]
        assert main(args[1:]) == 0, command
    assert (out / "ipo" / "DONE").exists()
    assert '"pairs": 16' in capsys.readouterr().out  # dpolab eval scored every held-out pair the demo wrote
    assert len((out / "eval_pairs.jsonl").read_text().splitlines()) == 16
