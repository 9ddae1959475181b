"""What ``dpolab compare`` measures on the held-out pairs besides the likelihood probes: an engine eval hook.

At every evaluation, for the first ``n_prompts`` held-out prompts it samples one response from the policy (temperature
1, top-p 1, a fixed sampling seed, so evaluations differ only by the model) and logs

- ``compare/kl``: an estimate of KL(pi || pi_ref) that is never negative (:func:`k3_kl`): for each sampled token
  y_t, with r_t = pi_ref(y_t | x, y_<t) / pi(y_t | x, y_<t), the term (r_t - 1) - log r_t (>= 0, and its mean under
  pi is that step's KL exactly: Schulman's "k3"), summed over the response's tokens (its EOS included when it ended
  with one) and averaged over the samples; unbiased for the sequence KL, like the plain log pi - log pi_ref it
  replaces, which a small sample can make negative. pi_ref is the starting model (the adapter-disabled policy under
  LoRA, else the starting weights loaded once beside the policy);
- ``compare/sample_tokens``: the mean length of the sampled responses in tokens (EOS not counted);
- ``compare/rm_reward`` (with a reward model, ``dpolab rm train``): its mean reward of prompt + sampled response,
  scored like ``dpolab rm score`` (the reward model's own tokenizer, its BOS first, the last token's score);
- ``compare/oracle`` (with ``module:function``): the mean of the user's ``function(prompt, response) -> float``;
- ``compare/judge`` (with ``--judge``, the spec on-policy arms train with): the judge's mean score
  (:mod:`dpolab.engine.judges`; ``task:arithmetic``: the share of responses whose final value is right).

:class:`HeldOutProbes` is the likelihood probes of a preference run (:mod:`dpolab.diagnostics.probes`) as an eval
hook, for an arm whose objective has none (``train.mode=online``): the same probe set from the same held-out pairs,
scored against the starting model, logged as ``eval/probe/...`` (:mod:`dpolab.studies.compare_online` reads them back
as ``probe/...``).

The hooks are picklable objects (any executor can send them to another process); the runner binds them to the run's
held-out pairs (``bind``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import ConfigError
from ..rewards.user_oracle import OracleError, call_oracle, load_oracle  # noqa: F401 - compare imports them here


@dataclass
class HeldOutMeasures:
    """The eval hook (see the module docstring). ``n_prompts`` held-out prompts, ``max_new_tokens`` per sample."""

    n_prompts: int = 32
    max_new_tokens: int = 48
    sample_seed: int = 0
    batch_size: int = 16
    reward_model: Optional[str] = None
    oracle: Optional[str] = None
    oracle_dir: Optional[str] = None
    judge: Optional[str] = None
    judge_dir: Optional[str] = None
    prompts: List[List[int]] = field(default_factory=list)
    model_cfg: Any = None  # the run's ModelConfig (to load the starting weights as the reference)
    train_seed: int = 0
    _cache: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def bind(self, cfg, eval_data) -> "HeldOutMeasures":
        if not eval_data:
            raise ConfigError("dpolab compare: the run has no held-out pairs to measure on")
        return replace(
            self,
            prompts=[list(p.prompt_ids) for p in eval_data[: self.n_prompts]],
            model_cfg=cfg.model,
            train_seed=cfg.train.seed,
            _cache={},
        )

    def __getstate__(self):  # loaded models stay in the process that loaded them
        return {**self.__dict__, "_cache": {}}

    def _reference(self, model, tokenizer):
        """(the model that scores pi_ref, the context to score it in): see :func:`starting_model`."""
        return starting_model(model, tokenizer, self.model_cfg, self.train_seed, self._cache)

    def _token_logps(self, model, prompts, responses, pad: int):
        """Per-token log-probs [n, T-1] of each response after its prompt, and their mask."""
        import torch

        from ..models.logprobs import response_logps

        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        rows, masks = [], []
        try:
            for start in range(0, len(prompts), self.batch_size):
                ps, rs = prompts[start : start + self.batch_size], responses[start : start + self.batch_size]
                width = max(len(p) + len(r) for p, r in zip(ps, rs))
                ids = torch.full((len(ps), width), pad, dtype=torch.long)
                attn = torch.zeros((len(ps), width), dtype=torch.long)
                loss = torch.zeros((len(ps), width), dtype=torch.bool)
                for i, (p, r) in enumerate(zip(ps, rs)):
                    ids[i, : len(p) + len(r)] = torch.tensor(p + r)
                    attn[i, : len(p) + len(r)] = 1
                    loss[i, len(p) : len(p) + len(r)] = True
                with torch.no_grad():
                    lp = response_logps(model, ids.to(device), attn.to(device), loss.to(device))
                rows += list(lp.token_logps.cpu())
                masks += list(lp.token_mask.cpu())
        finally:
            model.train(was_training)
        return rows, masks

    def __call__(self, model, tokenizer, step: int) -> Dict[str, float]:
        from ..models.generation import generate_ids

        eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        samples = generate_ids(
            model,
            self.prompts,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            do_sample=True,
            seed=self.sample_seed,
            pad_id=pad,
            eos_id=eos,
        )
        lengths = [len(s) for s in samples]
        scored = [s + [eos] if eos is not None and len(s) < self.max_new_tokens else s for s in samples]
        keep = [i for i, s in enumerate(scored) if s]  # a response of no tokens has no log-prob to compare
        out: Dict[str, float] = {"compare/sample_tokens": sum(lengths) / len(lengths)}
        if keep:
            prompts, responses = [self.prompts[i] for i in keep], [scored[i] for i in keep]
            pol, mask = self._token_logps(model, prompts, responses, pad)
            ref_model, context = self._reference(model, tokenizer)
            with context():
                ref, _ = self._token_logps(ref_model, prompts, responses, pad)
            per_response = [float(k3_kl(p, r, m)) for p, r, m in zip(pol, ref, mask)]
            out["compare/kl"] = sum(per_response) / len(per_response)
        texts = [
            (tokenizer.decode(p, skip_special_tokens=True), tokenizer.decode(s, skip_special_tokens=True))
            for p, s in zip(self.prompts, samples)
        ]
        if self.reward_model:
            out["compare/rm_reward"] = self._rm_reward(texts, next(model.parameters()).device)
        if self.oracle:
            fn = self._cache.get("oracle") or load_oracle(self.oracle, self.oracle_dir)
            self._cache["oracle"] = fn
            out["compare/oracle"] = sum(call_oracle(fn, self.oracle, p, r) for p, r in texts) / len(texts)
        if self.judge:
            out["compare/judge"] = self._judge_mean(texts, next(model.parameters()).device)
        return out

    def _judge_mean(self, texts, device) -> float:
        from ..engine.judges import build_judge

        if "judge" not in self._cache:
            self._cache["judge"] = build_judge(self.judge, device=device, search_dir=self.judge_dir)
        scores = self._cache["judge"].score([p for p, _ in texts], [r for _, r in texts])
        return sum(scores) / len(scores)

    def _rm_reward(self, texts, device) -> float:
        from ..rewards.model import load_trained_reward_model
        from ..rewards.score import score_texts

        if "rm" not in self._cache:
            rm, tok = load_trained_reward_model(self.reward_model)
            self._cache["rm"] = (rm.to(device).eval(), tok)
        rm, tok = self._cache["rm"]
        rewards = score_texts(rm, tok, texts, device, self.batch_size)
        return sum(rewards) / len(rewards)


def starting_model(model, tokenizer, model_cfg, seed: int, cache: Dict[str, Any]):
    """(the starting model, the context to use it in): under LoRA the policy with its adapters off; else the starting
    weights, loaded once into ``cache`` on the policy's device."""
    from contextlib import nullcontext

    if hasattr(model, "disable_adapter"):
        return model, model.disable_adapter
    if "reference" not in cache:
        from ..models.load import load_base_model

        ref = load_base_model(model_cfg, tokenizer, seed=seed, max_positions=_positions(model))
        cache["reference"] = ref.to(next(model.parameters()).device).eval()
    return cache["reference"], nullcontext


