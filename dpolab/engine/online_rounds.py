"""Iterative on-policy training (``train.mode=online`` with ``online.rounds`` >= 1): rounds of sample, judge and pair
with the policy as the round starts, then train offline on those pairs.

Why a driver of trainer phases and not an objective: a round trains on a fixed data set, its pairs, with everything
``train.mode=preference`` has (the fast paths, a precomputed reference table, checkpoints, exact resume), so each
round *is* a preference run of the :class:`~dpolab.engine.trainer.Trainer` in a folder of its own, started from the
previous round's final model. The loop keeps its one fixed data set per run and needs no hook; this file only
sequences the rounds and shares the online objective's sampling, judging and pairing
(:func:`~dpolab.engine.objectives.online.sample_judge_pair`).

The run folder (``output.dir``)::

    config.yaml, metrics.jsonl      the run's settings; one row per round (and round 0: eval.at_start)
    rounds/start/                   the starting weights, saved once (unless model.init_from names them)
    rounds/round-NNN/sampling.json  the round's sampling statistics, written before its pairs
    rounds/round-NNN/pairs.jsonl    its pairs as preference JSONL (prompt, chosen, rejected, chosen_score,
                                    rejected_score, rm_margin), plus the token ids trained on (prompt_ids, ...)
    rounds/round-NNN/train/         its preference run: config.yaml, checkpoints/, metrics.jsonl, final/, DONE
    final/, summary.json, DONE      as every run: the last round's model

Resume (``--resume``): a round whose ``train/DONE`` exists is done; a round whose ``pairs.jsonl`` exists (written
atomically: it is complete) is not sampled again, and its run resumes from its newest checkpoint; a round without
it is sampled (the same seeds: the same pairs). A resumed run ends bitwise equal to an uninterrupted one.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from .. import atomic
from ..config import ModelConfig, RunConfig, build_config, save_config
from ..data.types import TokenizedPair
from ..models.load import load_base_model, load_tokenizer, save_model
from .data_setup import cap_eval_data, prepare_data
from .errors import TrainError
from .judges import build_judge, check_judge_spec
from .logging import MetricsLogger, read_metrics
from .memory import PeakMemory
from .objectives.online import MARGIN, OnlineObjective, sample_judge_pair, step_seed, summarise
from .resume_guard import ALLOWED, _show, config_changes
from .run_folder import DONE_MARKER, RESUME_CHANGES, check_output_dir, claim_run_folder, publish
from .runtime import configure_runtime
from .trainer import Trainer

ROUNDS = "rounds"
PAIRS = "pairs.jsonl"
SAMPLING = "sampling.json"


def round_dir(run_dir: Path, r: int) -> Path:
    return Path(run_dir) / ROUNDS / f"round-{r:03d}"


def round_prompts(n: int, per_round: Optional[int], seed: int, r: int) -> List[int]:
    """Indices of round ``r``'s prompts (1-based ``r``): consecutive ones of a seeded order of the ``n`` prompts,
    wrapping around; every prompt when ``per_round`` is None."""
    if per_round is None:
        return list(range(n))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[((r - 1) * per_round + i) % n] for i in range(per_round)]


def read_pairs(path: Path) -> List[TokenizedPair]:
    """A round's pairs as trained: the sampled token ids and the judge's score difference (``rm_margin``)."""
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        r = json.loads(line)
        out.append(
            TokenizedPair(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"], {MARGIN: r[MARGIN]}, {"row": i + 1})
        )
    return out


class OnlineRounds:
    """``online.rounds`` rounds; :meth:`fit` runs them and returns the summary (also ``summary.json``)."""

    def __init__(
        self,
        cfg: RunConfig,
        *,
        train_data: Optional[list] = None,
        eval_data: Optional[list] = None,
        eval_hooks: Sequence[Callable] = (),
        resume: bool = False,
        log: Optional[Callable[[str], None]] = None,
        accelerator=None,
    ):
        import torch

        if accelerator is None:
            from accelerate import Accelerator

            accelerator = Accelerator(cpu=not torch.cuda.is_available())
        check_judge_spec(cfg.online.judge)
        self.cfg, self.acc, self.resume, self.eval_hooks = cfg, accelerator, resume, list(eval_hooks)
        self.is_main = accelerator.is_main_process
        self.trainer: Optional[Trainer] = None  # the latest round's (its reference, for a caller's checks)
        self.memory = PeakMemory()
        self._log = log or (lambda s: print(s, file=sys.stderr))
        self.run_dir = Path(cfg.output.dir)
        self.lock = claim_run_folder(self.run_dir, owner=self) if self.is_main else None
        try:
            self._open_folder()
            self.runtime = configure_runtime(cfg.train, accelerator.device, self.log)
            self.tokenizer = load_tokenizer(cfg.model)
            if train_data is None:
                train_data, prepared = prepare_data(
                    cfg.data, self.tokenizer, OnlineObjective.data_kind, cfg.train.seed, log=self.log
                )
                eval_data = prepared if eval_data is None else eval_data
            if not train_data:
                raise TrainError("no training prompts")
            self.prompts, self.eval_prompts = train_data, cap_eval_data(eval_data, cfg.eval.max_examples, self.log)
            self.judge = build_judge(cfg.online.judge, device=accelerator.device)
            self._record()
        except BaseException:
            self.close()
            if self.lock is not None and not self.resuming:  # refused before it started: nothing of ours left behind
                self.lock.remove_unused()
            raise

    def log(self, msg: str) -> None:
        if self.is_main:
            self._log(msg)

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()

    # -- the run folder ---------------------------------------------------------------------------------------------
    def _open_folder(self) -> None:
        """A fresh run refuses an earlier one (or clears it with output.overwrite); ``--resume`` refuses a finished
        run and settings that differ outside the allow-list, as a trainer's resume does."""
        run, cfg = self.run_dir, self.cfg
        saved = run / "config.yaml"
        resuming = self.resuming = self.resume and saved.exists()
        self._changes: Dict[str, Any] = {}
        if self.resume and (run / DONE_MARKER).exists():
            raise TrainError(f"{run} holds a finished run ({DONE_MARKER}): --resume never trains it again")
        if self.is_main:
            if not (cfg.output.overwrite or resuming) and (run / ROUNDS).exists():
                raise TrainError(
                    f"{run} holds an unfinished iterative run ({ROUNDS}/); continue it with --resume, or set "
                    f"output.overwrite=true to replace it, or choose another output.dir"
                )
            check_output_dir(run, cfg.output.overwrite or self.resume, resume=resuming)
            if not resuming and (run / ROUNDS).exists():
                shutil.rmtree(run / ROUNDS)
        if resuming:
            import yaml

            before = build_config(yaml.safe_load(saved.read_text(encoding="utf-8"))).to_dict()
            allowed, refused = config_changes(before, cfg.to_dict())
            if refused:
                raise TrainError(
                    f"--resume refused: the settings differ from the run's {saved} in {'; '.join(refused)}; only "
                    f"{', '.join(ALLOWED)} may change on resume (train.max_steps only upward)"
                )
            self._changes = allowed
        self.acc.wait_for_everyone()

    def _record(self) -> None:
        """``config.yaml`` of a fresh run; a resumed one keeps it and appends its allowed changes to
        ``resume_changes.jsonl``."""
        run = self.run_dir
        if not self.is_main:
            return
        if not self.resuming:
            save_config(self.cfg, run / "config.yaml")
        elif self._changes:
            atomic.append_text(run / RESUME_CHANGES, json.dumps({"changes": self._changes}, default=str) + "\n")
            self.log(
                "--resume: changed settings "
                + ", ".join(f"{k} {_show(a)} -> {_show(b)}" for k, (a, b) in self._changes.items())
            )

    # -- models -----------------------------------------------------------------------------------------------------
    def _start_model(self) -> Path:
        """The folder of the starting weights: model.init_from, else ``rounds/start/`` (saved once)."""
        cfg = self.cfg
        if cfg.model.init_from:
            return Path(cfg.model.init_from)
        path = self.run_dir / ROUNDS / "start"
        if self.is_main and not path.exists():
            longest = max(len(p.prompt_ids) for p in [*self.prompts, *self.eval_prompts])
            positions = max(1024, longest + cfg.online.max_new_tokens + 1)
            model = load_base_model(cfg.model, self.tokenizer, seed=cfg.train.seed, max_positions=positions)
            with atomic.atomic_dir(path) as tmp:
                save_model(model, self.tokenizer, tmp, cfg.model, cfg.train.seed)
        self.acc.wait_for_everyone()
        return path

    def _load(self, folder: Path):
        """The policy saved in ``folder``, exactly as the round's trainer loads it (model.init_from), to sample."""
        model_cfg = ModelConfig(**{**vars(self.cfg.model), "init_from": str(folder)})
        return load_base_model(model_cfg, self.tokenizer, seed=self.cfg.train.seed).to(self.acc.device)

    # -- sampling ---------------------------------------------------------------------------------------------------
    def _sample(self, model, prompts: list, seeds: Callable[[int], int]) -> List[dict]:
        """:func:`sample_judge_pair` on ``prompts`` in chunks of eval.batch_size prompts (chunk ``j`` seeded
        ``seeds(j)``)."""
        size = self.cfg.eval.batch_size
        return [
            sample_judge_pair(
                model,
                [p.prompt_ids for p in prompts[s : s + size]],
                [p.meta for p in prompts[s : s + size]],
                online=self.cfg.online,
                judge=self.judge,
                tokenizer=self.tokenizer,
                seed=seeds(j),
                batch_size=size,
                autocast=self.runtime.autocast,
            )
            for j, s in enumerate(range(0, len(prompts), size))
        ]

    def _sample_round(self, r: int, start: Path) -> None:
        """Round ``r``'s pairs into ``pairs.jsonl`` (after ``sampling.json``), sampled by the policy in ``start``."""
        cfg, folder = self.cfg, round_dir(self.run_dir, r)
        if self.is_main and not (folder / PAIRS).exists():
            chosen = round_prompts(len(self.prompts), cfg.online.prompts_per_round, cfg.train.seed, r)
            model = self._load(start)
            parts = self._sample(model, [self.prompts[i] for i in chosen], lambda j: step_seed(cfg.train.seed, r, 0, j))
            del model
            stats = {**summarise(parts), "online/pairs": sum(p["pairs"] for p in parts), "online/prompts": len(chosen)}
            rows = [
                json.dumps(
                    {**row, "prompt_ids": x.prompt_ids, "chosen_ids": x.chosen_ids, "rejected_ids": x.rejected_ids}
                )
                for p in parts
                for row, x in zip(p["pair_rows"], p["items"])
            ]
            atomic.write_text(folder / SAMPLING, json.dumps(stats, indent=1))
            atomic.write_text(folder / PAIRS, "".join(line + "\n" for line in rows))
            self.log(
                f"round {r}: {len(chosen)} prompts, {stats['online/pairs']} pairs (tie rate "
                f"{stats['online/tie_rate']:.2f}, judge mean {stats['online/judge_mean']:.3f})"
            )
        self.acc.wait_for_everyone()

    def _evaluate(self, model, step: int) -> Dict[str, Any]:
        """The judge on the eval prompts' samples (fixed seeds, as the per-step mode's evaluation) and the eval
        hooks."""
        out: Dict[str, Any] = {}
        if self.eval_prompts:
            seed = self.cfg.train.seed
            size = self.cfg.eval.batch_size
            parts = self._sample(model, self.eval_prompts, lambda j: step_seed(seed, -1 - j * size, 0, 0))
            stats = summarise(parts)
            out.update({f"eval/{k}": v for k, v in stats.items() if "time_" not in k})
        for hook in self.eval_hooks:
            out.update({f"eval/{k}": v for k, v in hook(model, self.tokenizer, step).items()})
        return out

    def _evaluates(self, r: int) -> bool:
        every = self.cfg.eval.every
        return r == self.cfg.online.rounds or bool(every and r % every == 0)

    # -- a round's training -----------------------------------------------------------------------------------------
    def round_config(self, r: int, start: Path, first: Path) -> RunConfig:
        """The preference run of round ``r``: from ``start``, against ``start`` (online.sync_reference) or the first
        round's start ``first`` (or the user's reference.name_or_path)."""
        cfg, o = self.cfg, self.cfg.online
        d = cfg.to_dict()
        d["train"].update(mode="preference", epochs=o.epochs_per_round)
        d["model"]["init_from"] = str(start)
        d["online"]["rounds"] = 0
        d["eval"].update(every=0, at_start=False)
        d["output"].update(dir=str(round_dir(self.run_dir, r) / "train"), overwrite=False, save_final=True)
        if not o.sync_reference and start != first and not cfg.reference.name_or_path:
            d["reference"]["name_or_path"] = str(first)
        return build_config(d)

    def _train_round(self, r: int, start: Path, first: Path) -> Dict[str, Any]:
        folder = round_dir(self.run_dir, r) / "train"
        pairs = read_pairs(round_dir(self.run_dir, r) / PAIRS)
        trainer = Trainer(
            self.round_config(r, start, first),
            train_data=pairs,
            eval_data=[],
            resume=(folder / "config.yaml").exists(),
            log=self._log,
            accelerator=self.acc,
        )
        self.trainer = trainer
        return trainer.fit()

    # -- the run ----------------------------------------------------------------------------------------------------
    def _logged(self) -> Dict[int, Dict[str, Any]]:
        """The rows of the rounds a resumed run logged already, by round (a row is written once its round is done)."""
        path = self.run_dir / "metrics.jsonl"
        if not (self.resuming and path.exists()):
            return {}
        return {int(x["round"]): x for x in read_metrics(path) if "round" in x}

    def _round(self, r: int, start: Path, first: Path, step: int) -> Dict[str, Any]:
        """Sample (unless its pairs are written), train (unless done) and evaluate round ``r``: its metrics row."""
        folder = round_dir(self.run_dir, r)
        self._sample_round(r, start)
        row: Dict[str, Any] = {"round": r, **json.loads((folder / SAMPLING).read_text(encoding="utf-8"))}
        row["online/time_train_s"] = 0.0
        if row["online/pairs"]:
            done = folder / "train" / DONE_MARKER
            if done.exists():  # killed after the round's run finished, before its row was logged
                summary = json.loads((folder / "train" / "summary.json").read_text(encoding="utf-8"))
            else:
                summary = self._train_round(r, start, first)
                self.acc.free_memory()
            trained = [x for x in read_metrics(folder / "train") if "loss" in x]
            step += summary["steps"]
            row.update({"online/time_train_s": summary["wall_clock_s"], "round_steps": summary["steps"]})
            row["mem/peak_mb"] = summary["peak_memory_mb"]
            if trained:
                row["loss"] = trained[-1]["loss"]
        else:
            self.log(f"round {r}: every prompt's samples tied: nothing to train on, the policy is unchanged")
        row["step"] = step
        if self._evaluates(r):
            row.update(self._evaluate(self._load(_end_of(folder, start)), step))
        return row

    def fit(self) -> Dict[str, Any]:
        """Run the rounds (those a resumed run finished are read back), publish the last model; the summary."""
        cfg, o = self.cfg, self.cfg.online
        try:
            first = self._start_model()
            logged = self._logged()
            metrics = MetricsLogger(
                self.run_dir,
                enabled=self.is_main,
                tensorboard=cfg.output.tensorboard,
                wandb=cfg.output.wandb,
                config=cfg.to_dict(),
                resume_step=max((x["step"] for x in logged.values()), default=0) if self.resuming else None,
            )
            self.log(
                f"online training in {o.rounds} rounds: {len(self.prompts)} prompts, "
                f"{o.prompts_per_round or len(self.prompts)} per round -> {self.run_dir}"
            )
            first_eval = None
            if cfg.eval.at_start:
                first_eval = logged.get(0) or metrics.log(
                    {"round": 0, "step": 0, **self._evaluate(self._load(first), 0)}
                )
            start, step, rows = first, 0, []
            for r in range(1, o.rounds + 1):
                row = logged.get(r) or metrics.log(self._round(r, start, first, step))
                start, step = _end_of(round_dir(self.run_dir, r), start), row["step"]
                rows.append(row)
            metrics.close()
            evals = [x for x in [first_eval, *rows] if x and any(k.startswith("eval/") for k in x)]
            times = ("online/time_sample_s", "online/time_judge_s", "online/time_train_s")
            summary = {
                "mode": cfg.train.mode,
                "rounds": o.rounds,
                "steps": step,
                "train_examples": len(self.prompts),
                "eval_examples": len(self.eval_prompts),
                "wall_clock_s": round(sum(x.get(k, 0.0) for x in rows for k in times), 3),
                "peak_memory_mb": round(max([self.memory.sample(), *(x.get("mem/peak_mb", 0.0) for x in rows)]), 1),
                "parameters": self.trainer.params if self.trainer else None,
                "first_eval": first_eval,
                "final_eval": evals[-1] if evals else None,
                "per_round": rows,
                "reference_mode": self.trainer.objective.summary().get("reference_mode") if self.trainer else None,
            }
            if self.is_main:
                save = (lambda p: shutil.copytree(start, p, dirs_exist_ok=True)) if cfg.output.save_final else None
                publish(self.run_dir, summary, save)
            self.acc.wait_for_everyone()
            return summary
        finally:
            self.close()


def _end_of(folder: Path, start: Path) -> Path:
    """The policy after the round in ``folder``: its run's final model, or ``start`` when it trained nothing."""
    final = folder / "train" / "final"
    return final if (folder / "train" / DONE_MARKER).exists() else start


def train_rounds(cfg: RunConfig, **kwargs: Any) -> Dict[str, Any]:
    """Run iterative online training (``online.rounds`` >= 1); the arguments are :class:`~dpolab.engine.Trainer`'s."""
    return OnlineRounds(cfg, **kwargs).fit()
