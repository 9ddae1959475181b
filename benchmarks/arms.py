"""One benchmark arm in its own process (clean peak RSS): ``python benchmarks/arms.py ARM WORKLOAD OUT.json``.

Every arm trains the same model (loaded from the same saved folder) on the same pairs in the same order
(no shuffling), batch size, AdamW lr 1e-5, linear schedule, gradient clipping 1.0, DPO (sigmoid, beta 0.1), fp32,
dropout off, a live reference (a frozen copy; with LoRA the adapter-disabled base) unless the arm says otherwise.
Step time = wall clock between the ends of consecutive optimiser steps (data collation, forward, backward, optimiser,
logging: everything the trainer does per step). Setup = from loading the data to the start of the first step (model
loading, TRL's dataset processing, dpolab's reference precomputation); run total = setup + every step.
"""
from __future__ import annotations

import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workloads import WORKLOADS, data_file, model_dir  # noqa: E402

LR, BETA = 1e-5, 0.1
DPOLAB_ARMS = {
    "dpolab": [],
    "dpolab-packed": ["train.layout=packed"],
    "dpolab-padded": ["train.layout=padded"],
    "dpolab-plain": ["train.layout=padded", "train.logits=full"],
    "dpolab-recompute": ["train.logits=response-recompute"],
    "dpolab-precomputed-ref": ["reference.mode=precomputed"],
    "dpolab-live-ref": [],  # reference.mode=copy (adapter under LoRA): the reference forward inside every step
    "dpolab-bf16": ["train.bf16=true"],
}
ARMS = list(DPOLAB_ARMS) + ["trl-default", "trl-tuned", "bare"]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_dpolab(arm, w, ids, mdir, n_steps):
    from dpolab.config import build_config
    from dpolab.data.types import TokenizedPair
    from dpolab.engine.trainer import Trainer

    pairs = [TokenizedPair(**r) for r in ids]
    out = tempfile.mkdtemp(prefix=f"bench-{arm}-")
    over = [f"model.name_or_path={mdir}", f"train.max_steps={n_steps}", f"train.batch_size={w.batch_size}",
            f"train.lr={LR}", "train.shuffle=false", "train.warmup_steps=0", "train.schedule=linear",
            "train.max_grad_norm=1.0", f"output.dir={out}", "output.progress=false", "output.save_final=false",
            "eval.at_start=false"]
    if w.lora:
        over += ["lora.enabled=true", "lora.r=16", "lora.alpha=32"]
    if arm == "dpolab-live-ref":
        over.append(f"reference.mode={'adapter' if w.lora else 'copy'}")
    cfg = build_config({"loss": [{"name": "dpo", "params": {"beta": BETA}}]}, over + DPOLAB_ARMS[arm])
    t = Trainer(cfg, train_data=pairs, eval_data=[], log=lambda s: None)
    base = rss_mb()
    ends = [time.perf_counter()]
    inner = t._train_step

    def timed():
        r = inner()
        ends.append(time.perf_counter())
        return r

    t._train_step = timed
    t.fit()
    rows = [json.loads(l) for l in open(Path(out) / "metrics.jsonl") if '"loss"' in l]
    first = next(r for r in rows if r.get("step") == 1)
    return dict(step_times=[b - a for a, b in zip(ends, ends[1:])], loss0=first["loss"], first_step_start=ends[0],
                logps_chosen0=first["logps/chosen"], base_rss_mb=base, reference_mode=t.reference.mode)


def run_trl(arm, w, texts, mdir, n_steps):
    import torch
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(mdir)
    model = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32)
    ds = Dataset.from_list(texts)
    kw = dict(output_dir=tempfile.mkdtemp(prefix=f"bench-{arm}-"), use_cpu=True, bf16=False, report_to=[],
              per_device_train_batch_size=w.batch_size, max_steps=n_steps, learning_rate=LR, beta=BETA,
              logging_steps=1, save_strategy="no", disable_tqdm=True, max_grad_norm=1.0, warmup_steps=0)
    if arm == "trl-tuned":
        kw.update(gradient_checkpointing=False)
    args = DPOConfig(**kw)
    peft_config = None
    if w.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")

    class Ordered(DPOTrainer):  # the same pair order as every other arm (TRL would shuffle)
        def _get_train_sampler(self, *a, **k):
            return SequentialSampler(self.train_dataset)

    ends, logs = [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **k):
            if not ends:
                ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **k):
            ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **k):
            if logs and "loss" in logs:
                log_rows.append(dict(logs))

    log_rows = logs
    trainer = Ordered(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_config,
                      callbacks=[Clock()])
    base = rss_mb()
    trainer.train()
    first = log_rows[0]
    return dict(step_times=[b - a for a, b in zip(ends, ends[1:])], loss0=first["loss"], first_step_start=ends[0],
                logps_chosen0=first.get("logps/chosen"), base_rss_mb=base,
                gradient_checkpointing=bool(args.gradient_checkpointing))