@dataclass
class HeldOutProbes:
    """The likelihood probes of a preference run as an eval hook (see the module docstring): the probe set is built
    as :class:`dpolab.engine.objectives.preference.PreferenceObjective` builds it (the first ``eval.probe_examples``
    held-out pairs, ``train.seed``, the starting model's greedy responses, ``eval.edit_buckets``), and its baseline
    is the starting model's scores, so a resumed run gets the same deltas. ``pairs``: the held-out pairs (tokenised
    as preference pairs); empty: read at ``bind`` from the run's data, split with ``split_seed`` (None: its
    ``train.seed``)."""

    pairs: List[Any] = field(default_factory=list)
    split_seed: Optional[int] = None
    cfg: Any = None
    _cache: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def bind(self, cfg, eval_data) -> "HeldOutProbes":
        pairs = self.pairs
        if not pairs:
            from ..engine.data_setup import prepare_data
            from ..models.load import load_tokenizer

            seed = cfg.train.seed if self.split_seed is None else self.split_seed
            train, evals = prepare_data(cfg.data, load_tokenizer(cfg.model), "preference", seed, log=lambda s: None)
            pairs = evals or train
        if not pairs:
            raise ConfigError("held-out probes: the run has no preference pairs to build probes from")
        return replace(self, pairs=list(pairs)[: cfg.eval.probe_examples], cfg=cfg, _cache={})

    def __getstate__(self):
        return {**self.__dict__, "_cache": {}}

    def _autocast(self, device):
        from ..engine.precision import autocast_factory, resolve_bf16

        return autocast_factory(resolve_bf16(self.cfg.train.bf16, device)[0], device)

    def __call__(self, model, tokenizer, step: int) -> Dict[str, float]:
        from ..diagnostics.probes import build_probe_set, probe_metrics, score_probes

        cfg, device = self.cfg, next(model.parameters()).device
        pad, batch = tokenizer.pad_token_id, cfg.eval.batch_size
        if "probes" not in self._cache:
            autocast = self._autocast(device)
            start, context = starting_model(model, tokenizer, cfg.model, cfg.train.seed, self._cache)
            was_training = start.training
            with context():
                start.eval()
                probes = build_probe_set(
                    self.pairs,
                    tokenizer,
                    n=cfg.eval.probe_examples,
                    seed=cfg.train.seed,
                    model=start,
                    greedy_tokens=cfg.eval.probe_greedy_tokens,
                    batch_size=batch,
                    edges=cfg.eval.edit_buckets,
                )
                baseline = score_probes(start, probes, pad, batch_size=batch, autocast=autocast)
            start.train(was_training)
            self._cache.update(probes=probes, baseline=baseline, autocast=autocast)
            self._cache.pop("reference", None)  # the starting weights are needed only for the baseline
        probes = self._cache["probes"]
        scores = score_probes(model, probes, pad, batch_size=batch, autocast=self._cache["autocast"])
        return probe_metrics(scores, self._cache["baseline"], probes.buckets)


