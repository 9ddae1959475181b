"""``dpolab compare``: which method, on my data, does what to my model?

A grid of ordinary preference runs, one per method and seed, all from the same starting model on the same training
pairs, measured on the same held-out pairs (``--eval-data``, or a split fixed by ``split_seed`` that every seed
shares), then a report (:mod:`dpolab.studies.compare_report`) with paired-by-seed verdicts against a baseline method.
Seeds vary the data order (and dropout / sampling); a tiny preset's random starting weights are made once, from
``model_seed``, so every run starts from the same model. The reference log-probs are computed once, before the grid,
into a cache every run shares (``reference.mode=precomputed``, keyed by :mod:`dpolab.models.reference`); the report
gives the time that saved, measured. Runs go through an executor (:mod:`dpolab.studies.executors`) and resume like
study runs (:mod:`dpolab.studies.runner`).

Methods are loss-registry names with optional parameters and weights: ``dpo``, ``dpop:lam=50``,
``dpo:beta=0.2:gate={mode: q10}`` (parameters, or the wrappers gate / weighting / divergence / ld_alpha, values in
YAML), and weighted lists ``dpo+0.1*sft``. ``online:<method>`` is that method's on-policy twin (``train.mode=online``,
judged by ``--judge``; :mod:`dpolab.studies.compare_online`), trained and measured beside the offline arms.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import yaml

from ..config import ConfigError, build_config, load_yaml, merge_overrides
from .common import deep_merge
from .compare_measures import HeldOutMeasures, HeldOutProbes, call_oracle, load_oracle, oracle_dir_for
from .compare_online import as_offline_measures, check_judge, is_online, offline_method, online_config
from .runner import RunSpec

WRAPPERS = ("gate", "weighting", "divergence", "ld_alpha")
RESERVED = ("loss", "train.seed", "train.mode", "output.dir", "model.init_from")  # set per run by the grid


@dataclass
class CompareOptions:
    """Every option of ``dpolab compare`` (the flags, or the keys of ``--config compare.yaml``)."""

    model: str = "tiny-gpt2"
    data: Optional[str] = None
    task: Optional[str] = None
    eval_data: Optional[str] = None
    eval_fraction: float = 0.1
    min_eval: int = 8
    methods: List[str] = field(default_factory=lambda: ["dpo", "ipo", "dpop"])
    baseline: Optional[str] = None
    seeds: int = 3
    lora: Optional[bool] = None  # None: LoRA except for the tiny presets
    budget: str = "1epochs"
    evals: int = 8
    samples: int = 32
    max_new_tokens: int = 48
    reward_model: Optional[str] = None
    oracle: Optional[str] = None
    # what scores an on-policy arm's samples (online.judge), and every arm's held-out samples
    judge: Optional[str] = None
    split_seed: int = 0
    model_seed: int = 0
    out: str = "runs/compare"
    set: List[str] = field(default_factory=list)
    executor: str = "local"
    parallel: int = 1
    address: Optional[str] = None
    partition: Optional[str] = None
    array: bool = False
    cluster: Optional[str] = None
    cpus: Optional[int] = None
    gpus: int = 0
    mem: Optional[float] = None
    time: Optional[int] = None

    @classmethod
    def from_sources(cls, config_file: Optional[str], flags: Dict[str, Any]) -> "CompareOptions":
        """The config file's keys (``-`` or ``_``), then every flag that was given (not None)."""
        names = {f.name for f in fields(cls)}
        data: Dict[str, Any] = {}
        if config_file:
            for k, v in load_yaml(config_file).items():
                key = str(k).replace("-", "_")
                if key not in names:
                    raise ConfigError(f"{config_file}: unknown key '{k}'; valid: {', '.join(sorted(names))}")
                data[key] = v
        data.update({k: v for k, v in flags.items() if v is not None and k in names})
        if isinstance(data.get("methods"), str):
            data["methods"] = split_top(data["methods"], ",")
        if isinstance(data.get("set"), str):
            data["set"] = [data["set"]]
        return cls(**data).check()

    def check(self) -> "CompareOptions":
        for name, lo in (
            ("seeds", 1),
            ("evals", 1),
            ("samples", 1),
            ("max_new_tokens", 1),
            ("min_eval", 1),
            ("parallel", 1),
        ):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < lo:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= {lo}, got {getattr(self, name)!r}")
        if (
            isinstance(self.eval_fraction, bool)
            or not isinstance(self.eval_fraction, (int, float))
            or not 0 < self.eval_fraction < 1
        ):
            raise ConfigError(f"--eval-fraction must be a number in (0, 1), got {self.eval_fraction!r}")
        if not self.methods:
            raise ConfigError("--methods: name at least one method")
        if sum(x is not None for x in (self.data, self.task)) != 1 and not any(
            s.startswith(("data.train=", "data.task=")) for s in self.set
        ):
            raise ConfigError(
                "give the training pairs: --data FILE (any format dpolab train reads) or --task NAME (built-in)"
            )
        for s in self.set:
            key = s.split("=", 1)[0].strip()
            if any(key == r or key.startswith(r + ".") for r in RESERVED):
                raise ConfigError(f"--set {s}: '{key}' is set by the comparison for each run (use --methods, --seeds)")
            if key == "online.judge":
                raise ConfigError(f"--set {s}: give the judge as --judge SPEC (it also scores every arm's samples)")
        if self.judge is not None:
            self.judge = check_judge(self.judge)
        return self


