"""One benchmark arm in its own process (clean peak RSS): ``python benchmarks/arms.py ARM WORKLOAD OUT.json``.

Every arm trains the same model (loaded from the same saved folder) on the same pairs in the same order
(no shuffling), batch size, AdamW lr 1e-5 (no weight decay), linear schedule to 0 over the run, no warm-up, gradient
clipping 1.0, DPO (sigmoid, beta 0.1), fp32 (unless the arm says bf16), dropout off, seed 0. With LoRA (r=16, alpha 32,
all linear layers) every arm's adapters start from the same seeded weights (:func:`seed_lora_`). The reference is in
each arm's name: ``live`` = a reference forward inside every step (dpolab ``reference.mode=copy``, or ``adapter`` under
LoRA; TRL's default; the bare loop), ``precompute`` = dpolab ``reference.mode=precomputed``: the reference log-probs
are computed once before the first step (timed as setup), none in the step. No dpolab arm uses ``reference.mode=auto``.

Step time = wall clock between the ends of consecutive optimiser steps (data collation, forward, backward, optimiser,
logging: everything the trainer does per step). Setup = from loading the data to the start of the first step (model
loading, TRL's dataset processing, dpolab's reference precomputation); run total = setup + every step.

Environment: ``BENCH_STEPS`` / ``BENCH_WARMUP`` (measured / warm-up steps), ``BENCH_LR`` (peak learning rate, default
1e-5; the same-math check sets its own), ``BENCH_CHECK=1``: a same-math check run
(snapshot of the trainable weights before the first step; the result gets a ``check`` entry, see
``harness.same_math``).
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workloads import WORKLOADS, data_file, model_dir

LR, BETA = 1e-5, 0.1
LORA_R, LORA_ALPHA = 16, 32


@dataclass(frozen=True)
class Arm:
    name: str
    impl: str  # dpolab | trl | bare
    reference: str  # live | precomputed
    overrides: Tuple[str, ...] = ()
    fp32: bool = True
    what: str = ""


_ARM_LIST = [
    Arm(
        "dpolab-live",
        "dpolab",
        "live",
        (),
        what="dpolab defaults (prompt-prefix sharing + packing, LM head at response positions only), live reference",
    ),
    Arm("dpolab-precompute", "dpolab", "precomputed", (), what="as dpolab-live, reference log-probs precomputed once"),
    Arm("dpolab-live-packed", "dpolab", "live", ("train.layout=packed",), what="packing without prefix sharing"),
    Arm("dpolab-live-padded", "dpolab", "live", ("train.layout=padded",), what="padded batch, response-only head"),
    Arm(
        "dpolab-live-plain",
        "dpolab",
        "live",
        ("train.layout=padded", "train.logits=full"),
        what="padded batch, full logits",
    ),
    Arm(
        "dpolab-live-recompute",
        "dpolab",
        "live",
        ("train.logits=response-recompute",),
        what="as dpolab-live, LM-head tiles recomputed in backward (one [rows, V] tile alive)",
    ),
    Arm(
        "dpolab-live-gc",
        "dpolab",
        "live",
        ("train.gradient_checkpointing=true",),
        what="as dpolab-live, activations recomputed in backward (gradient checkpointing)",
    ),
    Arm("dpolab-live-bf16", "dpolab", "live", ("train.bf16=true",), fp32=False),
    Arm(
        "dpolab-live-bf16-f32head",
        "dpolab",
        "live",
        ("train.bf16=true",),
        fp32=False,
        what="as dpolab-live-bf16, the LM head's softmax in float32 tiles (fastpath.BF16_SOFTMAX off, as before)",
    ),
    Arm("trl-default", "trl", "live", what="DPOConfig defaults on CPU (use_cpu, no bf16; gradient checkpointing on)"),
    Arm("trl-tuned", "trl", "live", what="as trl-default, gradient checkpointing off"),
    Arm("bare", "bare", "live", what="plain loop: concatenated chosen+rejected forward, right-padded, full logits"),
]
ARMS: Dict[str, Arm] = {a.name: a for a in _ARM_LIST}
# names used before 2026-12: `dpolab` meant reference.mode=auto, which was live in the first sections of RESULTS.md
# and precomputed from 2026-11-25 19:00 on
RENAMED = {
    "dpolab": "dpolab-live or dpolab-precompute (it meant reference.mode=auto)",
    "dpolab-live-ref": "dpolab-live",
    "dpolab-precomputed-ref": "dpolab-precompute",
    "dpolab-packed": "dpolab-live-packed",
    "dpolab-padded": "dpolab-live-padded",
    "dpolab-plain": "dpolab-live-plain",
    "dpolab-recompute": "dpolab-live-recompute",
    "dpolab-bf16": "dpolab-live-bf16",
}


def get_arm(name: str) -> Arm:
    if name in ARMS:
        return ARMS[name]
    if name in RENAMED:
        raise ValueError(f"arm '{name}' was renamed: use {RENAMED[name]}")
    raise ValueError(f"unknown arm '{name}'; valid: {', '.join(ARMS)}")


def dpolab_reference_mode(arm: Arm, lora: bool) -> str:
    """The ``reference.mode`` a dpolab arm pins (never ``auto``)."""
    if arm.reference == "precomputed":
        return "precomputed"
    return "adapter" if lora else "copy"


def reference_label(arm: Arm, lora: bool) -> str:
    if arm.reference == "precomputed":
        return "precomputed"
    return "live, adapter off" if lora else "live, frozen copy"


# -- weights: the same LoRA start in every arm; checksums of the update ------------------------------------------
def canonical_name(name: str) -> str:
    """A parameter name without wrapper prefixes (DDP/accelerate ``module.``, ``_orig_mod.``, peft's
    ``base_model.model.``) and without peft's adapter name: the same in dpolab, TRL and the bare loop."""
    for p in ("module.", "_orig_mod.", "base_model.model."):
        while name.startswith(p):
            name = name[len(p) :]
    return name.replace(".default.", ".")