def k3_kl(policy_logps, ref_logps, mask):
    """The KL estimate of one sampled response (or a batch of them, over the last axis): the sum over its tokens of
    (r - 1) - log r with log r = log pi_ref - log pi at the sampled token. Each term is >= 0 (r - 1 >= log r) and its
    mean under pi is KL(pi || pi_ref) at that step, so the sum is an unbiased, never negative estimate of the sequence
    KL. Computed in float64 with ``expm1`` (no cancellation for small log r); the clamp at 0 only removes rounding."""
    import torch

    log_r = (ref_logps.double() - policy_logps.double()) * mask
    return (torch.expm1(log_r) - log_r).clamp_min(0.0).sum(-1)


def _positions(model) -> int:
    cfg = getattr(model, "config", None)
    return int(getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None) or 1024)


def oracle_dir_for(spec: Optional[str]) -> Optional[str]:
    """The folder the oracle's module was found in (workers in other processes add it to their path)."""
    if not spec:
        return None
    name = spec.partition(":")[0]
    file = getattr(sys.modules.get(name), "__file__", None)
    if not file:
        return os.getcwd()
    folder = Path(file).resolve().parent
    for _ in range(
        name.count(".") + (Path(file).name == "__init__.py")
    ):  # a package's module: its top package's parent
        folder = folder.parent
    return str(folder)
