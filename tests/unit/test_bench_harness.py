"""The benchmark harness (benchmarks/): the same-math check can fail, ratios are paired by round, loaded rounds are
left out of the headline, end-to-end figures are computed as stated, and every dpolab arm pins its reference mode.
Pure Python except the last test (two tiny real dpolab runs, a few seconds)."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import arms  # noqa: E402
import harness  # noqa: E402
import run as bench_run  # noqa: E402


# -- the same-math check -----------------------------------------------------------------------------------------
def toy_check(beta=0.1, lr=1e-4, steps=5, order=0, n_params=1000):
    """What an arm would report after ``steps`` Adam steps on a toy problem: the last batch's margins grow with the
    summed learning rate (Adam is scale-free in the gradient, so beta barely changes the update); the loss is
    -log sigmoid(beta * h); the data order picks the last batch."""
    lr_sum = sum(lr * (1 - s / steps) for s in range(steps - 1))  # updates before the last step's forward
    hs = [(0.5 + 0.1 * ((i + order) % 4)) * lr_sum / 1e-4 for i in range(8)]
    loss = sum(math.log1p(math.exp(-beta * h)) for h in hs) / len(hs)
    upd = sum(lr * (1 - s / steps) for s in range(steps))
    return dict(
        n_tensors=10,
        n_params=n_params,
        loss=loss,
        logps_chosen=-500 + 3 * hs[0],
        logps_rejected=-480 - 2 * hs[1],
        margin=sum(hs) / len(hs),
        weights_abs_sum=20.0 + upd * 37,
        delta_abs_sum=upd * n_params,
        delta_l2=upd * math.sqrt(n_params),
        delta_index_sum=upd * n_params * 0.013,
    )


def wiggle(check, frac=0.5):
    """Differences within the tolerances (``frac`` of each), as fp32 rounding between implementations gives."""
    return {
        q: v if t.exact else v + frac * t.limit(check, q) for q, t in harness.TOLERANCES.items() for v in [check[q]]
    }


def test_identical_and_fp32_close_arms_pass():
    c = toy_check()
    assert (
        harness.same_math(
            {"dpolab-live": c, "trl-default": dict(c), "bare": wiggle(c), "dpolab-precompute": wiggle(c, -0.9)}
        )
        == []
    )
    assert len(harness.same_math({"dpolab-live": c, "bare": wiggle(c, 1.1)})) == len(harness.TOLERANCES) - 2


@pytest.mark.parametrize(
    "what, other, caught",
    [
        ("beta", dict(beta=0.2), "loss"),
        ("learning rate", dict(lr=2e-4), "delta_abs_sum"),
        ("data order", dict(order=1), "logps_chosen"),
        ("trainable parameters", dict(n_params=999), "n_params"),
    ],
)
def test_a_different_arm_is_caught(what, other, caught):
    problems = harness.same_math({"dpolab-live": toy_check(), "odd-arm": toy_check(**other)})
    assert problems, f"another {what} passed the check"
    assert all(p.startswith("odd-arm:") for p in problems)
    assert any(f"`{caught}`" in p for p in problems), problems


def test_the_check_fails_when_it_could_not_tell_another_beta():
    """The old check (step-0 loss) could not fail: ln 2 in any arm whose policy equals its reference."""
    step0 = dict(toy_check(), loss=math.log(2), margin=0.0)
    problems = harness.same_math({"dpolab-live": step0, "trl-default": dict(step0, loss=math.log(2))})
    assert any("too weak" in p for p in problems)
    assert any(
        "too weak" in p and "weights did not change" in p
        for p in harness.same_math({"a": dict(toy_check(), delta_abs_sum=0.0)})
    )


def test_missing_values_and_tolerance_factor():
    c = toy_check()
    assert harness.same_math({"a": c, "b": None}) == ["b: reported no same-math values"]
    assert any(
        "`loss` missing" in p for p in harness.same_math({"a": c, "b": {k: v for k, v in c.items() if k != "loss"}})
    )
    assert any("not finite" in p for p in harness.same_math({"a": c, "b": dict(c, loss=float("nan"))}))
    off = dict(c, loss=c["loss"] + 3e-4)
    assert harness.same_math({"a": c, "b": off})  # 3e-4 > 1e-4
    assert harness.same_math({"a": c, "b": off}, factor=5) == []
    assert harness.same_math({"b": off, "a": c}, reference="a")  # compared with the named reference
    text = " ".join(harness.tolerance_lines(factor=5))
    assert "`loss`: abs(diff) <= 0.0001" in text and "multiplied by 5" in text
    table = harness.check_table({"a": c, "b": off})
    assert table.count("\n") == len(harness.TOLERANCES) + 1 and "| `loss` |" in table


# -- rounds, load and paired ratios ------------------------------------------------------------------------------
def test_flag_rounds_compares_during_and_after_with_round_one():
    loads = [
        harness.round_load(0.1, [1.8, 2.0, 2.1], 2.1),  # before round 1: idle, not compared
        harness.round_load(2.1, [2.0, 2.2], 2.2),  # like round 1
        harness.round_load(2.2, [4.0, 6.0], 6.5),  # another job ran
        harness.round_load(2.0, [], 2.4),
    ]  # no samples: the load at its end
    assert loads[3]["during"] == pytest.approx(2.4)
    flags = harness.flag_rounds(loads, margin=0.5)
    assert flags[0] is None and flags[1] is None and flags[3] is None
    assert "during 5.50 vs 2.00" in flags[2] and "after 6.50 vs 2.10" in flags[2]
    assert harness.flag_rounds(loads, margin=10) == [None] * 4


def run_(times, warmup=1, batch=8, setup=5.0, scaled=0.0, excluded=0.0, pairs=64, rss=1000.0, reference="live"):
    return dict(
        step_times=times,
        warmup=warmup,
        batch_size=batch,
        pairs=pairs,
        setup_s=setup,
        scaled_setup_s=scaled,
        excluded_setup_s=excluded,
        peak_rss_mb=rss,
        tokens_per_step=[1000] * len(times),
        reference=reference,
    )


def test_ratios_are_paired_by_round_and_loaded_rounds_left_out():
    """The smollm headline pooled a loaded round with a quiet one; paired ratios are the same in both regimes."""
    values = {"dpolab-live": [1.0, 10.0, 1.1], "trl-default": [2.0, 20.0, 2.42]}
    p = harness.paired(values, "dpolab-live", kept=[True, True, False])
    assert p["trl-default"].per_round == pytest.approx([2.0, 2.0, 2.2])
    assert (p["trl-default"].median, p["trl-default"].lo, p["trl-default"].hi, p["trl-default"].n) == (2.0, 2.0, 2.0, 2)
    assert p["dpolab-live"].median == 1.0
    assert p["trl-default"].text() == "2.00 [2.00-2.00]"
    assert harness.paired(values, "dpolab-live", [True, False, False])["trl-default"].text() == "2.00 (1 round)"
    assert harness.paired(values, "dpolab-live", [False] * 3)["trl-default"].text() == "n/a"
    # pooling every step of both regimes would have said something else
    pooled = sorted([2.0, 20.0])[1] / sorted([1.0, 10.0])[1]
    assert pooled == 2.0 and harness.round_step(run_([9.0, 1.0, 3.0, 2.0])) == 2.0


def test_end_to_end_is_computed_from_setup_and_step_times():
    live = run_([3.0, 1.0, 1.0, 1.0], warmup=1, setup=5.0)
    assert harness.steps_per_epoch(100, 8) == 13
    assert harness.end_to_end(live, 1, 100) == pytest.approx(5.0 + 3.0 + 12 * 1.0)
    assert harness.end_to_end(live, 3, 100) == pytest.approx(5.0 + 3.0 + 38 * 1.0)
    # precomputation: 4 s of the setup for the run's 64 pairs, scaled to the epoch's 128, once for all epochs
    pre = run_([3.0, 0.5, 0.5, 0.5], setup=6.0, scaled=4.0, pairs=64)
    assert harness.end_to_end(pre, 1, 128) == pytest.approx(2.0 + 8.0 + 3.0 + 15 * 0.5)
    assert harness.end_to_end(pre, 3, 128) == pytest.approx(2.0 + 8.0 + 3.0 + 47 * 0.5)
    # TRL's tokenisation is left out (dpolab and the bare loop are given token ids)
    trl = run_([3.0, 2.0, 2.0], setup=7.0, excluded=4.0)
    assert harness.end_to_end(trl, 1, 16) == pytest.approx(3.0 + 3.0 + 1 * 2.0)


def test_summary_table_and_headline():
    runs = {
        "dpolab-live": [run_([2, 1.0, 1.0]), run_([2, 1.2, 1.2]), run_([20, 10, 10])],
        "trl-default": [run_([4, 2.1, 2.1]), run_([4, 2.4, 2.4]), run_([40, 30, 30])],
        "dpolab-precompute": [run_([2, 0.7, 0.7], scaled=3.0, reference="precomputed")] * 3,
    }
    kept = [True, True, False]
    s = harness.summary(runs, "dpolab-live", kept, epoch_pairs=640)
    assert s["trl-default"]["step_ratio"].text() == "2.05 [2.00-2.10]"
    assert s["dpolab-live"]["step_s"] == pytest.approx(1.1) and s["dpolab-live"]["n"] == 4
    assert s["dpolab-precompute"]["e2e"][1] == pytest.approx(2.0 + 3.0 * 10 + 2 + 79 * 0.7)
    table = harness.main_table(s, "dpolab-live")
    assert "| dpolab-precompute | precomputed |" in table and "3 epochs, computed (s)" in table
    head = harness.headline(s, "dpolab-live", ["dpolab-live", "trl-default"], n_kept=2, n_rounds=3)
    assert "2 of 3 rounds" in head and "too few to quote" in head and "step time: trl-default 2.05 [2.00-2.10]" in head
    like, rest = head.split("Not like for like")
    assert "dpolab-precompute" not in like and "dpolab-precompute 1 epoch" in rest
    loads = [harness.round_load(1, [], 1)] * 2 + [harness.round_load(1, [5], 5)]
    rt = harness.rounds_table(runs, loads, harness.flag_rounds(loads, 0.5), [list(runs)] * 3)
    assert "| 3 | 1.00 | 5.00 | 5.00 | no: load differs" in rt


# -- the arms ----------------------------------------------------------------------------------------------------
def test_every_dpolab_arm_pins_its_reference_and_says_it():
    for name, arm in arms.ARMS.items():
        if arm.impl != "dpolab":
            assert arm.reference == "live"
            continue
        assert name.startswith(f"dpolab-{'live' if arm.reference == 'live' else 'precompute'}")
        for lora in (False, True):
            mode = arms.dpolab_reference_mode(arm, lora)
            assert mode != "auto" and not any(o.startswith("reference.mode") for o in arm.overrides)
            assert mode == ("precomputed" if arm.reference == "precomputed" else "adapter" if lora else "copy")
        assert arms.reference_label(arm, False).startswith("live" if arm.reference == "live" else "precomputed")
    for old, new in arms.RENAMED.items():
        with pytest.raises(ValueError, match="renamed"):
            arms.get_arm(old)
    for wl, names in bench_run.DEFAULT_ARMS.items():
        assert names[0] == bench_run.BASE and all(arms.get_arm(n) for n in names)
        assert any(arms.ARMS[n].impl != "dpolab" for n in names), wl  # a like-for-like comparator


def test_weight_checksum_and_seeded_lora():
    torch = pytest.importorskip("torch")

    class Lora(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lora_A = torch.nn.ModuleDict({"default": torch.nn.Linear(6, 2, bias=False)})
            self.lora_B = torch.nn.ModuleDict({"default": torch.nn.Linear(2, 6, bias=False)})

    class Wrapped(torch.nn.Module):  # names as peft / accelerate give them
        def __init__(self):
            super().__init__()
            self.module = torch.nn.Module()
            self.module.base_model = torch.nn.Module()
            self.module.base_model.model = torch.nn.Module()
            self.module.base_model.model.q = Lora()

    a, b = Wrapped(), Wrapped()
    assert arms.seed_lora_(a) == arms.seed_lora_(b) == 2
    assert set(arms.trainable(a)) == {"q.lora_A.weight", "q.lora_B.weight"}
    assert torch.equal(
        a.module.base_model.model.q.lora_A["default"].weight, b.module.base_model.model.q.lora_A["default"].weight
    )
    assert not a.module.base_model.model.q.lora_B["default"].weight.any()
    start = arms.snapshot(a)
    with torch.no_grad():
        a.module.base_model.model.q.lora_B["default"].weight[0, 1] = 0.5
    c = arms.weight_checksum(a, start)
    assert (c["n_tensors"], c["n_params"]) == (2, 24)
    assert c["delta_abs_sum"] == pytest.approx(0.5) and c["delta_l2"] == pytest.approx(0.5)
    assert c["delta_index_sum"] == pytest.approx(0.5 * 2 / 9973)


# -- run.py end to end, with fake arms ---------------------------------------------------------------------------
def fake_arms(monkeypatch, odd=None):
    state = {"load": 1.0, "timed": 0}
    monkeypatch.setattr(os, "getloadavg", lambda: (state["load"], 0.0, 0.0))

    def fake(arm, wl, env):
        if env.get("BENCH_CHECK") == "1":
            c = toy_check(**(odd if arm == "bare" and odd else {}))
            return dict(check=c)
        state["timed"] += 1
        rnd = (state["timed"] - 1) // 3
        state["load"] = 4.0 if rnd == 1 else 1.0  # round 2 overlaps another job
        slow = {"dpolab-live": 1.0, "trl-default": 2.0, "bare": 1.5}[arm] * (5 if rnd == 1 else 1)
        return dict(
            run_([3.0] + [slow] * 3, setup=2.0, excluded=1.0 if arm.startswith("trl") else 0.0),
            torch_threads=2,
            steps=3,
        )

    monkeypatch.setattr(bench_run, "run_arm", fake)
    return state


ARGS = ["--workload", "imdb", "--arms", "dpolab-live,trl-default,bare", "--rounds", "3", "--epoch-pairs", "80"]


def test_run_stops_on_a_failed_check_and_writes_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench_run, "HERE", tmp_path)
    state = fake_arms(monkeypatch, odd=dict(beta=0.2))
    with pytest.raises(SystemExit, match="same-math check failed") as e:
        bench_run.main(ARGS)
    assert "bare: `loss`" in str(e.value) and state["timed"] == 0
    assert not (tmp_path / "RESULTS.md").exists()


def test_run_writes_paired_headline_and_flags_the_loaded_round(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench_run, "HERE", tmp_path)
    fake_arms(monkeypatch)
    bench_run.main(ARGS)
    out = (tmp_path / "RESULTS.md").read_text()
    assert "**Passed.**" in out and "2 of 3 rounds" in out
    assert "trl-default 2.00 [2.00-2.00]; bare 1.50 [1.50-1.50]" in out
    assert "| 2 | " in out and "no: load differs from round 1's by more than 0.5" in out
    assert "TRL's tokenisation (median trl-default 1.0 s) is left out" in out
    with pytest.raises(SystemExit):
        bench_run.main(["--arms", "dpolab,bare", "--no-write"])  # old name: ambiguous reference mode


# -- one tiny real dpolab run: two arms differing only in beta are caught -----------------------------------------
@pytest.mark.slow
def test_real_dpolab_arms_with_another_beta_are_caught(monkeypatch, tmp_path):
    import random
    import tempfile

    from workloads import Workload

    from dpolab.models.tokenizer import build_char_tokenizer

    vocab = len(build_char_tokenizer())
    rng = random.Random(0)

    def seq(n):
        return [rng.randrange(4, vocab) for _ in range(n)]

    ids = [
        dict(prompt_ids=seq(6), chosen_ids=seq(rng.randint(4, 10)), rejected_ids=seq(rng.randint(4, 10)))
        for _ in range(8)
    ]
    w = Workload("tiny", "tiny-gpt2", 2)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the arms' run folders
    checks = {
        f"beta {b}": arms.run_dpolab(arms.ARMS["dpolab-live"], w, ids, "tiny-gpt2", 4, check=True, beta=b, lr=1e-3)[
            "check"
        ]
        for b in (0.1, 0.2)
    }
    problems = harness.same_math(checks)
    assert not any("too weak" in p for p in problems), problems
    assert any(p.startswith("beta 0.2: `loss`") for p in problems), problems
    assert harness.same_math({"a": checks["beta 0.1"], "b": dict(checks["beta 0.1"])}) == []


def test_weights_sum_allows_what_the_update_tolerance_allows_but_not_another_start():
    """sum |w| after training moves with the update: the smollm arms of 2026-12-02 (TRL, bare vs dpolab-live) differ
    there by 3e-7 relative, well inside their update's tolerance, and pass; weights that started elsewhere do not."""
    live = dict(
        n_tensors=420,
        n_params=4884480,
        loss=0.5231632,
        logps_chosen=-260.02051,
        logps_rejected=-284.77731,
        margin=3.8007317,
        weights_abs_sum=48102.285,
        delta_abs_sum=6301.4851,
        delta_l2=3.3422355,
        delta_index_sum=-3.0034745,
    )
    bare = dict(
        live,
        loss=0.52315545,
        logps_chosen=-260.0199,
        logps_rejected=-284.77698,
        margin=3.8009377,
        weights_abs_sum=48102.3,
        delta_abs_sum=6301.5182,
        delta_l2=3.3422436,
        delta_index_sum=-3.0040953,
    )
    assert harness.same_math({"dpolab-live": live, "bare": bare}) == []
    other_start = dict(bare, weights_abs_sum=48102.285 + 18.0)  # another draw of LoRA's A moves sum |w| by ~20
    problems = harness.same_math({"dpolab-live": live, "other-start": other_start})
    assert len(problems) == 1 and "`weights_abs_sum`" in problems[0]