# -- methods ----------------------------------------------------------------------------------------------------


def split_top(text: str, sep: str) -> List[str]:
    """``text`` split at ``sep`` outside brackets and braces (``dpo:gate={mode: q10, alpha: 30},ipo``)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{(" and 1 or 0
        depth -= ch in "]})" and 1 or 0
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


_WEIGHT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*(.+)$")


def parse_method(text: Any) -> tuple[str, List[Dict[str, Any]]]:
    """(label, loss list) of one method: ``dpop:lam=50``, ``dpo+0.1*sft``, or a mapping {name: label, loss: [...]}."""
    if isinstance(text, dict):
        if set(text) != {"name", "loss"}:
            raise ConfigError(f"methods: a method given as a mapping has keys name and loss, got {sorted(text)}")
        return str(text["name"]), list(text["loss"])
    label = str(text).strip()
    loss = []
    for term in split_top(label, "+"):
        weight = 1.0
        m = _WEIGHT.match(term)
        if m:
            weight, term = float(m.group(1)), m.group(2).strip()
        name, *params = split_top(term, ":")
        spec: Dict[str, Any] = {"name": name, "weight": weight}
        for p in params:
            if "=" not in p:
                raise ConfigError(f"--methods '{label}': parameter '{p}' must look like key=value (e.g. dpop:lam=50)")
            k, v = (x.strip() for x in p.split("=", 1))
            value = yaml.safe_load(v) if v else None
            if k in WRAPPERS:
                spec[k] = value
            else:
                spec.setdefault("params", {})[k] = value
        loss.append(spec)
    return label, loss


def methods_of(opts: CompareOptions) -> Dict[str, List[Dict[str, Any]]]:
    """label -> loss list, each checked against the loss registry (a one-line error naming the method)."""
    out: Dict[str, List[Dict[str, Any]]] = {}
    for text in opts.methods:
        if isinstance(text, str) and is_online(text.strip()):
            label, loss = text.strip(), parse_method(offline_method(text.strip()))[1]
        else:
            label, loss = parse_method(text)
        if is_online(label) and not opts.judge:
            raise ConfigError(
                f"--methods '{label}' trains on-policy and needs a judge of its samples: give --judge SPEC "
                "(rm:PATH, module:function, task:arithmetic or task:sentiment)"
            )
        if label in out:
            raise ConfigError(f"--methods: '{label}' is listed twice")
        try:
            build_config({"loss": loss})
        except ConfigError as e:
            raise ConfigError(f"--methods '{label}': {str(e).removeprefix('loss: ')}") from None
        out[label] = loss
    if opts.baseline is not None and opts.baseline not in out:
        raise ConfigError(f"--baseline '{opts.baseline}' is not one of the methods ({', '.join(out)})")
    return out


def baseline_of(opts: CompareOptions, methods: Dict[str, Any]) -> str:
    return opts.baseline if opts.baseline is not None else next(iter(methods))


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=_-]+", "-", label.replace("*", "x").replace("+", "-plus-")).strip("-") or "method"


# -- the grid ---------------------------------------------------------------------------------------------------


def parse_budget(text: str) -> Dict[str, Any]:
    """``200steps`` -> max_steps 200; ``2epochs`` / ``0.5epoch`` -> epochs."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(steps?|epochs?)\s*", str(text))
    if not m:
        raise ConfigError(f"--budget must look like 200steps or 2epochs, got '{text}'")
    n = float(m.group(1))
    if m.group(2).startswith("step"):
        if not n.is_integer() or n < 1:
            raise ConfigError(f"--budget: steps must be a whole number >= 1, got '{text}'")
        return {"max_steps": int(n)}
    if n <= 0:
        raise ConfigError(f"--budget: epochs must be > 0, got '{text}'")
    return {"epochs": n, "max_steps": None}