def seed_lora_(model) -> int:
    """Give every LoRA A matrix weights drawn from a generator seeded by its canonical name (peft's default
    kaiming-uniform bound 1/sqrt(fan_in)), every B matrix zeros: the same adapters in every arm, whatever random
    numbers each library drew before. Returns how many tensors were set."""
    import torch

    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            cname = canonical_name(name)
            if ".lora_A." in cname:
                g = torch.Generator().manual_seed(zlib.crc32(cname.encode()))
                bound = 1.0 / math.sqrt(p.shape[1])
                p.copy_((torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 - 1).mul_(bound).to(p.dtype))
                n += 1
            elif ".lora_B." in cname:
                p.zero_()
                n += 1
    return n


def trainable(model) -> Dict[str, "object"]:
    return {canonical_name(n): p for n, p in model.named_parameters() if p.requires_grad}


def snapshot(model) -> Dict[str, "object"]:
    return {n: p.detach().to("cpu", copy=True) for n, p in trainable(model).items()}


def weight_checksum(model, start: Dict[str, "object"]) -> Dict[str, float]:
    """``harness.TOLERANCES``' weight quantities, float64: sum |w|, and sum |dw|, sqrt(sum dw^2), sum dw_i * c_i
    (c_i = ((i mod 9973)+1)/9973, i the flat index inside each tensor) of dw = w - start."""
    import torch

    now = trainable(model)
    if set(now) != set(start):
        raise RuntimeError(f"trainable parameters changed during the run: {sorted(set(now) ^ set(start))[:5]}")
    tot = dict(weights_abs_sum=0.0, delta_abs_sum=0.0, delta_sq=0.0, delta_index_sum=0.0)
    n_params = 0
    for name in sorted(now):
        w = now[name].detach().to("cpu", torch.float64).reshape(-1)
        d = w - start[name].to(torch.float64).reshape(-1)
        c = (torch.arange(d.numel(), dtype=torch.float64) % 9973 + 1) / 9973
        tot["weights_abs_sum"] += float(w.abs().sum())
        tot["delta_abs_sum"] += float(d.abs().sum())
        tot["delta_sq"] += float((d * d).sum())
        tot["delta_index_sum"] += float((d * c).sum())
        n_params += d.numel()
    return dict(
        n_tensors=len(now),
        n_params=n_params,
        weights_abs_sum=tot["weights_abs_sum"],
        delta_abs_sum=tot["delta_abs_sum"],
        delta_l2=math.sqrt(tot["delta_sq"]),
        delta_index_sum=tot["delta_index_sum"],
    )


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the three implementations -----------------------------------------------------------------------------------
def run_dpolab(
    arm: Arm,
    w,
    ids,
    mdir,
    n_steps,
    *,
    check: bool = False,
    beta: float = BETA,
    lr: float = LR,
    extra: Tuple[str, ...] = (),
):
    """``extra``: more config overrides (tests)."""
    import dpolab.models.reference.table as refmod
    from dpolab.config import build_config
    from dpolab.data.types import TokenizedPair
    from dpolab.engine.trainer import Trainer

    pairs = [TokenizedPair(**r) for r in ids]
    if arm.name.endswith("-f32head"):  # the lever's A/B: this process only (each arm runs in its own)
        import dpolab.models.fastpath as fastpath

        fastpath.BF16_SOFTMAX = False
    out = tempfile.mkdtemp(prefix=f"bench-{arm.name}-")
    mode = dpolab_reference_mode(arm, w.lora)
    over = [
        f"model.name_or_path={mdir}",
        f"train.max_steps={n_steps}",
        f"train.batch_size={w.batch_size}",
        f"train.lr={lr}",
        "train.shuffle=false",
        "train.warmup_steps=0",
        "train.schedule=linear",
        "train.max_grad_norm=1.0",
        "train.weight_decay=0.0",
        "train.seed=0",
        f"output.dir={out}",
        "output.progress=false",
        "output.save_final=false",
        "eval.at_start=false",
        f"reference.mode={mode}",
    ]
    if w.lora:
        over += ["lora.enabled=true", f"lora.r={LORA_R}", f"lora.alpha={LORA_ALPHA}", "lora.dropout=0.0"]
    cfg = build_config({"loss": [{"name": "dpo", "params": {"beta": beta}}]}, over + list(arm.overrides) + list(extra))
    scored = {"s": 0.0, "pairs": 0, "calls": 0}
    inner_score = refmod.score_table

    def timed_score(model, adapter_off, data, tools):  # the precomputation: the setup that grows with the data
        t0 = time.perf_counter()
        try:
            return inner_score(model, adapter_off, data, tools)
        finally:
            scored["s"] += time.perf_counter() - t0
            scored["pairs"] += len(data)
            scored["calls"] += 1

    refmod.score_table = timed_score
    try:
        t = Trainer(cfg, train_data=pairs, eval_data=[], log=lambda s: None)
    finally:
        refmod.score_table = inner_score
    if t.reference is None or t.reference.mode != mode:
        raise RuntimeError(f"{arm.name}: asked for reference.mode={mode}, got {getattr(t.reference, 'mode', None)}")
    if mode == "precomputed" and scored["calls"] != 1:
        raise RuntimeError(f"{arm.name}: the reference precomputation was not timed ({scored['calls']} calls)")
    if w.lora:
        seed_lora_(t.policy)
    start = snapshot(t.policy) if check else None
    base = rss_mb()
    ends = [time.perf_counter()]
    rows = []
    inner = t._train_step

    def timed():
        r = inner()
        ends.append(time.perf_counter())
        rows.append(r)
        return r

    t._train_step = timed
    t.fit()
    res = dict(
        step_times=[b - a for a, b in zip(ends, ends[1:])],
        first_step_start=ends[0],
        base_rss_mb=base,
        reference_mode=t.reference.mode,
        scaled_setup_s=scored["s"] if mode == "precomputed" else 0.0,
    )
    if check:
        last = rows[-1]
        res["check"] = dict(
            loss=float(last["loss"]),
            logps_chosen=float(last["logps/chosen"]),
            logps_rejected=float(last["logps/rejected"]),
            margin=float(last["logratio_margin"]),
            **weight_checksum(t.policy, start),
        )
    return res