# -- the step profiler's categories ------------------------------------------------------------------------------
def test_profile_categories_put_each_op_in_its_bucket():
    import profile_step

    assert profile_step.category("aten::addmm") == "matrix products"
    assert profile_step.category("aten::mm") == "matrix products"
    assert profile_step.category("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention (sdpa)"
    assert profile_step.category("aten::_log_softmax_backward_data") == "softmax / log-softmax / logsumexp"
    assert profile_step.category("aten::_foreach_addcdiv_") == "optimiser"
    assert profile_step.category("aten::native_layer_norm") == "layer norm / activations"
    assert profile_step.category("aten::gelu_backward") == "layer norm / activations"
    assert profile_step.category("aten::copy_") == "copies, indexing, layout"
    assert profile_step.category("aten::mul") == "elementwise arithmetic"
    assert profile_step.category("Optimizer.step#AdamW.step") == "other"  # a profiler range, not an operator


# -- the CPU every section and headline names (issue 33 item 4) ----------------------------------------------------
FAKE_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16
processor\t: 1
model name\t: something else
flags\t\t: fpu
"""


def test_cpu_record_reads_the_model_and_flags_from_cpuinfo_text():
    rec = harness.cpu_record(FAKE_CPUINFO)
    assert rec == {"model": "Intel(R) Xeon(R) Platinum 8480+", "amx_bf16": True, "avx512_bf16": True, "avx2": True}
    amd = harness.cpu_record("model name\t: AMD EPYC\nflags\t: fpu avx2 avx512_bf16\n")
    assert harness.cpu_text(amd) == "AMD EPYC (amx_bf16 no, avx512_bf16 yes, avx2 yes)"
    assert (
        harness.cpu_text(harness.cpu_record("")) == "unknown CPU (amx_bf16 unknown, avx512_bf16 unknown, avx2 unknown)"
    )


def test_every_section_and_headline_name_the_cpu(monkeypatch, tmp_path):
    monkeypatch.setattr(bench_run, "HERE", tmp_path)
    monkeypatch.setattr(bench_run, "cpu", lambda: "Fake CPU 9000 (amx_bf16 no, avx512_bf16 no, avx2 yes)")
    fake_arms(monkeypatch)
    bench_run.main(["--workload", "imdb,longprompt"] + ARGS[2:])  # the second section comes without the run's header
    out = (tmp_path / "RESULTS.md").read_text()
    sections = out.split("### workload")[1:]
    assert len(sections) == 2 and all(
        "CPU: Fake CPU 9000 (amx_bf16 no, avx512_bf16 no, avx2 yes)" in s for s in sections
    )
    assert out.count("**Headline** (on Fake CPU 9000 (amx_bf16 no, avx512_bf16 no, avx2 yes);") == 2