def _uses_lora(opts: CompareOptions) -> bool:
    from ..models.load import TINY_PRESETS

    return opts.lora if opts.lora is not None else opts.model not in TINY_PRESETS


def base_config(opts: CompareOptions, out: Path) -> Dict[str, Any]:
    """The config every run shares (before its method, seed and schedule), with the user's ``--set`` applied."""
    data: Dict[str, Any] = {"eval_fraction": float(opts.eval_fraction)}
    if opts.data:
        data["train"] = opts.data
    if opts.task:
        data["task"] = opts.task
    if opts.eval_data:
        data["eval"] = opts.eval_data
    cfg = {
        "model": {"name_or_path": opts.model},
        "lora": {"enabled": _uses_lora(opts)},
        "data": data,
        "reference": {"mode": "precomputed", "cache_dir": str(out / "ref_cache")},
        "train": {"mode": "preference"},
        "eval": {"probes": True},
        "output": {"progress": False},
    }
    cfg = merge_overrides(cfg, opts.set)
    build_config(cfg)  # a bad --set is an error here, naming the key
    return cfg


@dataclass
class Prepared:
    """What the checks before training found: the data sizes, the steps of a run, the starting model."""

    n_train: int
    n_eval: int
    steps: int
    max_positions: int
    start_model: Optional[str]  # the materialised starting weights of a tiny preset (None: the model itself)
    probe_pairs: List[Any] = field(default_factory=list, repr=False)  # the held-out pairs the probes are built from


def prepare(opts: CompareOptions, out: Path, cfg: Dict[str, Any]) -> Prepared:
    """Load and split the data as every run will (a clear error for too few rows), check the oracle on one held-out
    pair, and work out the steps of one run and where a tiny preset's starting weights go (nothing is written)."""
    from ..engine.batching import BatchPlan
    from ..engine.data_setup import prepare_data
    from ..models.load import TINY_PRESETS, load_tokenizer

    run = build_config(deep_merge(cfg, {"train": parse_budget(opts.budget)}))  # the runs' steps (--budget)
    tok = load_tokenizer(run.model)
    train, evals = prepare_data(run.data, tok, "preference", opts.split_seed, log=lambda s: None)
    if not evals:
        raise ConfigError("no held-out pairs: give --eval-data or a larger --eval-fraction")
    if len(evals) < opts.min_eval:
        where = (
            f"--eval-data {opts.eval_data}"
            if opts.eval_data
            else f"--eval-fraction {opts.eval_fraction} of {len(train) + len(evals)} usable rows"
        )
        raise ConfigError(
            f"only {len(evals)} held-out pairs ({where}); the comparison needs at least {opts.min_eval} "
            f"(--min-eval): give --eval-data, a larger --eval-fraction or more rows"
        )
    if opts.oracle:
        first = evals[0]
        call_oracle(
            load_oracle(opts.oracle),
            opts.oracle,
            tok.decode(first.prompt_ids, skip_special_tokens=True),
            tok.decode(first.chosen_ids, skip_special_tokens=True),
        )
    if opts.judge:  # a judge that cannot load or score fails here, before anything is trained
        from ..engine.judges import build_judge

        first = evals[0]
        build_judge(opts.judge, search_dir=None).score(
            [tok.decode(first.prompt_ids, skip_special_tokens=True)],
            [tok.decode(first.chosen_ids, skip_special_tokens=True)],
        )
    if opts.reward_model and not Path(opts.reward_model).exists():
        raise ConfigError(f"--reward-model: folder not found: {opts.reward_model}")
    t = run.train
    plan = BatchPlan(len(train), t.batch_size, t.grad_accum)
    steps = t.max_steps or max(1, math.ceil(t.epochs * plan.steps_per_epoch))
    lengths = [len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in list(train) + list(evals)]
    max_positions = max(1024, max(lengths))
    start = None
    if run.model.name_or_path in TINY_PRESETS and not run.model.init_from:
        start = str(out / "start-model")
    return Prepared(len(train), len(evals), steps, max_positions, start, list(evals))