def run_trl(arm: Arm, w, texts, mdir, n_steps, *, check: bool = False, beta: float = BETA, lr: float = LR):
    import torch
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(mdir)
    model = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32)
    ds = Dataset.from_list(texts)
    kw = dict(
        output_dir=tempfile.mkdtemp(prefix=f"bench-{arm.name}-"),
        use_cpu=True,
        bf16=False,
        report_to=[],
        per_device_train_batch_size=w.batch_size,
        max_steps=n_steps,
        learning_rate=lr,
        beta=beta,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        max_grad_norm=1.0,
        warmup_steps=0,
        weight_decay=0.0,
        lr_scheduler_type="linear",
        precompute_ref_log_probs=False,
        seed=0,
    )
    if arm.name == "trl-tuned":
        kw.update(gradient_checkpointing=False)
    args = DPOConfig(**kw)
    peft_config = None
    if w.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    prep = {"s": 0.0}

    class Ordered(DPOTrainer):  # the same pair order as every other arm (TRL would shuffle)
        def _get_train_sampler(self, *a, **k):
            return SequentialSampler(self.train_dataset)

        def _prepare_dataset(self, *a, **k):  # TRL's tokenisation, timed: left out of the end-to-end figures
            t0 = time.perf_counter()
            try:
                return super()._prepare_dataset(*a, **k)
            finally:
                prep["s"] += time.perf_counter() - t0

    ends, log_rows = [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **k):
            if not ends:
                ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **k):
            ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **k):
            if logs and "loss" in logs:
                log_rows.append(dict(logs))

    trainer = Ordered(
        model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_config, callbacks=[Clock()]
    )
    if w.lora:
        seed_lora_(trainer.model)
    start = snapshot(trainer.model) if check else None
    base = rss_mb()
    trainer.train()
    res = dict(
        step_times=[b - a for a, b in zip(ends, ends[1:])],
        first_step_start=ends[0],
        base_rss_mb=base,
        gradient_checkpointing=bool(args.gradient_checkpointing),
        excluded_setup_s=prep["s"],
    )
    if check:
        last = log_rows[-1]
        res["check"] = dict(
            loss=float(last["loss"]),
            logps_chosen=float(last["logps/chosen"]),
            logps_rejected=float(last["logps/rejected"]),
            margin=float(last["rewards/margins"]) / beta,
            **weight_checksum(trainer.model, start),
        )
    return res


