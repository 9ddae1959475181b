"""The training loop, on Hugging Face Accelerate. It knows an objective (:mod:`dpolab.engine.objectives`), never a mode.

``Trainer.__init__`` sets up: run folder, data, model (+ checkpoint weights), optimiser, ``accelerator.prepare``,
then the objective's parts that need the placed model (reference, probes), then the RNG state of a resumed run.
``Trainer.fit`` runs the loop: each optimiser step's micro-batches are forwarded and back-propagated (each scaled by
its share of the step's units, so accumulation equals one big batch), the gradient is clipped, checked and applied,
metrics are logged, and evaluation and checkpoints happen on schedule.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from ..atomic import remove_stale
from ..config import RunConfig
from ..models.load import count_parameters, describe_model, load_tokenizer, save_model
from .batching import BatchPlan, eval_batches
from .checkpoint import restore_training, restore_weights, save_checkpoint, set_rng_state
from .collation import Collator, model_width
from .data_setup import cap_eval_data, prepare_data
from .errors import TrainError, check_finite, first_line, is_oom
from .logging import MetricsLogger, to_float
from .memory import PeakMemory
from .objectives import RunContext, RunParts, get_objective
from .optim import build_optimizer, build_scheduler
from .precision import bar_interval, progress_bar
from .reduce import across_processes, eval_metrics, weighted_means
from .resume_guard import check_resumable, check_same_data, data_fingerprint, record_start
from .run_folder import DONE_MARKER, check_free_space, check_output_dir, checkpoint_bytes, claim_run_folder, publish
from .runtime import configure_runtime

EvalHook = Callable[[Any, Any, int], Dict[str, float]]
__all__ = ["Trainer", "TrainError", "train", "DONE_MARKER"]


class Trainer:
    def __init__(
        self,
        cfg: RunConfig,
        *,
        train_data: Optional[list] = None,
        eval_data: Optional[list] = None,
        eval_hooks: Sequence[EvalHook] = (),
        resume: bool = False,
        log: Optional[Callable[[str], None]] = None,
        accelerator=None,
    ):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own bar is enough; HF's save/load bars would interleave with it
        if accelerator is None:
            from accelerate import Accelerator

            accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.cfg, self.accelerator, self.memory = cfg, accelerator, PeakMemory()
        self.objective = get_objective(cfg.train.mode)(cfg)
        self.is_main = accelerator.is_main_process
        self._log = log or (lambda s: print(s, file=sys.stderr))
        list(map(self.log, describe_model(cfg.model, cfg.train.mode)))  # first: which model (a warning if the default)
        self.runtime = configure_runtime(cfg.train, accelerator.device, self.log)  # bf16, threads, compile: logged
        self.run_dir, self.eval_hooks = Path(cfg.output.dir), list(eval_hooks)

        self.lock = claim_run_folder(self.run_dir, owner=self) if self.is_main else None  # one writer per run folder
        try:
            self._setup(cfg, train_data, eval_data, resume)
        except BaseException:
            self.close()
            if self.lock is not None:  # refused before it started: no empty folder (or lock file) of ours left behind
                self.lock.remove_unused()
            raise

    def _setup(self, cfg: RunConfig, train_data, eval_data, resume: bool) -> None:
        accelerator = self.accelerator
        ckpt, changes = check_resumable(self.run_dir, cfg, self.log) if resume else (None, {})
        if (
            self.is_main
        ):  # an earlier run needs --resume or output.overwrite (a --resume with nothing to resume restarts)
            check_output_dir(self.run_dir, cfg.output.overwrite or resume and ckpt is None, resume=ckpt is not None)
            remove_stale(self.run_dir)  # temporaries of a process killed while writing here (e.g. publishing final/)
        accelerator.wait_for_everyone()
        torch.manual_seed(cfg.train.seed)

        # data
        self.tokenizer, self.data_stats = load_tokenizer(cfg.model), {}  # data_stats: what truncation cut, per split
        if train_data is None:
            train_data, prepared_eval = prepare_data(
                cfg.data, self.tokenizer, self.objective.data_kind, cfg.train.seed, log=self.log, stats=self.data_stats
            )
            eval_data = prepared_eval if eval_data is None else eval_data
        if not train_data:
            raise TrainError("no training examples")
        self.train_data, self.eval_data = train_data, cap_eval_data(eval_data, cfg.eval.max_examples, self.log)
        self.data_sha = check_same_data(ckpt, data_fingerprint(self.train_data))  # resumed on the same examples only
        lengths = [self.objective.length(x) for x in self.train_data]
        max_positions = max(1024, max(lengths + [self.objective.length(x) for x in self.eval_data]))

        # model and optimisation
        self.policy = self.objective.build_model(self.tokenizer, seed=cfg.train.seed, max_positions=max_positions)
        if ckpt is not None:
            restore_weights(self.policy, ckpt / "model")
        self.params = count_parameters(self.policy)
        if self.is_main:
            check_free_space(
                self.run_dir, checkpoint_bytes(self.policy, cfg.lora.enabled, cfg.train.optimizer), cfg.output.keep_last
            )
        t = cfg.train
        self.plan = BatchPlan(
            len(self.train_data),
            t.batch_size,
            t.grad_accum,
            accelerator.num_processes,
            t.seed,
            t.shuffle,
            lengths=lengths if t.length_grouped else None,
            length_grouped=t.length_grouped,
        )
        self.total_steps = t.max_steps or max(1, math.ceil(t.epochs * self.plan.steps_per_epoch))
        self.optimizer = build_optimizer(self.policy.parameters(), t)
        self.scheduler = build_scheduler(self.optimizer, t, self.total_steps)
        state = restore_training(ckpt, self.optimizer, self.scheduler)  # None without a checkpoint
        st = state["state"] if state else {}
        self.step, self.skipped_steps, self.elapsed = (st.get(k, 0) for k in ("step", "skipped_steps", "elapsed_s"))
        self.model, self.optimizer = accelerator.prepare(self.policy, self.optimizer)

        # the objective's parts that need the model on its device (reference, probes)
        self.collate = Collator(
            self.objective, self.tokenizer.pad_token_id, t.layout, model_width(self.policy), accelerator.device
        )
        parts = RunParts(
            tokenizer=self.tokenizer,
            collate=self.collate,
            run_dir=self.run_dir,
            total_steps=self.total_steps,
            max_positions=max_positions,
            bf16=self.runtime.bf16,
            resuming=ckpt is not None,
            progress=partial(progress_bar, enabled=cfg.output.progress and self.is_main),
            resumed=state["state"].get("objective") if state else None,
        )
        self.objective.setup(
            RunContext(
                cfg=cfg,
                accelerator=accelerator,
                model=self.model,
                train_data=self.train_data,
                eval_data=self.eval_data,
                parts=parts,
                autocast=self.runtime.autocast,
                log=self.log,
                is_main=self.is_main,
            )
        )
        if state is not None:
            self.objective.load_state_dict(state["loss_state"])
            set_rng_state(state["rng"])  # last: building the parts above may draw random numbers
            self.log(f"resumed from {ckpt} at step {self.step}")
        self.metrics = MetricsLogger(
            self.run_dir,
            enabled=self.is_main,
            tensorboard=cfg.output.tensorboard,
            wandb=cfg.output.wandb,
            config=cfg.to_dict(),
            resume_step=self.step if ckpt else None,
        )
        if self.is_main:  # config.yaml of a fresh run; a resumed run keeps its own and records allowed changes
            record_start(self.run_dir, cfg, ckpt, changes, self.step, self.log)

    def close(self) -> None:
        """Release the run folder (done by :meth:`fit` when it ends, however it ends)."""
        if self.lock is not None:
            self.lock.release()

    @property
    def reference(self):
        """The objective's reference policy, if it has one."""
        return getattr(self.objective, "reference", None)

    def log(self, msg: str) -> None:
        if getattr(self, "is_main", True):
            self._log(msg)

    # -- one optimiser step ---------------------------------------------------------------------------------------
    def _accumulate(self) -> List[Dict[str, Any]]:
        """Forward and backward of this step's micro-batches (gradients summed, as one big batch's); their metrics."""
        acc, world = self.accelerator, self.accelerator.num_processes
        step_units = sum(self.objective.units(self.train_data[i]) for i in self.plan.step_indices(self.step))
        micros = self.plan.micro_batches(self.step, acc.process_index)
        batches = [self.collate(micro, self.train_data) for micro in micros]
        states = self.objective.begin_step(self.model, batches, self.step)  # one per micro-batch
        rows = []
        for j, (batch, state) in enumerate(zip(batches, states, strict=True)):
            with nullcontext() if j == len(batches) - 1 else acc.no_sync(self.model):  # sync gradients once per step
                r = self.objective.forward(self.model, batch, training=True, state=state)
                acc.backward(r.objective * world / step_units)
            rows.append({**r.metrics, "_weight": r.weight, "_tokens": batch.tokens()})
        return rows

    def _train_step(self) -> Optional[Dict[str, Any]]:
        t0 = time.perf_counter()
        acc = self.accelerator
        rows = self._accumulate()
        max_norm = self.cfg.train.max_grad_norm
        grad_norm = float(
            acc.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], max_norm if max_norm else float("inf")
            )
        )
        loss_value = sum(float(to_float(r["loss"])) * r["_weight"] for r in rows) / max(
            1e-12, sum(r["_weight"] for r in rows)
        )
        if not (math.isfinite(grad_norm) and math.isfinite(loss_value)):
            self.optimizer.zero_grad(set_to_none=True)
            what = f"loss {loss_value}, grad norm {grad_norm}"
            if self.cfg.train.on_nonfinite == "skip":
                self.skipped_steps += 1
                self.log(f"step {self.step + 1}: non-finite ({what}); step skipped ({self.skipped_steps} so far)")
                with warnings.catch_warnings():  # the schedule follows the loop's steps, taken or skipped
                    warnings.simplefilter("ignore", UserWarning)
                    self.scheduler.step()
                self.step += 1
                return None
            raise TrainError(
                f"step {self.step + 1}: non-finite {what}. The last good checkpoint is kept. Try a lower "
                f"train.lr, train.max_grad_norm, fp32 (train.bf16=false), or train.on_nonfinite=skip"
            )
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.objective.end_step(self.model, self.step)
        dt = time.perf_counter() - t0
        self.elapsed += dt
        out = {**weighted_means(rows), **self.objective.set_statistics(rows)}
        out, tokens = across_processes(out, sum(r["_weight"] for r in rows), sum(r["_tokens"] for r in rows), acc)
        out.update(
            {
                "step": self.step,
                "epoch": round(self.step / self.plan.steps_per_epoch, 4),
                "grad_norm": grad_norm,
                "lr": lr,
                "tokens_per_s": tokens / max(dt, 1e-9),
                "time/step_s": dt,
                "time/elapsed_s": self.elapsed,
                "mem/peak_mb": self.memory.sample(),
            }
        )
        return out

    @torch.no_grad()
    def evaluate(self) -> Dict[str, Any]:
        """Metrics on the eval set (the objective's own plus what it adds, e.g. probes) and the eval hooks'."""
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        self.memory.sample()
        out: Dict[str, Any] = {"step": self.step}
        if self.eval_data:
            acc, rows, data = self.accelerator, [], self.eval_data
            with self.objective.evaluation(data):  # each process scores its share of the one-process batches
                for b, idx in eval_batches(len(data), self.cfg.eval.batch_size, acc.process_index, acc.num_processes):
                    r = self.objective.forward(
                        model, self.collate(idx, data, self.objective.eval_offset), training=False
                    )
                    rows.append({**r.metrics, "_weight": r.weight, "_batch": b})
                out.update({f"eval/{k}": v for k, v in eval_metrics(rows, self.objective.set_statistics, acc).items()})
        out.update(self.objective.eval_extras(model))
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
                    self.run_dir,
                    self.step,
                    keep_last=self.cfg.output.keep_last,
                    save_model=lambda p: save_model(model, self.tokenizer, p, self.cfg.model, self.cfg.train.seed),
                    optimizer=self.optimizer,
                    scheduler=self.scheduler,
                    loss_state=self.objective.state_dict(),
                    state={
                        "skipped_steps": self.skipped_steps,
                        "elapsed_s": self.elapsed,
                        "total_steps": self.total_steps,
                        "objective": self.objective.record(),
                        "data_sha256": self.data_sha,
                    },
                )
            except OSError as e:  # disk full, folder removed or made read-only mid-run
                raise TrainError(
                    f"could not write the step-{self.step} checkpoint in {self.run_dir}: {e.strerror or e}; "
                    f"the previous checkpoint is kept (--resume continues from it)"
                ) from e
        self.accelerator.wait_for_everyone()

    # -- the loop -------------------------------------------------------------------------------------------------
    def fit(self) -> Dict[str, Any]:
        """Train to ``total_steps``; returns the summary (also written to ``summary.json``)."""
        cfg = self.cfg
        self.log(
            f"{cfg.train.mode} training: {len(self.train_data)} examples, {self.total_steps} steps, "
            f"{self.params['trainable']:,} of {self.params['total']:,} parameters trainable "
            f"({getattr(self.policy.config, 'model_type', 'unknown family')}) -> {self.run_dir}"
        )
        self.model.train()
        first_eval = last_eval = None
        from tqdm.auto import tqdm

        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc=cfg.train.mode,
            unit="step",
            disable=not (cfg.output.progress and self.is_main),
            dynamic_ncols=True,
            mininterval=bar_interval(),
        )
        try:
            try:
                if cfg.eval.at_start and self.step == 0:
                    first_eval = last_eval = self.metrics.log(self.evaluate())
                while self.step < self.total_steps:
                    row = self._train_step()
                    bar.update(1)
                    if row is not None and (self.step % cfg.train.log_every == 0 or self.step == self.total_steps):
                        self.metrics.log(row)
                        bar.set_postfix(**self.objective.postfix(row))
                    if cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < self.total_steps:
                        last_eval = self.metrics.log(self.evaluate())
                    if (
                        cfg.output.save_every
                        and self.step % cfg.output.save_every == 0
                        and self.step < self.total_steps
                    ):
                        self._checkpoint()
                last_eval = self.metrics.log_final_eval(self.step, self.evaluate)  # once, even when resumed after it
            except (RuntimeError, MemoryError) as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
                if not is_oom(e):
                    raise
                raise TrainError(
                    f"out of memory at step {self.step + 1} ({first_line(e)}): lower train.batch_size (raise "
                    "train.grad_accum to keep the global batch), data.max_length or eval.batch_size, or use "
                    "lora.enabled=true or train.bf16=true. The last checkpoint is kept (--resume)"
                ) from e
            check_finite(self.accelerator.unwrap_model(self.model), last_eval, self.step)
            self._checkpoint()
            summary = self._finish(first_eval, last_eval)
        finally:
            bar.close()
            self.close()
        self.metrics.close()
        return summary

    def _finish(self, first_eval, last_eval) -> Dict[str, Any]:
        summary = {
            "mode": self.cfg.train.mode,
            "steps": self.step,
            "skipped_steps": self.skipped_steps,
            "train_examples": len(self.train_data),
            "eval_examples": len(self.eval_data),
            "wall_clock_s": round(self.elapsed, 3),
            "peak_memory_mb": round(self.memory.sample(), 1),
            "parameters": self.params,
            "first_eval": first_eval,
            "final_eval": last_eval,
            **self.objective.summary(),
            "runtime": self.runtime.record(),
            "data": self.data_stats,
        }
        if self.is_main:
            final = (
                self.objective.model_to_save(self.accelerator.unwrap_model(self.model))
                if self.cfg.output.save_final
                else None
            )
            publish(
                self.run_dir,
                summary,
                final and (lambda p: save_model(final, self.tokenizer, p, self.cfg.model, self.cfg.train.seed)),
            )
        self.accelerator.wait_for_everyone()
        return summary


def train(cfg: RunConfig, **kwargs: Any) -> Dict[str, Any]:
    """Build a :class:`Trainer` and run it, or run the objective's own driver of several trainer phases
    (:meth:`~dpolab.engine.objectives.base.Objective.driver`, e.g. iterative online training)."""
    driver = get_objective(cfg.train.mode).driver(cfg)
    return driver(cfg, **kwargs) if driver is not None else Trainer(cfg, **kwargs).fit()
