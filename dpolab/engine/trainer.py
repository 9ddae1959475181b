"""One training loop for SFT and preference optimisation, on Hugging Face Accelerate.

Read top to bottom: ``Trainer.__init__`` sets up (data, model, reference, loss, optimiser, resume) and
``Trainer.fit`` runs the loop: for each optimiser step, its micro-batches are forwarded and back-propagated
(each scaled by its share of the step's examples or tokens, so accumulation equals one big batch), the
gradient is clipped, checked and applied, metrics are logged, and evaluation and checkpoints happen on schedule.
"""
from __future__ import annotations

import json
import math
import os
import resource
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from ..errors import UserError
from ..config import RunConfig, save_config
from ..data.collate import collate_preference_fast, collate_sft_fast
from ..losses import CompositeLoss
from ..models.load import count_parameters, load_policy, load_tokenizer, save_model
from ..models.reference import Reference, data_fingerprint, weights_fingerprint
from .batching import BatchPlan, iterate_in_batches
from .checkpoint import latest_checkpoint, load_training_state, save_checkpoint, set_rng_state
from .data_setup import prepare_data
from .logging import MetricsLogger, to_float
from .optim import build_optimizer, build_scheduler
from .steps import preference_step, rm_step, sft_step

DONE_MARKER = "DONE"
EvalHook = Callable[[Any, Any, int], Dict[str, float]]


class TrainError(UserError, RuntimeError):
    """Training cannot go on (non-finite loss, unusable output folder, out of memory); the message says why."""


def current_rss_mb() -> float:
    """Resident memory of this process now (Linux /proc; the lifetime peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakMemory:
    """Peak memory of one run: GPU allocator peak, or the largest RSS sampled at each step and evaluation.

    Sampling (rather than the process's lifetime maximum) keeps runs apart when a study runs many in one process.
    """

    def __init__(self) -> None:
        self.peak = 0.0
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def sample(self) -> float:
        now = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else current_rss_mb()
        self.peak = max(self.peak, now)
        return self.peak


def _autocast_factory(bf16: bool, device: torch.device):
    """A zero-argument context factory: bf16 autocast on the run's device, or nothing."""
    if not bf16:
        return nullcontext
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainError("train.bf16=true but this GPU has no bf16 support; set train.bf16=false")
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _bar_interval() -> float:
    """Refresh often on a terminal; rarely when the output goes to a log file."""
    return 0.1 if sys.stderr.isatty() else 10.0


def _check_output_dir(run_dir: Path, overwrite: bool, resume: bool) -> None:
    if (run_dir / DONE_MARKER).exists() and not (overwrite or resume):
        raise TrainError(f"{run_dir} already holds a finished run; set output.overwrite=true or choose another output.dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as e:
        raise TrainError(f"output folder {run_dir} is not writable: {e.strerror or e}") from None
    if overwrite and not resume:
        for name in ("checkpoints", "final", DONE_MARKER, "metrics.jsonl", "summary.json"):
            p = run_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


def _checkpoint_bytes(model, cfg: RunConfig) -> int:
    """About how much one checkpoint takes: the saved weights (all, or the LoRA adapter) and the optimiser state."""
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    weights = trainable if cfg.lora.enabled else sum(p.numel() * p.element_size() for p in model.parameters())
    states = {"adamw": 2, "rmsprop": 1, "sgd": 1}.get(cfg.train.optimizer, 2)
    return weights + states * sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)


def _check_free_space(run_dir: Path, ckpt_bytes: int, keep_last: int) -> None:
    """Fail before training when the disk cannot hold the checkpoints (kept ones + the one being written) and the
    final model, rather than after hours of training."""
    need = ckpt_bytes * (max(1, keep_last) + 1) + ckpt_bytes + 16 * 2**20
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise TrainError(f"output folder {run_dir} has {free / 2**20:.0f} MB free but this run needs about "
                         f"{need / 2**20:.0f} MB ({keep_last} kept checkpoint(s) of ~{ckpt_bytes / 2**20:.0f} MB, one being "
                         f"written, the final model); free some space, lower output.keep_last, or choose another output.dir")


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    text = str(e)
    return "out of memory" in text.lower() or "can't allocate" in text or "cannot allocate memory" in text.lower()


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:160]