def run_bare(arm: Arm, w, ids, mdir, n_steps, *, check: bool = False, beta: float = BETA, lr: float = LR):
    """A plain PyTorch DPO loop: concatenated chosen+rejected forward on a right-padded batch, full logits."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32)
    if w.lora:
        from peft import LoraConfig, get_peft_model

        policy = get_peft_model(
            policy,
            LoraConfig(
                r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
            ),
        )
        seed_lora_(policy)
        ref = None
    else:
        ref = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32).eval().requires_grad_(False)
    policy.train()
    pad = policy.config.pad_token_id if policy.config.pad_token_id is not None else 0
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / n_steps))
    start = snapshot(policy) if check else None

    def logps(model, x, attn, mask):
        logits = model(input_ids=x, attention_mask=attn).logits[:, :-1].float()
        lp = logits.log_softmax(-1).gather(2, x[:, 1:, None]).squeeze(2)
        return (lp * mask[:, 1:]).sum(-1)

    base = rss_mb()
    ends = [time.perf_counter()]
    last = None
    B = w.batch_size
    for step in range(n_steps):
        chunk = ids[step * B : (step + 1) * B]
        seqs = [r["prompt_ids"] + r["chosen_ids"] for r in chunk] + [r["prompt_ids"] + r["rejected_ids"] for r in chunk]
        starts = [len(r["prompt_ids"]) for r in chunk] * 2
        T = max(map(len, seqs))
        x = torch.full((len(seqs), T), pad, dtype=torch.long)
        attn = torch.zeros_like(x)
        mask = torch.zeros(x.shape)
        for i, (s, st) in enumerate(zip(seqs, starts)):
            x[i, : len(s)] = torch.tensor(s)
            attn[i, : len(s)] = 1
            mask[i, st : len(s)] = 1
        pol = logps(policy, x, attn, mask)
        with torch.no_grad():
            if ref is None:
                with policy.disable_adapter():
                    rl = logps(policy, x, attn, mask)
            else:
                rl = logps(ref, x, attn, mask)
        h = (pol[:B] - rl[:B]) - (pol[B:] - rl[B:])
        loss = -F.logsigmoid(beta * h).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        last = dict(
            loss=loss.item(),
            logps_chosen=pol[:B].detach().mean().item(),
            logps_rejected=pol[B:].detach().mean().item(),
            margin=h.detach().mean().item(),
        )
        ends.append(time.perf_counter())
    res = dict(step_times=[b - a for a, b in zip(ends, ends[1:])], base_rss_mb=base, first_step_start=ends[0])
    if check:
        res["check"] = dict(last, **weight_checksum(policy, start))
    return res


def run_arm(arm: Arm, w, data, mdir, n_steps, *, check: bool = False, lr: float = LR) -> dict:
    texts, ids = data["texts"][: n_steps * w.batch_size], data["ids"][: n_steps * w.batch_size]
    if len(ids) < n_steps * w.batch_size:
        raise RuntimeError(f"{len(ids)} pairs for {n_steps} steps of {w.batch_size}")
    if arm.impl == "dpolab":
        return run_dpolab(arm, w, ids, mdir, n_steps, check=check, lr=lr)
    if arm.impl == "trl":
        return run_trl(arm, w, texts, mdir, n_steps, check=check, lr=lr)
    return run_bare(arm, w, ids, mdir, n_steps, check=check, lr=lr)


def main():
    name, workload, out = sys.argv[1], sys.argv[2], sys.argv[3]
    arm = get_arm(name)
    w = WORKLOADS[workload]
    steps = int(os.environ.get("BENCH_STEPS", w.steps))
    warmup = int(os.environ.get("BENCH_WARMUP", w.warmup))
    check = os.environ.get("BENCH_CHECK") == "1"
    lr = float(os.environ.get("BENCH_LR", LR))
    n_steps = warmup + steps
    import torch

    torch.manual_seed(0)
    mdir = str(model_dir(w.model))
    data = json.loads(data_file(workload, n_steps * w.batch_size).read_text())
    ids = data["ids"][: n_steps * w.batch_size]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"bench-{arm.name}-") as tmp:  # every run folder, removed at the end
        tempfile.tempdir = tmp
        try:
            res = run_arm(arm, w, data, mdir, n_steps, check=check, lr=lr)
            total = time.perf_counter() - t0
        finally:
            tempfile.tempdir = None
    res.update(
        arm=arm.name,
        impl=arm.impl,
        workload=workload,
        warmup=warmup,
        steps=steps,
        batch_size=w.batch_size,
        lr=lr,
        pairs=len(ids),
        reference=reference_label(arm, w.lora),
        fp32=arm.fp32,
        check_run=check,
        total_s=total,
        setup_s=res.pop("first_step_start") - t0,
        peak_rss_mb=peak_rss_mb(),
        torch_threads=torch.get_num_threads(),
        tokens_per_step=[
            sum(
                len(r["prompt_ids"]) * 2 + len(r["chosen_ids"]) + len(r["rejected_ids"])
                for r in ids[s * w.batch_size : (s + 1) * w.batch_size]
            )
            for s in range(n_steps)
        ],
    )
    assert len(res["step_times"]) == n_steps, (arm.name, len(res["step_times"]), n_steps)
    assert all(math.isfinite(t) for t in res["step_times"])
    Path(out).write_text(json.dumps(res))


if __name__ == "__main__":
    main()
