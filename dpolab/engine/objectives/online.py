"""On-policy preference optimisation (``train.mode=online``): each step samples, judges, pairs and trains.

Data: prompts (:class:`OnlinePrompts`, :mod:`dpolab.data.prompts`): a prompt-only file's ``prompt`` column (text or
chat messages), or the prompts of preference pairs (a preference file, or a built-in task's pairs; a pair's responses
are never trained on). With ``online.rounds`` >= 1 the run is iterative instead (:mod:`dpolab.engine.online_rounds`,
reached through :meth:`OnlineObjective.driver`: rounds of sampling, then offline preference training). Each
optimiser step, for each prompt of each micro-batch:

1. sample ``online.samples_per_prompt`` completions from the current policy (:func:`dpolab.models.generation.
   sample_ids`: batched, ``online.temperature`` / ``top_p`` / ``max_new_tokens``), each prompt's samples seeded from
   (train.seed, step, the prompt's example index) and drawn by generators of their own (:func:`prompt_seed`): a
   resumed run samples exactly what the uninterrupted run sampled, with no RNG state kept, and processes that share
   out a step's prompts sample what one process would;
2. score them with the judge (``online.judge``, :mod:`dpolab.engine.judges`);
3. pair them: the best against the worst (``online.pairs=best-worst``) or every two with different scores (``all``);
   pairs whose scores are exactly equal are ties, skipped and counted;
4. collate the pairs as preference pairs (each completion followed by EOS when it stopped there; the judge's score
   difference as the pair's ``rm_margin`` extra, which MADPO reads as its margin) and train the loss list against a
   live reference (a frozen copy, or the adapter-disabled policy under LoRA; a precomputed table is refused).

The objective of a step is the sum of its pairs' losses over its prompts (a prompt whose samples all tie adds 0).
Logged per step (``online/``): the judge's mean score of the samples and the half-width of its 95 % interval
(``judge_mean``, ``judge_ci``), the tie rate (tied pairs over the pairs considered), pairs per prompt, the mean sample
length in tokens and the EOS rate, a KL estimate to the reference (the mean of log pi - log pi_ref over the paired
samples: an unbiased estimate of KL(pi || pi_ref) at temperature 1 and top-p 1, when every sample is in a pair, as
with k = 2), the time split of the step (``time_sample_s``, ``time_judge_s``, ``time_train_s``: the forwards and
backwards of the previous step's pairs) and, at temperature 1 and top-p 1, ``logp_gap``: the largest difference
between the policy's log-prob of a paired sample and the sampler's own (0 up to rounding: the pairs are on-policy).
Over several processes these are the statistics of all their samples (gathered each step), the time split the slowest
process's. The main process appends every process's samples (step, prompt, completion, score, ended; by example
within a step) to ``samples.jsonl`` in the run folder (a resumed run first drops the rows of steps after its
checkpoint).
Evaluation samples the eval prompts with a fixed seed and reports the same loss and statistics.
"""

from __future__ import annotations

import itertools
import json
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ... import atomic
from ...config import ConfigError, DataConfig
from ...data.batches import Batch, PairBatch
from ...data.collate import collate_preference_fast
from ...data.types import TokenizedPair, TokenizedPrompt  # noqa: F401  (the kind's examples; re-exported)
from ...losses import LOCAL, CompositeLoss
from ...models.generation import Sampled, sample_ids
from ...stats import mean_ci
from ..data_kinds import PREFERENCE_PAIRS, DataKind
from ..errors import TrainError
from ..judges import build_judge, check_judge_spec
from .base import MicroResult, Objective, RunContext
from .preference import preference_step
from .with_reference import WithReference

MARGIN = "rm_margin"  # the extra MADPO reads; every online pair carries the judge's score difference under it


@dataclass(kw_only=True)
class PromptBatch(Batch):
    """Prompts (right-padded in ``input_ids``; ``prompts`` keeps each one's ids)."""

    prompts: List[List[int]]