def run_bare(arm, w, ids, mdir, n_steps):
    """A plain PyTorch DPO loop: concatenated chosen+rejected forward on a right-padded batch, full logits."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32)
    if w.lora:
        from peft import LoraConfig, get_peft_model

        policy = get_peft_model(policy, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                   task_type="CAUSAL_LM"))
        ref = None
    else:
        ref = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32).eval().requires_grad_(False)
    policy.train()
    pad = policy.config.pad_token_id if policy.config.pad_token_id is not None else 0
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / n_steps))

    def logps(model, x, attn, mask):
        logits = model(input_ids=x, attention_mask=attn).logits[:, :-1].float()
        lp = logits.log_softmax(-1).gather(2, x[:, 1:, None]).squeeze(2)
        return (lp * mask[:, 1:]).sum(-1)

    base = rss_mb()
    ends = [time.perf_counter()]
    loss0 = lp0 = None
    B = w.batch_size
    for step in range(n_steps):
        chunk = ids[step * B:(step + 1) * B]
        seqs = [r["prompt_ids"] + r["chosen_ids"] for r in chunk] + [r["prompt_ids"] + r["rejected_ids"] for r in chunk]
        starts = [len(r["prompt_ids"]) for r in chunk] * 2
        T = max(map(len, seqs))
        x = torch.full((len(seqs), T), pad, dtype=torch.long)
        attn = torch.zeros_like(x)
        mask = torch.zeros(x.shape)
        for i, (s, st) in enumerate(zip(seqs, starts)):
            x[i, :len(s)] = torch.tensor(s)
            attn[i, :len(s)] = 1
            mask[i, st:len(s)] = 1
        pol = logps(policy, x, attn, mask)
        with torch.no_grad():
            if ref is None:
                with policy.disable_adapter():
                    rl = logps(policy, x, attn, mask)
            else:
                rl = logps(ref, x, attn, mask)
        h = (pol[:B] - rl[:B]) - (pol[B:] - rl[B:])
        loss = -F.logsigmoid(BETA * h).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step == 0:
            loss0, lp0 = float(loss), float(pol[:B].mean())
        ends.append(time.perf_counter())
    return dict(step_times=[b - a for a, b in zip(ends, ends[1:])], loss0=loss0, logps_chosen0=lp0, base_rss_mb=base,
                first_step_start=ends[0])


def main():
    arm, workload, out = sys.argv[1], sys.argv[2], sys.argv[3]
    w = WORKLOADS[workload]
    steps = int(os.environ.get("BENCH_STEPS", w.steps))
    warmup = int(os.environ.get("BENCH_WARMUP", w.warmup))
    n_steps = warmup + steps
    import torch

    torch.manual_seed(0)
    mdir = str(model_dir(w.model))
    data = json.loads(data_file(workload, n_steps * w.batch_size).read_text())
    texts, ids = data["texts"][: n_steps * w.batch_size], data["ids"][: n_steps * w.batch_size]
    t0 = time.perf_counter()
    if arm in DPOLAB_ARMS:
        res = run_dpolab(arm, w, ids, mdir, n_steps)
    elif arm.startswith("trl"):
        res = run_trl(arm, w, texts, mdir, n_steps)
    elif arm == "bare":
        res = run_bare(arm, w, ids, mdir, n_steps)
    else:
        raise SystemExit(f"unknown arm {arm}; valid: {', '.join(ARMS)}")
    res.update(arm=arm, workload=workload, warmup=warmup, steps=steps, batch_size=w.batch_size,
               total_s=time.perf_counter() - t0, setup_s=res.pop("first_step_start") - t0, peak_rss_mb=peak_rss_mb(), torch_threads=torch.get_num_threads(),
               tokens_per_step=[sum(len(r["prompt_ids"]) * 2 + len(r["chosen_ids"]) + len(r["rejected_ids"])
                                    for r in ids[s * w.batch_size:(s + 1) * w.batch_size]) for s in range(n_steps)])
    assert len(res["step_times"]) == n_steps, (arm, len(res["step_times"]), n_steps)
    assert all(math.isfinite(t) for t in res["step_times"])
    Path(out).write_text(json.dumps(res))


if __name__ == "__main__":
    main()