def _load_weights(model, folder: Path) -> None:
    """Restore trainable weights saved by ``save_pretrained`` (full model or LoRA adapter)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise TrainError(f"checkpoint {folder} has no .safetensors weights")
    state: Dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    if (folder / "adapter_config.json").exists():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state)
    else:
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {n for n in missing if "lm_head" in n}  # tied to the input embeddings, not saved separately
        if set(missing) - tied or unexpected:
            raise TrainError(f"checkpoint {folder} does not match the model (missing {sorted(set(missing) - tied)[:3]}, unexpected {unexpected[:3]})")


class Trainer:
    def __init__(self, cfg: RunConfig, *, train_data: Optional[list] = None, eval_data: Optional[list] = None,
                 eval_hooks: Sequence[EvalHook] = (), resume: bool = False, log: Optional[Callable[[str], None]] = None):
        from accelerate import Accelerator
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own bar is enough; HF's save/load bars would interleave with it
        self.cfg = cfg
        self.memory = PeakMemory()
        self.mode = cfg.train.mode
        # Mixed precision is our own autocast (not Accelerator's, whose process-wide state would pin the first
        # run's choice for every later run in the same process, e.g. a study grid).
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.autocast = _autocast_factory(cfg.train.bf16, self.accelerator.device)
        self.is_main = self.accelerator.is_main_process
        self._log = log or (lambda s: print(s, file=sys.stderr))
        self.run_dir = Path(cfg.output.dir)
        self.eval_hooks = list(eval_hooks)

        ckpt = latest_checkpoint(self.run_dir) if resume else None
        if resume and ckpt is None:
            self.log(f"--resume: no complete checkpoint in {self.run_dir}; starting from the beginning")
        if self.is_main:
            _check_output_dir(self.run_dir, cfg.output.overwrite, resume=ckpt is not None)
        self.accelerator.wait_for_everyone()
        torch.manual_seed(cfg.train.seed)

        # data
        self.tokenizer = load_tokenizer(cfg.model)
        if train_data is None:
            train_data, prepared_eval = prepare_data(cfg.data, self.tokenizer, self.mode, cfg.train.seed, log=self.log)
            eval_data = prepared_eval if eval_data is None else eval_data
        if not train_data:
            raise TrainError("no training examples")
        self.train_data = train_data
        self.eval_data = (eval_data or [])[: cfg.eval.max_examples] if cfg.eval.max_examples else (eval_data or [])
        max_len = max(self._length(x) for x in list(self.train_data) + list(self.eval_data))

        # model, reference, loss
        self.max_positions = max(1024, max_len)  # tiny presets: room for the longest example
        load_model = load_policy
        if self.mode == "rm":  # a scalar-head reward model on the same backbone (dpolab/rewards/model.py)
            from ..rewards.model import load_reward_model as load_model
        self.policy = load_model(cfg.model, cfg.lora, self.tokenizer, seed=cfg.train.seed, max_positions=self.max_positions)
        if ckpt is not None:
            _load_weights(self.policy, ckpt / "model")
        self.params = count_parameters(self.policy)
        if self.is_main:
            _check_free_space(self.run_dir, _checkpoint_bytes(self.policy, cfg), cfg.output.keep_last)
        self.loss = CompositeLoss(cfg.loss) if self.mode == "preference" else None

        # optimisation
        self.plan = BatchPlan(len(self.train_data), cfg.train.batch_size, cfg.train.grad_accum,
                              self.accelerator.num_processes, cfg.train.seed, cfg.train.shuffle,
                              lengths=[self._length(x) for x in self.train_data] if cfg.train.length_grouped else None,
                              length_grouped=cfg.train.length_grouped)
        self.total_steps = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * self.plan.steps_per_epoch))
        self.reference = self._build_reference(ckpt) if self.mode == "preference" else None
        self.optimizer = build_optimizer(self.policy.parameters(), cfg.train)
        self.scheduler = build_scheduler(self.optimizer, cfg.train, self.total_steps)
        self.step = 0
        self.skipped_steps = 0
        self.elapsed = 0.0
        if ckpt is not None:
            st = load_training_state(ckpt)
            self.optimizer.load_state_dict(st["optimizer"])
            self.scheduler.load_state_dict(st["scheduler"])
            set_rng_state(st["rng"])
            if self.loss is not None:
                self.loss.load_state_dict(st["loss_state"])
            self.step = st["state"]["step"]
            self.skipped_steps = st["state"].get("skipped_steps", 0)
            self.elapsed = st["state"].get("elapsed_s", 0.0)
            self.log(f"resumed from {ckpt} at step {self.step}")
        self.model, self.optimizer = self.accelerator.prepare(self.policy, self.optimizer)
        if self.loss is not None:
            for _, _, info, fn, _ in self.loss.components:
                if info.stateful and hasattr(fn, "all_gather") and self.accelerator.num_processes > 1:
                    fn.all_gather = self.accelerator.gather  # statistics over the global batch
                    fn.rank = self.accelerator.process_index
        self.probes, self.probe_baseline = self._build_probes(ckpt) if cfg.eval.probes else (None, None)
        self.metrics = MetricsLogger(self.run_dir, enabled=self.is_main, tensorboard=cfg.output.tensorboard,
                                     wandb=cfg.output.wandb, config=cfg.to_dict(), resume_step=self.step if ckpt else None)
        if self.is_main:
            save_config(cfg, self.run_dir / "config.yaml")

    # -- set-up helpers -----------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        if getattr(self, "is_main", True):
            self._log(msg)

    def _length(self, x) -> int:
        if self.mode == "sft":
            return len(x.prompt_ids) + len(x.completion_ids)
        return len(x.prompt_ids) + max(len(x.chosen_ids), len(x.rejected_ids))

    def _build_reference(self, ckpt) -> Optional[Reference]:
        cfg = self.cfg
        if not self.loss.needs_reference:
            return None
        mode = cfg.reference.mode
        if mode == "none":
            raise TrainError("reference.mode is 'none' but the loss needs a reference model")
        if cfg.reference.name_or_path:
            from ..config import ModelConfig
            from ..models.load import load_base_model

            sep = load_base_model(ModelConfig(name_or_path=cfg.reference.name_or_path, dtype=cfg.model.dtype), self.tokenizer)
            self.reference_mode = "separate"
            return Reference("copy", self.policy, separate_model=sep)
        live_mode = "adapter" if cfg.lora.enabled else "copy"
        if mode == "auto":
            mode = self._auto_reference_mode(ckpt, live_mode)
            self.log(f"reference: {'log-probs precomputed once' if mode == 'precomputed' else 'live ' + mode} "
                     f"(reference.mode=auto; set reference.mode={live_mode} or precomputed to choose)")
        self.reference_mode = mode
        if mode != "precomputed":
            if ckpt is not None and mode == "copy":
                # the policy already holds trained weights: rebuild the starting weights for the reference
                start = load_policy(cfg.model, cfg.lora.__class__(enabled=False), self.tokenizer, seed=cfg.train.seed,
                                    max_positions=self.max_positions)
                return Reference("copy", self.policy, separate_model=start)
            return Reference(mode, self.policy)
        ref = Reference("precomputed", self.policy)
        everything = list(self.train_data) + list(self.eval_data)
        key = "-".join([weights_fingerprint(self.policy) if ckpt is None else "resume", data_fingerprint(everything)])
        cache_dir = self._ref_cache_dir()
        cache_file = cache_dir / f"ref-{key}.pt"
        if ckpt is not None:
            found = sorted(cache_dir.glob(f"ref-*-{data_fingerprint(everything)}.pt"))
            if not found:
                raise TrainError(f"resuming a precomputed-reference run needs its cache in {cache_dir}, which is gone")
            cache_file = found[-1]
        batches = (self._collate(list(range(i, min(i + cfg.eval.batch_size, len(everything)))), everything)
                   for i in range(0, len(everything), cfg.eval.batch_size))
        with self.accelerator.main_process_first():  # the main process writes the cache; the others then load it
            ref.precompute(live_mode, batches, len(everything), cache_file, progress=self._progress, autocast=self.autocast)
        self._ref_offset_eval = len(self.train_data)
        self._ref_eval_data = self.eval_data  # the table covers exactly these eval examples
        return ref

    def _reference_passes(self) -> tuple[int, int]:
        """(examples a live reference scores over the run, examples a precomputed one scores once)."""
        cfg = self.cfg
        seen = self.total_steps * cfg.train.batch_size * cfg.train.grad_accum * self.accelerator.num_processes
        n_evals = (self.total_steps // cfg.eval.every if cfg.eval.every else 0) + int(cfg.eval.at_start) + 1
        return seen + n_evals * len(self.eval_data), len(self.train_data) + len(self.eval_data)

    def _auto_reference_mode(self, ckpt, live_mode: str) -> str:
        """reference.mode=auto: precompute the reference log-probs when that scores no more examples than a live
        reference would (a run of at least about one epoch), which also frees the reference's memory; else live.
        Both give the same log-probs. A resumed run keeps a precomputed table only if its cache is still there."""
        live, once = self._reference_passes()
        if live < once:
            return live_mode
        if ckpt is not None and not any(self._ref_cache_dir().glob("ref-*.pt")):
            return live_mode
        return "precomputed"

    def _ref_cache_dir(self) -> Path:
        return Path(self.cfg.reference.cache_dir) if self.cfg.reference.cache_dir else self.run_dir / "ref_cache"

    def _build_probes(self, ckpt):
        """The probe set and its scores under the starting policy, saved so a resumed run reuses both."""
        from ..diagnostics.probes import build_probe_set, score_probes

        path = self.run_dir / "probes.pt"
        if ckpt is not None and path.exists():
            saved = torch.load(path, weights_only=False)
            return saved["probes"], saved["baseline"]
        if ckpt is not None:
            raise TrainError(f"resuming a run with eval.probes needs {path}, which is gone")
        source = self.eval_data or self.train_data
        if self.mode != "preference":
            raise TrainError(f"eval.probes needs a policy trained on preference pairs; it is not available in train.mode={self.mode}")
        model = self.accelerator.unwrap_model(self.model)
        probes = build_probe_set(source, self.tokenizer, n=self.cfg.eval.probe_examples, seed=self.cfg.train.seed,
                                 model=model, greedy_tokens=self.cfg.eval.probe_greedy_tokens, batch_size=self.cfg.eval.batch_size,
                                 edges=self.cfg.eval.edit_buckets)
        baseline = score_probes(model, probes, self.tokenizer.pad_token_id, batch_size=self.cfg.eval.batch_size, autocast=self.autocast)
        if self.is_main:
            tmp = path.with_suffix(".tmp")
            torch.save({"probes": probes, "baseline": baseline}, tmp)
            os.replace(tmp, path)
        return probes, baseline

    def _progress(self, it, **kw):
        from tqdm.auto import tqdm

        return tqdm(it, disable=not (self.cfg.output.progress and self.is_main), leave=False,
                    mininterval=_bar_interval(), **kw)

    def _hidden_size(self) -> Optional[int]:
        if not hasattr(self, "_width"):
            from ..models.fastpath import unwrap_hf

            cfg = getattr(unwrap_hf(self.policy), "config", None)
            text = cfg.get_text_config() if cfg is not None and hasattr(cfg, "get_text_config") else cfg
            self._width = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
        return self._width

    def _collate(self, indices: List[int], data: list, offset: int = 0) -> Dict[str, Any]:
        items = [data[i] for i in indices]
        pad = self.tokenizer.pad_token_id
        layout = "padded" if self.mode == "rm" else self.cfg.train.layout  # same log-probs in every layout; see dpolab/models/fastpath.py
        width = self._hidden_size()  # sets the packed rows' length (dpolab/data/packing.py: choose_rows)
        batch = (collate_sft_fast(items, pad, layout, hidden_size=width) if self.mode == "sft"
                 else collate_preference_fast(items, pad, layout, hidden_size=width))
        batch["logits"] = self.cfg.train.logits
        batch["index"] = torch.tensor([i + offset for i in indices], dtype=torch.long)
        dev = self.accelerator.device
        return {k: (v.to(dev) if isinstance(v, torch.Tensor) else
                    {kk: vv.to(dev) for kk, vv in v.items()} if isinstance(v, dict) else v)
                for k, v in batch.items()}

    # -- the loop -----------------------------------------------------------------------------------
    def _units(self, indices: List[int]) -> int:
        """What one step averages over: pairs (preference) or completion tokens incl. EOS (SFT)."""
        if self.mode == "sft":
            return sum(len(self.train_data[i].completion_ids) for i in indices)
        return len(indices)

    def _micro_step(self, micro: List[int], step_units: int, last: bool) -> Dict[str, Any]:
        batch = self._collate(micro, self.train_data)
        world = self.accelerator.num_processes
        sync = nullcontext() if last else self.accelerator.no_sync(self.model)
        with sync:
            if self.mode == "sft":
                nll_sum, tokens, metrics = sft_step(self.model, batch, self.autocast)
                objective = nll_sum * world / step_units
                metrics["loss"] = metrics["nll"]
                weight = float(tokens)
            else:
                mean_obj, metrics = (rm_step(self.model, batch, self.autocast, self.cfg.rm.center_weight) if self.mode == "rm"
                                     else preference_step(self.model, self.reference, self.loss, batch, self.autocast))
                objective = mean_obj * len(micro) * world / step_units
                weight = float(len(micro))
            self.accelerator.backward(objective)
        metrics["_tokens"] = int(batch["attention_mask"].sum())
        metrics["_weight"] = weight
        return metrics

    def _train_step(self) -> Optional[Dict[str, Any]]:
        t0 = time.perf_counter()
        rank = self.accelerator.process_index
        step_units = self._units(self.plan.step_indices(self.step))
        micros = self.plan.micro_batches(self.step, rank)
        rows = [self._micro_step(m, step_units, last=(j == len(micros) - 1)) for j, m in enumerate(micros)]
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = self.cfg.train.max_grad_norm
        grad_norm = self.accelerator.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
        grad_norm = float(grad_norm)
        loss_value = sum(float(to_float(r["loss"])) * r["_weight"] for r in rows) / max(1e-12, sum(r["_weight"] for r in rows))
        if not (math.isfinite(grad_norm) and math.isfinite(loss_value)):
            self.optimizer.zero_grad(set_to_none=True)
            what = f"loss {loss_value}, grad norm {grad_norm}"
            if self.cfg.train.on_nonfinite == "skip":
                self.skipped_steps += 1
                self.log(f"step {self.step + 1}: non-finite ({what}); step skipped ({self.skipped_steps} so far)")
                self.step += 1
                return None
            raise TrainError(
                f"step {self.step + 1}: non-finite {what}. The last good checkpoint is kept. Try a lower train.lr, "
                f"train.max_grad_norm, fp32 (train.bf16=false), or train.on_nonfinite=skip"
            )
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        dt = time.perf_counter() - t0
        self.elapsed += dt
        return self._aggregate(rows, grad_norm=grad_norm, lr=lr, dt=dt)

    def _aggregate(self, rows: List[Dict[str, Any]], **extra: float) -> Dict[str, Any]:
        total_w = sum(r["_weight"] for r in rows)
        keys = [k for k in rows[0] if not k.startswith("_")]
        out: Dict[str, Any] = {}
        for k in keys:
            vals = [(to_float(r[k]), r["_weight"]) for r in rows if k in r]
            if all(isinstance(v, (int, float)) for v, _ in vals):
                out[k] = sum(v * w for v, w in vals) / max(1e-12, sum(w for _, w in vals))
        # ".../min" and ".../max" metrics (MADPO's weights) are extremes over the step, not means
        extremes = sorted(k for k in out if k.endswith(("/min", "/max")))
        for k in extremes:
            out[k] = (min if k.endswith("/min") else max)(to_float(r[k]) for r in rows if k in r)
        if self.mode == "rm":  # exact statistics over the step's pairs, not means of micro-batch statistics
            out.update({k: float(v) for k, v in self._rm_stats(rows).items()})
        tokens = sum(r["_tokens"] for r in rows)
        if self.accelerator.num_processes > 1:  # weighted by each process's pairs / tokens, like one process
            names = sorted(out)
            local_ext = torch.tensor([[out[k] for k in extremes]], dtype=torch.float64)
            t = torch.tensor([out[n] * total_w for n in names] + [total_w, float(tokens)], dtype=torch.float64)
            t = self.accelerator.reduce(t.to(self.accelerator.device), reduction="sum").cpu()
            out = {n: float(v) / max(1e-12, float(t[-2])) for n, v in zip(names, t[:-2].tolist())}
            tokens = float(t[-1])
            if extremes:
                ext = self.accelerator.gather(local_ext.to(self.accelerator.device)).cpu()  # [processes, len(extremes)]
                for j, k in enumerate(extremes):
                    out[k] = float(ext[:, j].min() if k.endswith("/min") else ext[:, j].max())
        out.update({"step": self.step, "epoch": round(self.step / self.plan.steps_per_epoch, 4),
                    "grad_norm": extra["grad_norm"], "lr": extra["lr"], "tokens_per_s": tokens / max(extra["dt"], 1e-9),
                    "time/step_s": extra["dt"], "time/elapsed_s": self.elapsed, "mem/peak_mb": self.memory.sample()})
        return out

    @staticmethod
    def _rm_stats(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
        from ..rewards.model import reward_metrics

        return reward_metrics(torch.cat([r["_rewards"][0] for r in rows]), torch.cat([r["_rewards"][1] for r in rows]))

    def _local_statistics(self) -> list:
        """Point stateful losses' gather hooks at this process only; returns what to restore."""
        saved = []
        for _, _, info, fn, _ in self.loss.components:
            if info.stateful and hasattr(fn, "all_gather"):
                saved.append((fn, fn.all_gather, fn.rank))
                fn.all_gather, fn.rank = (lambda t: t), 0
        return saved

    @torch.no_grad()
    def evaluate(self) -> Dict[str, Any]:
        """Metrics on the eval set (the training objective plus loss-independent log-prob metrics)."""
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        self.memory.sample()
        out: Dict[str, Any] = {"step": self.step}
        if self.eval_data:
            rows = []
            state = self.loss.state_dict() if self.loss is not None else None
            # every process evaluates the whole set: no collective calls (beta-DPO's gather) during evaluation
            gathers = self._local_statistics() if self.loss is not None else []
            offset = getattr(self, "_ref_offset_eval", 0)
            if self.reference is not None and self.reference.mode == "precomputed" and self.eval_data is not self._ref_eval_data:
                raise TrainError("eval_data was replaced after the reference log-probs were precomputed; pass it to "
                                 "Trainer(..., eval_data=...) or set reference.mode=copy (or adapter under LoRA)")
            for idx in iterate_in_batches(list(range(len(self.eval_data))), self.cfg.eval.batch_size):
                batch = self._collate(idx, self.eval_data, offset=offset)
                if self.mode == "sft":
                    nll_sum, tokens, m = sft_step(model, batch, self.autocast)
                    m = {"loss": m["nll"], "_weight": float(tokens)}
                elif self.mode == "rm":
                    _, m = rm_step(model, batch, self.autocast, self.cfg.rm.center_weight)
                    m["_weight"] = float(len(idx))
                else:
                    _, m = preference_step(model, self.reference, self.loss, batch, self.autocast)
                    m["_weight"] = float(len(idx))
                rows.append(m)
            if state is not None:
                self.loss.load_state_dict(state)  # evaluation must not move beta-DPO's statistics
            for fn, gather, rank in gathers:
                fn.all_gather, fn.rank = gather, rank
            total_w = sum(r["_weight"] for r in rows)
            for k in rows[0]:
                if k.startswith("_"):
                    continue
                vals = [(to_float(r[k]), r["_weight"]) for r in rows if k in r]
                if all(isinstance(v, (int, float)) for v, _ in vals):
                    out[f"eval/{k}"] = sum(v * w for v, w in vals) / max(1e-12, total_w)
            if self.mode == "rm":
                out.update({f"eval/{k}": float(v) for k, v in self._rm_stats(rows).items()})
        if self.probes is not None:
            from ..diagnostics.probes import probe_metrics, score_probes

            scores = score_probes(model, self.probes, self.tokenizer.pad_token_id, batch_size=self.cfg.eval.batch_size,
                                  autocast=self.autocast)
            out.update(probe_metrics(scores, self.probe_baseline, self.probes.buckets))
        if self.is_main:
            for hook in self.eval_hooks:
                out.update({f"eval/{k}": v for k, v in hook(model, self.tokenizer, self.step).items()})
        model.train(was_training)
        return out

    def _checkpoint(self) -> None:
        self.accelerator.wait_for_everyone()
        if self.is_main:
            model = self.accelerator.unwrap_model(self.model)
            try:
                save_checkpoint(
                    self.run_dir, self.step,
                    save_model=lambda p: save_model(model, self.tokenizer, p, self.cfg.model, self.cfg.train.seed),
                    optimizer=self.optimizer, scheduler=self.scheduler,
                    loss_state=self.loss.state_dict() if self.loss is not None else {},
                    state={"skipped_steps": self.skipped_steps, "elapsed_s": self.elapsed, "total_steps": self.total_steps},
                    keep_last=self.cfg.output.keep_last,
                )
            except OSError as e:  # disk full, folder removed or made read-only mid-run
                raise TrainError(f"could not write the step-{self.step} checkpoint in {self.run_dir}: {e.strerror or e}; "
                                 f"the previous checkpoint is kept (--resume continues from it)") from None
        self.accelerator.wait_for_everyone()

    def fit(self) -> Dict[str, Any]:
        """Train to ``total_steps``; returns the summary (also written to ``summary.json``)."""
        cfg = self.cfg
        self.log(f"{self.mode} training: {len(self.train_data)} examples, {self.total_steps} steps, "
                 f"{self.params['trainable']:,} of {self.params['total']:,} parameters trainable -> {self.run_dir}")
        self.model.train()
        first_eval = last_eval = None
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"{self.mode}", unit="step",
                   disable=not (cfg.output.progress and self.is_main), dynamic_ncols=True, mininterval=_bar_interval())
        try:
            if cfg.eval.at_start and self.step == 0:
                first_eval = last_eval = self.metrics.log(self.evaluate())
            while self.step < self.total_steps:
                row = self._train_step()
                bar.update(1)
                if row is not None and (self.step % cfg.train.log_every == 0 or self.step == self.total_steps):
                    self.metrics.log(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", **({"acc": f"{row['reward_accuracy']:.2f}"} if "reward_accuracy" in row else {}))
                if cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < self.total_steps:
                    last_eval = self.metrics.log(self.evaluate())
                if cfg.output.save_every and self.step % cfg.output.save_every == 0 and self.step < self.total_steps:
                    self._checkpoint()
            last_eval = self.metrics.log(self.evaluate())
        except (RuntimeError, MemoryError) as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
            if not _is_oom(e):
                raise
            raise TrainError(f"out of memory at step {self.step + 1} ({_first_line(e)}): lower train.batch_size (raise "
                             "train.grad_accum to keep the global batch), data.max_length or eval.batch_size, or use "
                             "lora.enabled=true or train.bf16=true. The last checkpoint is kept (--resume)") from None
        finally:
            bar.close()
        self._checkpoint()
        summary = self._finish(first_eval, last_eval)
        self.metrics.close()
        return summary

    def _finish(self, first_eval, last_eval) -> Dict[str, Any]:
        summary = {
            "mode": self.mode, "steps": self.step, "skipped_steps": self.skipped_steps,
            "train_examples": len(self.train_data), "eval_examples": len(self.eval_data),
            "wall_clock_s": round(self.elapsed, 3), "peak_memory_mb": round(self.memory.sample(), 1),
            "parameters": self.params, "first_eval": first_eval, "final_eval": last_eval,
            "reference_mode": getattr(self, "reference_mode", None) if self.reference is not None else None,
        }
        if self.is_main:
            if self.cfg.output.save_final:
                model = self.accelerator.unwrap_model(self.model)
                tmp = self.run_dir / ".final-tmp"
                if tmp.exists():
                    shutil.rmtree(tmp)
                if self.mode == "rm":  # a plain *ForSequenceClassification model: LoRA adapters merged
                    from ..rewards.model import merged_for_saving

                    model = merged_for_saving(model)
                save_model(model, self.tokenizer, tmp, self.cfg.model, self.cfg.train.seed)
                final = self.run_dir / "final"
                if final.exists():
                    shutil.rmtree(final)
                os.rename(tmp, final)
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
            (self.run_dir / DONE_MARKER).write_text("ok\n")
        self.accelerator.wait_for_everyone()
        return summary


def train(cfg: RunConfig, **kwargs: Any) -> Dict[str, Any]:
    """Build a :class:`Trainer` and run it."""
    return Trainer(cfg, **kwargs).fit()