class OnlinePrompts(DataKind):
    """Prompts: a ``prompt`` column alone (text or chat messages) or the prompts of preference pairs, from files or a
    built-in task's pairs (:mod:`dpolab.data.prompts`)."""

    name = "online"
    inspect_as = "prompt"  # `dpolab inspect-data`: each prompt as it is sampled from

    def load(self, source, tokenizer, **options):
        from ...data.prompts import load_prompt_data

        return load_prompt_data(source, tokenizer, **options)

    def options(self, data: DataConfig) -> Dict[str, Any]:
        return dict(data_format=data.format)

    def task_rows(self, data: DataConfig, seed: int, tokenizer: Any = None):
        return PREFERENCE_PAIRS.task_rows(data, seed, tokenizer)  # a task's pairs: their prompts are read


def step_seed(seed: int, step: int, rank: int, micro: int) -> int:
    """The sampling seed of one micro-batch of one step (eval batches use negative steps)."""
    return ((seed * 1_000_003 + step) * 1_009 + rank) * 101 + micro & 0x7FFFFFFF


def prompt_seed(seed: int, step: int, example: int) -> int:
    """The sampling seed of one prompt (its example's index) at one step (evaluation: step -1): the same whichever
    process and micro-batch sample it, so two processes sample what one does."""
    return ((seed * 1_000_003 + step) * 1_000_033 + example) & 0x7FFFFFFF


def make_pairs(scores: List[float], how: str) -> Tuple[List[Tuple[int, int]], int, int]:
    """(winner, loser) indices into one prompt's samples, the ties skipped and the pairs considered."""
    if how == "best-worst":
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        worst = min(range(len(scores)), key=lambda i: (scores[i], i))
        return ([], 1, 1) if scores[best] == scores[worst] else ([(best, worst)], 0, 1)
    pairs, ties = [], 0
    for i, j in itertools.combinations(range(len(scores)), 2):
        if scores[i] == scores[j]:
            ties += 1
        else:
            pairs.append((i, j) if scores[i] > scores[j] else (j, i))
    return pairs, ties, len(scores) * (len(scores) - 1) // 2


def sample_judge_pair(
    policy,
    prompts: List[List[int]],
    metas: List[Dict[str, Any]],
    *,
    online,
    judge,
    tokenizer,
    seed: int,
    batch_size: int,
    autocast=nullcontext,
    prompt_seeds: Optional[Sequence[int]] = None,
) -> Dict[str, Any]:
    """Sample ``online.samples_per_prompt`` completions of each prompt (token ids) from ``policy`` (seeded by
    ``seed``; with ``prompt_seeds``, one per prompt, each completion by its own generator, whatever it is batched
    with: :func:`dpolab.models.generation.sample_ids`' ``row_seeds``), score them with ``judge`` and pair them
    (:func:`make_pairs`). Returns the statistics :func:`summarise` reads, the pairs (``items``: :class:`TokenizedPair`
    with the judge's score difference as ``rm_margin``), ``pair_rows`` (each pair's texts and scores, as
    ``pairs.jsonl`` of iterative mode holds them) and, for a caller that writes them, the prompt texts, completion
    texts, scores and :class:`Sampled` of every sample."""
    o, tok = online, tokenizer
    t0 = time.perf_counter()
    flat = [p for p in prompts for _ in range(o.samples_per_prompt)]
    rows_seeds = None
    if prompt_seeds is not None:
        rows_seeds = [(s * 1_009 + j) & 0x7FFFFFFF for s in prompt_seeds for j in range(o.samples_per_prompt)]
    samples: List[Sampled] = sample_ids(
        policy,
        flat,
        max_new_tokens=o.max_new_tokens,
        temperature=o.temperature,
        top_p=o.top_p,
        seed=seed,
        batch_size=batch_size,
        pad_id=tok.pad_token_id,
        eos_id=tok.eos_token_id,
        autocast=autocast,
        row_seeds=rows_seeds,
    )
    t1 = time.perf_counter()
    prompt_texts = [tok.decode(p, skip_special_tokens=True) for p in flat]
    texts = [tok.decode(s.ids, skip_special_tokens=True) for s in samples]
    scores = judge.score(prompt_texts, texts)
    t2 = time.perf_counter()
    k, pairs, rows, ties, considered = o.samples_per_prompt, [], [], 0, 0
    for n, prompt in enumerate(prompts):
        group = list(range(n * k, (n + 1) * k))
        chosen, tied, total = make_pairs([scores[i] for i in group], o.pairs)
        ties, considered = ties + tied, considered + total
        for w, lo in chosen:
            (iw, sw), (il, sl) = (group[w], samples[group[w]]), (group[lo], samples[group[lo]])
            pairs.append(
                TokenizedPair(
                    list(prompt),
                    sw.ids + [tok.eos_token_id] * sw.ended,
                    sl.ids + [tok.eos_token_id] * sl.ended,
                    {MARGIN: scores[iw] - scores[il], "sample_logp_chosen": sw.logp, "sample_logp_rejected": sl.logp},
                    dict(metas[n]) if n < len(metas) else {},
                )
            )
            rows.append(
                {
                    "prompt": prompt_texts[iw],
                    "chosen": texts[iw],
                    "rejected": texts[il],
                    "chosen_score": scores[iw],
                    "rejected_score": scores[il],
                    MARGIN: scores[iw] - scores[il],
                }
            )
    return dict(
        scores=scores,
        lengths=[len(s.ids) for s in samples],
        ended=[s.ended for s in samples],
        ties=ties,
        considered=considered,
        prompts=len(prompts),
        pairs=len(pairs),
        time_sample_s=t1 - t0,
        time_judge_s=t2 - t1,
        items=pairs,
        pair_rows=rows,
        prompt_texts=prompt_texts,
        texts=texts,
        samples=samples,
    )