def write_start_model(
    opts: CompareOptions, cfg: Dict[str, Any], prep: Prepared, *, log: Callable[[str], None] = print
) -> None:
    """Make a tiny preset's starting weights once (from ``model_seed``), shared by every run."""
    from transformers.utils import logging as hf_logging

    from ..models.load import load_base_model, load_tokenizer, save_model

    if not prep.start_model or (Path(prep.start_model) / "config.json").exists():
        return
    run = build_config(cfg)
    tok = load_tokenizer(run.model)
    hf_logging.disable_progress_bar()
    model = load_base_model(run.model, tok, seed=opts.model_seed, max_positions=prep.max_positions)
    save_model(model, tok, prep.start_model, run.model, opts.model_seed)
    log(f"starting model: {run.model.name_or_path} from seed {opts.model_seed} -> {prep.start_model}")


def specs(
    opts: CompareOptions, out: Path, cfg: Dict[str, Any], prep: Prepared, methods: Dict[str, List[Dict[str, Any]]]
) -> List[RunSpec]:
    """One run per (seed, method): the same data, split, starting model and reference cache."""
    every = max(1, prep.steps // opts.evals)
    hook = HeldOutMeasures(
        n_prompts=min(opts.samples, prep.n_eval),
        max_new_tokens=opts.max_new_tokens,
        reward_model=opts.reward_model,
        oracle=opts.oracle,
        oracle_dir=oracle_dir_for(opts.oracle),
        judge=opts.judge,
        judge_dir=oracle_dir_for(opts.judge) if opts.judge and _judge_kind(opts.judge) == "function" else None,
    )
    user_eval = build_config(cfg).eval
    probes = [HeldOutProbes(pairs=prep.probe_pairs)] if user_eval.probes else []
    shared = deep_merge(
        cfg,
        {
            "eval": {"every": every, "probe_examples": min(prep.n_eval, user_eval.max_examples or prep.n_eval)},
            "output": {"save_every": max(1, prep.steps // 4)},
            "train": parse_budget(opts.budget),
        },
    )
    if prep.start_model:
        shared = deep_merge(shared, {"model": {"init_from": prep.start_model}})
    online_settings = shared.pop("online", None)  # --set online.*: the on-policy arms' alone
    out_specs = []
    for seed in range(opts.seeds):
        for label, loss in methods.items():
            run_cfg = deep_merge(shared, {"loss": loss, "train": {"seed": seed}})
            hooks: List[Any] = [hook]
            if is_online(label):
                run_cfg = online_config(run_cfg, str(opts.judge), online_settings)
                hooks += probes
            out_specs.append(
                RunSpec(
                    f"{slug(label)}/seed{seed}",
                    run_cfg,
                    {"method": label, "seed": seed},
                    hooks=hooks,
                    data_seed=opts.split_seed,
                )
            )
    return out_specs


def _judge_kind(spec: str) -> str:
    from ..engine.judges import check_judge_spec

    return check_judge_spec(spec)


def refuse_retraining(grid: Sequence[RunSpec], out: Path) -> None:
    """A rerun into the same ``--out`` with other settings (another ``--budget``, ``--set``, ...) would train its
    finished runs again over their results, as the runner retrains a run whose config changed: refuse, saying which
    settings differ (the same settings skip finished runs and resume unfinished ones)."""
    from ..engine.trainer import DONE_MARKER
    from .runner import _config_of, run_is_finished  # the run's folder and config exactly as the runner builds them

    changed = []
    for spec in grid:
        run_dir, cfg = _config_of(spec, out)
        if (run_dir / DONE_MARKER).exists() and not run_is_finished(spec, out):
            try:
                saved = build_config(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))).to_dict()
            except Exception:  # noqa: BLE001 - an unreadable or outdated config: it differs, in ways not listed
                saved = {}
            changed.append((spec.run_id, _differences(saved, cfg.to_dict()) if saved else []))
    if not changed:
        return
    diffs = sorted({d for _, ds in changed for d in ds})
    earlier = out / "compare.yaml"
    budget = ""
    if earlier.exists():
        before = (yaml.safe_load(earlier.read_text(encoding="utf-8")) or {}).get("budget")
        budget = f"; {earlier} says --budget {before}" if before else ""
    raise ConfigError(
        f"--out {out} holds {len(changed)} finished run(s) of this grid trained with other settings "
        f"({', '.join(diffs[:4]) or 'their configs differ'}{', ...' if len(diffs) > 4 else ''}{budget}): "
        f"this comparison would train them again over their results; use another --out, or the same "
        f"settings to skip them"
    )


def _differences(old: Dict[str, Any], new: Dict[str, Any], prefix: str = "") -> List[str]:
    """``key: old -> new`` for every leaf that differs (``output.overwrite`` aside, which the runner sets)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, name + ".")
        elif a != b and name != "output.overwrite":
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


# -- the shared reference table ---------------------------------------------------------------------------------


@dataclass
class SharedReference:
    """Compute the reference table every run of the grid loads (same model, data and tokenisation), through the
    engine's own set-up so its cache key is exactly the runs'; and measure it: the set-up of a run with an empty
    cache, then with the table in place (their difference is what each run would spend computing its own)."""

    out: Path
    spec: RunSpec

    def __call__(self, _item=None) -> Dict[str, Any]:
        import shutil
        import tempfile

        from ..engine.trainer import Trainer
        from .runner import RunJob

        record_file = Path(self.out) / "reference.json"
        cfg_dict = deep_merge(
            self.spec.config, {"eval": {"probes": False}, "output": {"overwrite": True, "save_final": False}}
        )
        probe_dir = Path(self.out) / "reference-setup"
        cfg = build_config(cfg_dict, [f"output.dir={probe_dir}"])
        data = RunJob.data_of(cfg, self.spec.data_seed)
        record = json.loads(record_file.read_text(encoding="utf-8")) if record_file.exists() else None

        def setup(cache_dir: Path):
            t0 = time.perf_counter()
            trainer = Trainer(
                build_config(cfg_dict, [f"output.dir={probe_dir}", f"reference.cache_dir={cache_dir}"]),
                log=lambda s: None,
                **data,
            )
            seconds = time.perf_counter() - t0
            table = trainer.reference.cache_file if trainer.reference is not None else None
            trainer.close()
            return seconds, table

        _, table = setup(Path(cfg.reference.cache_dir))  # the shared table (computed here unless a rerun has it)
        if table is None:
            return {}
        if record is not None and record.get("cache_file") == str(table):  # a rerun: measured when it was computed
            shutil.rmtree(probe_dir, ignore_errors=True)
            return {**record, "computed_now": False}
        with tempfile.TemporaryDirectory(prefix="dpolab-ref-") as empty:
            cold, _ = setup(Path(empty))  # what a run computing its own table spends (imports already warm)
        warm, _ = setup(Path(cfg.reference.cache_dir))  # what a run loading the shared table spends
        shutil.rmtree(probe_dir, ignore_errors=True)
        record = {
            "cache_file": str(table),
            "setup_cold_s": cold,
            "setup_warm_s": warm,
            "computed_now": True,
            "examples": len(data["train_data"]) + len(data["eval_data"]),
        }
        from ..atomic import write_text

        write_text(record_file, json.dumps(record, indent=1))
        return record


# -- the command ------------------------------------------------------------------------------------------------


def command_line(opts: CompareOptions) -> str:
    """The ``dpolab compare`` command that repeats these options (defaults left out)."""
    default = CompareOptions()
    parts = ["dpolab compare"]
    for f in fields(opts):
        v = getattr(opts, f.name)
        if v == getattr(default, f.name) or f.name == "set":
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(v, bool):
            parts.append(flag if v else {"lora": "--full"}.get(f.name, ""))
        elif isinstance(v, list):
            parts.append(f"{flag} {','.join(map(str, v))}")
        else:
            parts.append(f"{flag} {v}")
    parts += [f"--set {s}" for s in opts.set]
    return " ".join(p for p in parts if p)


def _time_probe(probe: RunSpec, scratch: Path, probe_steps: int) -> Dict[str, Any]:
    """A few real timed steps of one run of the grid (set-up, seconds per step, one evaluation) on the pairs of its
    steps and a slice of the held-out pairs; the sizes it saw and the full ones, to scale by."""
    from ..engine.trainer import Trainer
    from .runner import RunJob

    probe_cfg = build_config(
        deep_merge(
            probe.config,
            {
                "train": {"max_steps": probe_steps},
                "eval": {"every": 0, "at_start": False},
                "output": {"save_every": 0, "save_final": False},
            },
        ),
        [f"output.dir={scratch / 'probe'}"],
    )
    data = RunJob.data_of(probe_cfg, probe.data_seed)
    # Time only what the probe needs: the pairs of its steps (so a reference table covers those alone) and a
    # slice of the held-out pairs; the full costs are extrapolated per pair by the caller.
    n_train_all, n_eval_all = len(data["train_data"]), len(data["eval_data"] or [])
    per_step = probe_cfg.train.batch_size * probe_cfg.train.grad_accum
    data["train_data"] = data["train_data"][: probe_steps * per_step]
    if data["eval_data"]:
        data["eval_data"] = data["eval_data"][: max(1, min(n_eval_all, probe_cfg.eval.batch_size))]
    t0 = time.perf_counter()
    trainer = Trainer(
        probe_cfg,
        log=lambda s: None,
        eval_hooks=[h.bind(probe_cfg, data["eval_data"]) for h in probe.hooks],
        **data,
    )
    setup = time.perf_counter() - t0
    t1 = time.perf_counter()
    trainer.evaluate()
    evaluation = time.perf_counter() - t1
    summary = trainer.fit()  # probe_steps real steps (and one more evaluation)
    return {
        "setup": setup,
        "evaluation": evaluation,
        "step_s": summary["wall_clock_s"] / max(1, summary["steps"]),
        "per_step": per_step,
        "n_train": (len(data["train_data"]), n_train_all),
        "n_eval": (len(data["eval_data"] or []), n_eval_all),
    }


def dry_run(opts: CompareOptions, *, log: Callable[[str], None] = print, probe_steps: int = 3) -> Dict[str, Any]:
    """Print the grid, the number of runs and a time estimate from a few real timed steps of the first method (and of
    the first on-policy arm, whose steps also sample and judge, when the grid has both kinds)."""
    import shutil
    import tempfile

    methods = methods_of(opts)
    out = Path(opts.out)
    cfg = base_config(opts, out)
    scratch = Path(tempfile.mkdtemp(prefix="dpolab-compare-probe-"))
    try:
        scratch_cfg = deep_merge(cfg, {"reference": {"cache_dir": str(scratch / "ref_cache")}})
        prep = prepare(opts, scratch, scratch_cfg)
        write_start_model(opts, scratch_cfg, prep, log=lambda s: None)
        grid = specs(opts, scratch, scratch_cfg, prep, methods)
        log(f"grid: {len(methods)} method(s) x {opts.seeds} seed(s) = {len(grid)} runs -> {out}")
        log(
            f"data: {prep.n_train} training pairs, {prep.n_eval} held-out pairs; {prep.steps} steps per run "
            f"({opts.budget}), evaluation every {max(1, prep.steps // opts.evals)} steps; "
            f"{'LoRA' if _uses_lora(opts) else 'full fine-tuning'}; baseline {baseline_of(opts, methods)}"
        )
        for spec in grid:
            on = spec.config["train"].get("mode") == "online"
            log(
                f"  {spec.run_id}: loss {json.dumps(spec.config['loss'])}"
                + (f", on-policy (train.mode=online, judge {opts.judge})" if on else "")
            )
        probes: Dict[str, RunSpec] = {}  # train.mode -> the first run of that kind
        for spec in grid:
            probes.setdefault(spec.config["train"]["mode"], spec)
        timed = {mode: _time_probe(spec, scratch / mode, probe_steps) for mode, spec in probes.items()}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    # Scale what grows with the pairs it touches: the probes of the set-up and every evaluation grow with the held-out
    # pairs; the shared reference table is one forward pass over the training pairs, about a third of a training
    # step's work per pair. Over-estimates where model loading and sampling (which do not grow) dominate.
    n_evals = prep.steps // max(1, prep.steps // opts.evals) + 2
    per_run: Dict[str, float] = {}
    for mode, t in timed.items():
        eval_scale = max(1.0, t["n_eval"][1] / max(1, t["n_eval"][0]))
        per_run[mode] = t["setup"] * eval_scale + prep.steps * t["step_s"] + n_evals * t["evaluation"] * eval_scale
        log(
            f"timed probe ({probe_steps} real steps of '{probes[mode].labels['method']}' on {t['n_train'][0]} pairs, "
            f"evaluation on {t['n_eval'][0]} of {t['n_eval'][1]} held-out pairs): set-up {t['setup']:.1f} s, "
            f"{t['step_s']:.2f} s/step, {t['evaluation']:.1f} s per evaluation (probes and samples)"
        )
    offline = timed.get("preference") or next(iter(timed.values()))
    table = offline["step_s"] / 3 * math.ceil(offline["n_train"][1] / max(1, offline["per_step"]))
    runs_s = sum(per_run[s.config["train"]["mode"]] for s in grid)
    total = table + runs_s
    each = f"about {per_run[next(iter(probes))]:.0f} s per run" + "".join(
        f" ({per_run[m]:.0f} s per {'on-policy' if m == 'online' else m} run)" for m in list(probes)[1:]
    )
    log(
        f"estimate (scaled to {offline['n_train'][1]} training and {offline['n_eval'][1]} held-out pairs; rough): the "
        f"shared reference table about {table:.0f} s once, then {each} ({n_evals} evaluations): "
        f"{total / 60:.1f} min for {len(grid)} runs one after another"
        + (
            f" (about {(table + runs_s / len(grid) * math.ceil(len(grid) / opts.parallel)) / 60:.1f} min with "
            f"--parallel {opts.parallel}, if the machine has the cores)"
            if opts.parallel > 1
            else ""
        )
    )
    return {
        "runs": len(grid),
        "per_run_s": per_run[next(iter(probes))],
        "per_run_by_mode_s": per_run,
        "total_s": total,
        "steps": prep.steps,
    }


def run_compare(opts: CompareOptions, *, log: Callable[[str], None] = print) -> Path:
    """Check everything, precompute the shared reference table, run the grid, write the report; returns its path."""
    from ..atomic import reported_as, write_text
    from .compare_report import write_report
    from .executors import Resources, make_executor
    from .runner import run_grid

    methods = methods_of(opts)
    out = Path(opts.out)
    executor = make_executor(
        opts.executor,
        out=out,
        parallel=opts.parallel,
        address=opts.address,
        partition=opts.partition,
        array=opts.array,
        cluster=opts.cluster,
        resources=Resources(cpus=opts.cpus, gpus=opts.gpus, mem_gb=opts.mem, time_min=opts.time),
    )
    cfg = base_config(opts, out)
    prep = prepare(opts, out, cfg)  # every check before anything is written or trained
    grid = specs(opts, out, cfg, prep, methods)
    refuse_retraining(grid, out)
    with reported_as(out):  # a read-only or unusable --out: one line naming it
        out.mkdir(parents=True, exist_ok=True)
    write_start_model(opts, cfg, prep, log=log)
    write_text(out / "compare.yaml", yaml.safe_dump(asdict(opts), sort_keys=False))
    log(
        f"compare: {len(methods)} method(s) x {opts.seeds} seed(s) = {len(grid)} runs on {prep.n_train} "
        "training pairs, "
        f"{prep.n_eval} held-out; executor {executor.describe()} -> {out}"
    )
    t0 = time.perf_counter()
    from ..losses import CompositeLoss

    needs_ref = [  # the offline runs that load the shared table (an on-policy run's reference is live)
        s for s in grid if CompositeLoss(s.config["loss"]).needs_reference and s.config["train"]["mode"] != "online"
    ]
    reference = (
        executor.map(SharedReference(out, needs_ref[0]), [None], names=["reference"], log=log)[0] if needs_ref else {}
    )
    results = {k: as_offline_measures(r) for k, r in run_grid(grid, out, log=log, executor=executor).items()}
    wall = time.perf_counter() - t0
    report = write_report(
        results,
        out,
        opts=opts,
        methods=methods,
        baseline=baseline_of(opts, methods),
        prep=prep,
        reference=reference,
        n_ref_runs=len(needs_ref),
        wall=wall,
        executor=executor.describe(),
        command=command_line(opts),
    )
    log(f"report: {report}")
    return report