def summarise(parts: List[dict]) -> Dict[str, float]:
    """The ``online/`` statistics of one or more :func:`sample_judge_pair` results: the judge's mean score of the
    samples and its 95 % interval half-width, tie rate, pairs per prompt, sample length, EOS rate, sample and judge
    time."""
    scores = [s for p in parts for s in p["scores"]]
    lengths = [n for p in parts for n in p["lengths"]]
    ended = [e for p in parts for e in p["ended"]]
    considered = sum(p["considered"] for p in parts)
    mean, half = mean_ci(scores)
    out = {
        "online/judge_mean": mean,
        "online/tie_rate": sum(p["ties"] for p in parts) / max(1, considered),
        "online/pairs_per_prompt": sum(p["pairs"] for p in parts) / max(1, sum(p["prompts"] for p in parts)),
        "online/sample_tokens": sum(lengths) / max(1, len(lengths)),
        "online/eos_rate": sum(ended) / max(1, len(ended)),
        "online/time_sample_s": sum(p["time_sample_s"] for p in parts),
        "online/time_judge_s": sum(p["time_judge_s"] for p in parts),
    }
    if half == half:  # nan for a single sample
        out["online/judge_ci"] = half
    return out


class OnlineObjective(WithReference, Objective):
    name = "online"
    data_kind = OnlinePrompts()

    @classmethod
    def driver(cls, cfg):
        """Iterative mode (online.rounds >= 1): rounds of sampling then offline training, :mod:`..online_rounds`."""
        if not cfg.online.rounds:
            return None
        from ..online_rounds import train_rounds

        return train_rounds

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.online.rounds:
            raise ConfigError(
                f"online.rounds={cfg.online.rounds} (iterative mode) runs as successive trainer phases: start it with "
                f"dpolab train or dpolab.engine.train, not a Trainer (or set online.rounds=0)"
            )
        if cfg.reference.mode == "precomputed":
            raise ConfigError(
                "reference.mode=precomputed is not available in train.mode=online: the pairs are sampled during "
                "training, so no table can hold their reference log-probs; use auto, copy, or adapter under LoRA"
            )
        if cfg.eval.probes:
            raise ConfigError("eval.probes is not available in train.mode=online (its pairs are sampled, not fixed)")
        check_judge_spec(cfg.online.judge)  # a bad spec stops the run before data and model load
        self.loss = CompositeLoss(cfg.loss)
        self.judge = None
        self.reference = None
        self._collate_args: Tuple[int, str, Optional[int]] = (0, "padded", None)
        self._stats: Dict[str, float] = {}
        self._train_started: Optional[float] = None
        self._train_time = 0.0
        self._samples_started = False  # samples.jsonl pruned for this run (see _start_samples)
        self.last_pairs: List[TokenizedPair] = []  # the latest step's pairs, in this process's step order

    # -- data -------------------------------------------------------------------------------------------------
    def length(self, example) -> int:
        return len(example.prompt_ids) + self.cfg.online.max_new_tokens + 1

    def collate(self, items, pad_id: int, layout: str, hidden_size: Optional[int]) -> PromptBatch:
        self._collate_args = (pad_id, layout, hidden_size)
        width = max(len(x.prompt_ids) for x in items)
        ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, x in enumerate(items):
            ids[i, : len(x.prompt_ids)] = torch.tensor(x.prompt_ids, dtype=torch.long)
            mask[i, : len(x.prompt_ids)] = 1
        return PromptBatch(
            input_ids=ids,
            attention_mask=mask,
            loss_mask=torch.zeros_like(mask),
            meta=[x.meta for x in items],
            prompts=[list(x.prompt_ids) for x in items],
        )

    # -- set-up -----------------------------------------------------------------------------------------------
    def setup(self, run: RunContext) -> None:
        super().setup(run)
        self._run = run
        self._tokenizer = run.parts.tokenizer
        self._rank = run.accelerator.process_index
        self._device = run.accelerator.device
        self.judge = build_judge(self.cfg.online.judge, device=run.accelerator.device)
        if self.loss.needs_reference:
            if self.cfg.reference.mode == "none":
                raise TrainError("reference.mode is 'none' but the loss needs a reference model")
            self.reference = self.build_reference(run)  # cost None: a live reference

    # -- sampling, judging, pairing ---------------------------------------------------------------------------
    def _sample_pairs(self, model, batch: PromptBatch, step: int) -> Tuple[Optional[PairBatch], dict]:
        """Sample, judge and pair the prompts of ``batch`` at ``step`` (-1: evaluation), each prompt seeded by its
        example index (:func:`prompt_seed`); ``sample_rows`` in the statistics: (example, sample, samples.jsonl row)."""
        tok = self._tokenizer
        policy = self._run.accelerator.unwrap_model(model)
        examples = [int(i) for i in batch.index]
        stats = sample_judge_pair(
            policy,
            batch.prompts,
            batch.meta,
            online=self.cfg.online,
            judge=self.judge,
            tokenizer=tok,
            seed=0,
            batch_size=self.cfg.eval.batch_size,
            autocast=self.autocast,
            prompt_seeds=[prompt_seed(self.cfg.train.seed, step, i) for i in examples],
        )
        prompt_texts, texts, samples = (stats.pop(k) for k in ("prompt_texts", "texts", "samples"))
        scores, pairs, k = stats["scores"], stats["items"], self.cfg.online.samples_per_prompt
        stats["sample_rows"] = [
            (examples[n // k], n % k, {"step": step + 1, "prompt": p, "completion": c, "score": s, "ended": x.ended})
            for n, (p, c, s, x) in enumerate(zip(prompt_texts, texts, scores, samples))
        ]
        if not pairs:
            return None, stats
        pad, layout, width = self._collate_args
        return collate_preference_fast(pairs, pad, layout, hidden_size=width).to(self._device), stats

    def _start_samples(self, step: int) -> None:
        """Before this process first writes ``samples.jsonl``: a fresh run starts it empty; a resumed run drops the rows
        of steps after ``step`` (sampled by a killed run after its last checkpoint: resampled now, never kept twice)."""
        if self._samples_started:
            return
        self._samples_started = True
        path = self._run.parts.run_dir / "samples.jsonl"
        if not path.exists():
            return
        if not self._run.parts.resuming:
            path.unlink()
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line + "\n")
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a half-written last row from a kill
        atomic.write_text(path, "".join(keep))

    def _summarise(self, parts: List[dict]) -> Dict[str, float]:
        return summarise(parts)

    def _gathered(self, parts: List[dict]) -> List[List[dict]]:
        """Every process's statistics of its micro-batches (one list per process; the pairs themselves stay here)."""
        local = [{k: v for k, v in p.items() if k not in ("items", "pair_rows")} for p in parts]
        if self._run.accelerator.num_processes == 1:
            return [local]
        from accelerate.utils import gather_object

        return gather_object([local])

    def _summarise_all(self, everyone: List[List[dict]]) -> Dict[str, float]:
        """The statistics of all processes' samples, as one process would compute them; the time split is the
        slowest process's (the processes sample and judge side by side)."""
        out = self._summarise([p for ps in everyone for p in ps])
        for key in ("time_sample_s", "time_judge_s"):
            out[f"online/{key}"] = max(sum(p[key] for p in ps) for ps in everyone)
        return out

    # -- a step -----------------------------------------------------------------------------------------------
    def begin_step(self, model, batches: List[PromptBatch], step: int) -> List[Optional[PairBatch]]:
        if self._train_started is not None:  # the previous step's forwards, backwards and optimiser step
            self._train_time = time.perf_counter() - self._train_started
        states, parts = [], []
        for b in batches:
            pb, stats = self._sample_pairs(model, b, step)
            states.append(pb)
            parts.append(stats)
        everyone = self._gathered(parts)
        if self._run.is_main:
            self._start_samples(step)
            rows = sorted((r for ps in everyone for p in ps for r in p["sample_rows"]), key=lambda r: r[:2])
            text = "".join(json.dumps(row) + "\n" for _, _, row in rows)
            atomic.append_text(self._run.parts.run_dir / "samples.jsonl", text)
        self._stats = {**self._summarise_all(everyone), "online/time_train_s": self._train_time}
        self.last_pairs = [p for stats in parts for p in stats["items"]]
        self._train_started = time.perf_counter()
        return states

    def forward(self, model, batch: Batch, *, training: bool, state: Any = None) -> MicroResult:
        if isinstance(batch, PromptBatch) and state is None and not training:  # evaluation: sample with a fixed seed
            state, stats = self._sample_pairs(model, batch, -1)
            self._eval_parts.append(stats)
        if state is None:  # every sample of these prompts tied: nothing to train on
            if not training:
                return MicroResult(torch.zeros((), device=self._device), 0.0, {"loss": 0.0})
            # a forward through the (possibly distributed) model all the same, so that its gradient all-reduce
            # runs as on the processes that have pairs; every gradient is 0
            first = model(input_ids=batch.input_ids[:, :1], attention_mask=batch.attention_mask[:, :1])
            zero = first.logits.float().sum() + sum(p.sum() for p in model.parameters() if p.requires_grad)
            return MicroResult(zero * 0.0, 0.0, {"loss": 0.0})
        seen = []
        objective, metrics = preference_step(
            model,
            self.reference,
            self.loss,
            state,
            self.autocast,
            dist=LOCAL,
            logits=self.cfg.train.logits,
            on_outputs=seen.append,
        )
        out = seen[0]
        if out.ref_chosen_logps is not None:
            logratios = torch.cat(
                [out.policy_chosen_logps - out.ref_chosen_logps, out.policy_rejected_logps - out.ref_rejected_logps]
            )
            metrics["online/kl"] = logratios.detach().mean()
        o = self.cfg.online
        if o.temperature == 1.0 and o.top_p == 1.0:  # the sampler's log-probs are the policy's own: they must agree
            sampled = torch.stack([state.extras["sample_logp_chosen"], state.extras["sample_logp_rejected"]])
            policy = torch.stack([out.policy_chosen_logps, out.policy_rejected_logps]).detach()
            metrics["online/logp_gap/max"] = (policy.double() - sampled.double()).abs().max()
        n = state.num_pairs
        return MicroResult(objective * n, float(n), metrics)

    def postfix(self, row: Dict[str, Any]) -> Dict[str, str]:
        return {
            "loss": f"{row['loss']:.4f}",
            "judge": f"{row.get('online/judge_mean', float('nan')):.3f}",
            "ties": f"{row.get('online/tie_rate', float('nan')):.2f}",
        }

    _eval_parts: Optional[List[dict]] = None  # a list while an evaluation runs

    @contextmanager
    def evaluation(self, eval_data) -> Iterator[None]:
        self._eval_parts, saved = [], self._stats
        try:
            yield
        finally:
            self._stats, self._eval_parts = saved, None

    def set_statistics(self, rows: List[Dict[str, Any]]) -> Dict[str, float]:
        if self._eval_parts is not None:  # every process calls this at the end of an evaluation, batches or none
            out, self._eval_parts = self._summarise_all(self._gathered(self._eval_parts)), []
            return out
        out, self._stats = self._stats, {}
        return out

    # -- state ------------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"loss": self.loss.state_dict(), **self.reference_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.loss.load_state_dict(state.get("loss", {}))
        self.load_reference_state(state)
