"""The ``dpolab`` command line: thin wrappers that parse, call the library and print.

    dpolab train --config my.yaml train.lr=1e-5 loss='[{name: dpo}, {name: sft, weight: 0.2}]'
    dpolab eval --model runs/x/final --data pairs.jsonl
    dpolab generate --model runs/x/final "Write a haiku about rain."   # a reply (chat template applied); chat: a loop
    dpolab rm train --config rm.yaml                 # reward model (Bradley-Terry) -> runs/x/final
    dpolab rm score --model runs/x/final --data pairs.jsonl --out scored.jsonl
    dpolab inspect-data --data pairs.jsonl --model gpt2   # how rows are tokenised, prompt|response boundary marked
    dpolab pretrain --text ../shared/data/tiny-shakespeare/input.txt   # cached tiny GPT-2 -> prints its final/ path
    dpolab study sft-dpo --size cpu                    # a packaged study (`dpolab study --help` lists them)
    dpolab compare --data pairs.jsonl --methods dpo,ipo,dpop:lam=50 --seeds 3   # which method does what on my data
    dpolab demo
    dpolab losses
    dpolab config            # every option with its default and help

A mistake the user can fix (:class:`dpolab.errors.UserError`: bad config, bad data, missing package) is printed as
one line, ``error: ...``, with exit code 2; anything else is a bug or an environment failure and keeps its
traceback. ``--traceback`` shows the full traceback (with the chain of causes) for user errors too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Callable, List, Optional


def _expected_errors() -> tuple:
    """The errors printed as one line: the user can fix them (every other exception keeps its traceback)."""
    from .errors import UserError

    return (UserError,)


def _cmd_train(args) -> int:
    from .config import load_config
    from .engine import train

    cfg = load_config(args.config, args.overrides)
    summary = train(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:  # under `accelerate launch`, one summary, not one per process
        _print_summary(summary, cfg.output.dir)
    return 0


def _print_summary(summary: dict, run_dir: str) -> None:
    final = summary.get("final_eval") or {}
    keys = [
        k
        for k in (
            "eval/loss",
            "eval/reward_accuracy",
            "eval/reward_ties",
            "eval/logratio_margin",
            "eval/logratio/chosen",
            "eval/logratio/rejected",
            "eval/online/judge_mean",
        )
        if k in final
    ]
    shown = ", ".join(
        f"{k.split('/', 1)[1]}=" + (f"{final[k]:.4f}" if isinstance(final[k], (int, float)) else str(final[k]))
        for k in keys
    )
    print(
        f"done: {summary['steps']} steps in {summary['wall_clock_s']:.1f}s, peak memory "
        f"{summary['peak_memory_mb']:.0f} MB" + (f"; eval {shown}" if shown else "") + f"\nrun folder: {run_dir}"
    )


def _check_at_least(minimum: int, **options) -> None:
    """A command-line number below ``minimum`` is a user error naming the option (None: not given)."""
    from .config import ConfigError

    for name, v in options.items():
        if v is not None and v < minimum:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {minimum}, got {v}")


def _cmd_eval(args) -> int:
    from .evaluation.preference import evaluate_preference_file

    _check_at_least(1, batch_size=args.batch_size, max_length=args.max_length, limit=args.limit)
    _check_at_least(0, probes=args.probes)
    if not (math.isfinite(args.beta) and args.beta > 0):
        from .config import ConfigError

        raise ConfigError(f"--beta must be a finite number > 0, got {args.beta}")
    model = args.model
    if args.gguf_file:  # de-quantised once into a cached Hugging Face folder (dpolab/models/presets.py)
        from .models.presets import gguf_model_folder

        model = gguf_model_folder(args.model, args.gguf_file)
    result = evaluate_preference_file(
        model,
        args.data,
        reference=args.reference,
        beta=args.beta,
        batch_size=args.batch_size,
        max_length=args.max_length,
        limit=args.limit,
        columns=_parse_columns(args.columns),
        tokenizer=args.tokenizer,
        probes=args.probes,
        per_pair=args.per_pair,
        data_format=args.format,
        log=lambda m: print(m, file=sys.stderr),
        device=args.device,
        progress=not args.no_progress,
        bf16=args.bf16,
        threads=args.threads,
    )
    text = json.dumps(_finite_or_null(result), indent=1, allow_nan=False)  # NaN is not JSON: null (no value) instead
    if args.out:
        from .atomic import write_text

        write_text(args.out, text + "\n")
    print(text)
    return 0


def _finite_or_null(value):
    """``value`` with every NaN or infinite float (a metric with no value, e.g. an interval of one pair) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def _sampling_options(args):
    from .evaluation.chat import SamplingOptions

    return SamplingOptions(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        template=not args.no_chat_template,
        system=args.system,
    ).check()


def _cmd_generate(args) -> int:
    from .config import ConfigError
    from .evaluation.chat import check_text, load_chat_model, read_text, reply

    opts = _sampling_options(args)
    prompt = check_text(args.prompt, "the prompt argument") if args.prompt is not None else read_text(sys.stdin)
    if not prompt.strip():
        raise ConfigError("no prompt: give it as an argument or on stdin")
    model, tok = load_chat_model(args.model, tokenizer=args.tokenizer, device=args.device)
    print(reply(model, tok, [{"role": "user", "content": prompt.strip()}], opts), flush=True)
    return 0


def _cmd_chat(args) -> int:
    from .evaluation.chat import Conversation, input_lines, load_chat_model

    opts = _sampling_options(args)
    model, tok = load_chat_model(args.model, tokenizer=args.tokenizer, device=args.device)
    chat = Conversation(model, tok, opts)
    interactive = sys.stdin.isatty()
    if interactive:
        print("chat with the model: one line per turn; an empty line, 'exit' or Ctrl-D ends", file=sys.stderr)
    for line in input_lines(sys.stdin, interactive):
        if not line.strip() or line.strip() in ("exit", "quit"):
            break
        print(chat.say(line.strip()), flush=True)
    return 0


def _device_help() -> str:  # dpolab.models.device.resolve_device reads it (not imported here: --help needs no torch)
    return (
        "where the model runs: auto (default: the GPU when torch sees one, else the CPU), cpu, cuda, cuda:N or mps; "
        "bf16 autocast on a GPU that supports it"
    )


def _add_compute_args(p) -> None:
    """``--bf16`` and ``--threads`` of the scoring commands, decided as train.bf16 / train.threads decide."""
    p.add_argument(
        "--bf16",
        choices=["auto", "true", "false"],
        default=None,
        help="bf16 autocast: true, false or auto (as train.bf16=auto: a GPU with bf16, or a CPU with amx_bf16 or "
        "avx512_bf16); default: bf16 on a GPU that supports it, else fp32",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (as train.threads; default: OMP_NUM_THREADS or all)"
    )


def _parse_columns(items: Optional[List[str]]) -> Optional[dict]:
    if not items:
        return None
    from .config import ConfigError

    out = {}
    for it in items:
        if "=" not in it:
            raise ConfigError(f"--column must look like field=column, got '{it}'")
        k, v = it.split("=", 1)
        out[k] = v
    return out


def _cmd_rm_train(args) -> int:
    from .config import load_config
    from .engine import train

    cfg = load_config(args.config, [*args.overrides, "train.mode=rm"])
    summary = train(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        final = summary.get("final_eval") or {}
        stats = [
            ("pairwise accuracy", "eval/reward_accuracy"),
            ("margin", "eval/margin"),
            ("margin std", "eval/margin/std"),
            ("reward mean", "eval/rewards/mean"),
            ("reward std", "eval/rewards/std"),
        ]
        shown = ", ".join(f"{name} {final[k]:.4f}" for name, k in stats if k in final)
        print(
            f"done: {summary['steps']} steps in {summary['wall_clock_s']:.1f}s"
            + (f"; eval {shown}" if shown else "")
            + f"\nreward model: {os.path.join(cfg.output.dir, 'final')}"
        )
    return 0


def _cmd_rm_score(args) -> int:
    from .rewards.score import score_file

    _check_at_least(1, max_length=args.max_length)
    summary = score_file(
        args.model,
        args.data,
        args.out,
        batch_size=args.batch_size,
        max_length=args.max_length,
        columns=_parse_columns(args.columns),
        tokenizer=args.tokenizer,
        progress=not args.no_progress,
        log=lambda m: print(m, file=sys.stderr),
        device=args.device,
        bf16=args.bf16,
        threads=args.threads,
    )
    print(json.dumps(summary))
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(out_dir=args.out, quick=args.quick, seed=args.seed)  # ends with the report's path and what to try next
    return 0


def _cmd_study(args) -> int:
    from .studies.run import run_study

    _check_at_least(1, seeds=args.seeds)
    if args.name == "evidence":  # not a study: the table of every study's claims (docs/results/EVIDENCE.md)
        from pathlib import Path

        from .studies.evidence import build_evidence

        print(build_evidence(Path(args.results), size=args.size or "small"))
        return 0
    args.size = args.size or "cpu"
    if args.dry_run:
        from .studies.budget import dry_run

        print(
            dry_run(args.name, size=args.size, seeds=args.seeds, smoke=args.smoke, out=args.out, data_dir=args.data_dir)
        )
        return 0
    run_study(
        args.name,
        size=args.size,
        seeds=args.seeds,
        smoke=args.smoke,
        out=args.out,
        data_dir=args.data_dir,
        executor=_executor_options(args),
    )
    return 0


def _executor_options(args) -> dict:
    from .studies.executors import Resources

    return dict(
        name=args.executor,
        parallel=args.parallel or 1,
        address=args.address,
        partition=args.partition,
        array=args.array,
        resources=Resources(cpus=args.cpus, gpus=args.gpus or 0, mem_gb=args.mem, time_min=args.time),
    )


def _cmd_compare(args) -> int:
    from .studies.compare import CompareOptions, dry_run, run_compare

    flags = {
        k: getattr(args, k)
        for k in (
            "model",
            "data",
            "task",
            "eval_data",
            "eval_fraction",
            "min_eval",
            "baseline",
            "seeds",
            "lora",
            "budget",
            "evals",
            "samples",
            "max_new_tokens",
            "reward_model",
            "oracle",
            "judge",
            "split_seed",
            "model_seed",
            "out",
            "executor",
            "parallel",
            "address",
            "partition",
            "cpus",
            "gpus",
            "mem",
            "time",
        )
    }
    flags.update(methods=args.methods, set=args.set or None, array=args.array or None)
    opts = CompareOptions.from_sources(args.config, flags)
    if args.dry_run:
        dry_run(opts)
    else:
        run_compare(opts)
    return 0


def _add_executor_args(p: argparse.ArgumentParser) -> None:
    """Where the runs train (dpolab/studies/executors.py): the executor and each run's resources."""
    g = p.add_argument_group("executor (where the runs train)")
    g.add_argument(
        "--executor",
        choices=["local", "ray", "slurm"],
        help="local (default), ray (pip install ray) or slurm (through submitit: pip install submitit)",
    )
    g.add_argument("--parallel", type=int, help="local: this many runs at once, each in its own process (default 1)")
    g.add_argument("--address", help="ray: the cluster to join (default: a local Ray cluster)")
    g.add_argument("--partition", help="slurm: the partition")
    g.add_argument("--array", action="store_true", help="slurm: one job array instead of one job per run")
    g.add_argument(
        "--cpus",
        type=int,
        help="per run: CPU threads (Ray num_cpus, Slurm cpus-per-task; pins torch's threads "
        "so every executor gives the same numbers)",
    )
    g.add_argument("--gpus", type=int, help="per run: GPUs (ray, slurm)")
    g.add_argument("--mem", type=float, help="per run: memory in GB (ray, slurm)")
    g.add_argument(
        "--time", type=int, help="per run: time limit in minutes (slurm: required; without it submitit would ask for 5)"
    )


def _cmd_pretrain(args) -> int:
    from .config import ConfigError
    from .engine.pretrain import DEFAULT_TINY, PretrainSpec, pretrain

    tiny = dict(DEFAULT_TINY) if args.preset == "tiny-gpt2" else {}
    for item in args.tiny or []:
        if "=" not in item:
            raise ConfigError(f"--tiny must look like key=value (e.g. n_layer=4), got '{item}'")
        k, v = item.split("=", 1)
        tiny[k] = int(v) if v.lstrip("-").isdigit() else v
    spec = PretrainSpec(
        text=args.text,
        preset=args.preset,
        tiny=tiny,
        tokenizer=args.tokenizer,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        chunk_chars=args.chunk_chars,
        seed=args.seed,
    )
    for name, v in (("--steps", spec.steps), ("--batch-size", spec.batch_size), ("--chunk-chars", spec.chunk_chars)):
        if v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v}")
    path = pretrain(spec, args.cache_dir, progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr))
    print(path)
    return 0


def _cmd_losses(args) -> int:
    from .losses import list_losses

    for info in list_losses():
        needs = [
            x for x, on in (("reference", info.needs_reference), ("token log-probs", info.needs_token_logps)) if on
        ]
        needs += [f"column {c}" for c in info.needs_extras]
        params = ", ".join(f"{k}={v!r}" for k, v in info.defaults.items())
        print(
            f"{info.name:12s} {info.summary}\n{'':12s} params: {params or '-'}; needs: {', '.join(needs) or '-'}; "
            f"{info.paper}"
        )
    return 0


def _cmd_config(args) -> int:
    from .config import describe_config

    print(describe_config())
    return 0


def _cmd_inspect_data(args) -> int:
    """Show how the first rows of a data file are tokenised: options from --config (the model's tokenizer and the
    data section of a training config), overridden by the flags given."""
    from .config import ConfigError, ModelConfig, load_config
    from .data.inspection import format_inspection, inspect_data
    from .models.load import load_tokenizer

    _check_at_least(1, rows=args.rows, max_length=args.max_length)
    _check_at_least(0, max_prompt_length=args.max_prompt_length, max_tokens=args.max_tokens)
    cfg = load_config(args.config) if args.config else None
    if args.model or args.tokenizer:
        model_cfg = ModelConfig(name_or_path=args.model or ModelConfig().name_or_path, tokenizer=args.tokenizer)
    elif cfg is not None:
        model_cfg = cfg.model
    else:
        raise ConfigError(
            "name the tokenizer: --model M (its tokenizer), --tokenizer T (e.g. char, gpt2-offline) or --config C"
        )
    data = cfg.data if cfg is not None else None
    source = args.data or (data.train if data is not None else None)
    if not source:
        raise ConfigError("no data: give --data FILE (or --config with data.train set)")

    def pick(flag, name, default):
        return flag if flag is not None else (getattr(data, name) if data is not None else default)

    mode = args.mode
    if mode == "auto" and cfg is not None and args.data is None:  # the config's own data: its objective's kind decides
        from .engine.objectives import get_objective

        mode = get_objective(cfg.train.mode).data_kind.stored_as(cfg.data).inspect_as  # what the files hold
    columns = _parse_columns(args.columns) or (dict(data.columns) if data is not None and data.columns else None)
    tokenizer = load_tokenizer(model_cfg)
    result = inspect_data(
        source,
        tokenizer,
        rows=args.rows,
        mode=mode,
        columns=columns,
        max_length=pick(args.max_length, "max_length", 512),
        max_prompt_length=pick(args.max_prompt_length, "max_prompt_length", None),
        truncation_mode=pick(args.truncation, "truncation_mode", "keep_end"),
        split=pick(args.split, "split", None),
        data_format=data.format if data is not None else "auto",
    )
    try:  # token pieces are not ASCII (▁, Ġ): never fail on a console or pipe with a narrow encoding
        sys.stdout.reconfigure(errors="backslashreplace")
    except (AttributeError, ValueError):
        pass
    try:
        print(format_inspection(result, tokenizer, show_ids=args.ids, max_tokens=args.max_tokens), flush=True)
    except BrokenPipeError:  # `dpolab inspect-data ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _add_run_args(p: argparse.ArgumentParser, example: str) -> None:
    """The options every training command shares: a YAML config, --resume and key=value overrides."""
    p.add_argument("--config", "-c", help="YAML config file (optional: defaults + overrides also work)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in output.dir")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=example)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dpolab", description="Train and study language models with preference optimization."
    )
    p.add_argument("--traceback", action="store_true", help="show full tracebacks for errors (for bug reports)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train a model (SFT, preference pairs, KTO on unpaired rows; train.mode) from a YAML config plus "
        "overrides",
        description="Train from a YAML config. Any option can be overridden as section.key=value "
        "(run `dpolab config` for the full list).",
    )
    _add_run_args(t, "e.g. train.lr=1e-5 model.name_or_path=gpt2")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser(
        "eval",
        help="preference accuracy, rewards and log-probs of a model on a preference set",
        description="Score every pair of a preference set: reward accuracy (strict wins over all pairs) "
        "and ties, the margin (log-ratio margin with --reference, else the log-prob "
        "difference, plus its length-normalised variant), with 95 % intervals.",
    )
    e.add_argument(
        "--model", required=True, help="model name/path, a model preset (smollm2-135m) or a dpolab run's final/ folder"
    )
    e.add_argument(
        "--gguf-file",
        help="GGUF file name inside --model (a folder or hub repository); de-quantised once "
        "into a cached Hugging Face folder",
    )
    e.add_argument("--data", required=True, help="preference data (jsonl/json/csv/tsv/parquet/HF dataset)")
    e.add_argument("--reference", help="reference model (default: none; rewards are then plain log-prob differences)")
    e.add_argument("--tokenizer", help="tokenizer (default: the model's)")
    e.add_argument("--beta", type=float, default=0.1, help="beta for implicit rewards (default 0.1)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--max-length", type=int, default=512)
    e.add_argument(
        "--limit",
        type=int,
        help="evaluate at most the first this many pairs (default: all; the log says how many were scored)",
    )
    e.add_argument(
        "--format",
        default="auto",
        choices=["auto", "hh"],
        help="hh: parse Anthropic-HH text into chat messages for the tokenizer's chat template (as data.format)",
    )
    e.add_argument(
        "--per-pair",
        metavar="FILE.jsonl",
        help="also write one JSON line per scored pair: index, source row, "
        "log-probs, token counts, margin, its tie tolerance, "
        "win / tie / loss",
    )
    e.add_argument(
        "--column", dest="columns", action="append", metavar="FIELD=COLUMN", help="column mapping, repeatable"
    )
    e.add_argument(
        "--probes",
        type=int,
        default=0,
        metavar="N",
        help="also score N pairs as likelihood probes (chosen, rejected, others, random, greedy; argmax mass)",
    )
    e.add_argument("--out", help="also write the JSON result here")
    e.add_argument("--device", default="auto", help=_device_help())
    _add_compute_args(e)
    e.add_argument("--no-progress", action="store_true", help="no progress bar (it goes to stderr, counting pairs)")
    e.set_defaults(func=_cmd_eval)

    rm = sub.add_parser(
        "rm",
        help="reward models: train one (Bradley-Terry), score a preference set with it",
        description="Reward models for MADPO: `rm train` then `rm score`, then `dpolab train` with "
        "loss=[{name: madpo}] data.extras=[rm_margin] on the scored data.",
    )
    rm_sub = rm.add_subparsers(dest="rm_command", metavar="RM_COMMAND", required=True)
    rt = rm_sub.add_parser(
        "train",
        help="train a scalar-head reward model (train.mode=rm); saved to <output.dir>/final",
        description="Train a reward model with the Bradley-Terry loss on preference pairs. Same config "
        "and overrides as `dpolab train` (train.mode is set to rm); rm.center_weight adds "
        "reward centring.",
    )
    _add_run_args(rt, "e.g. model.name_or_path=gpt2 lora.enabled=true")
    rt.set_defaults(func=_cmd_rm_train)
    rs = rm_sub.add_parser("score", help="add reward_chosen, reward_rejected and rm_margin columns to a preference set")
    rs.add_argument("--model", required=True, help="reward model folder (an `rm train` run's final/)")
    rs.add_argument("--data", required=True, help="preference data (jsonl/json/csv/tsv/parquet/HF dataset)")
    rs.add_argument("--out", required=True, help="output file: .jsonl or .parquet (may be the input file)")
    rs.add_argument("--batch-size", type=int, default=16)
    rs.add_argument("--max-length", type=int, default=1024, help="maximum tokens of prompt + response (default 1024)")
    rs.add_argument("--tokenizer", help="tokenizer (default: the model's)")
    rs.add_argument(
        "--column", dest="columns", action="append", metavar="FIELD=COLUMN", help="column mapping, repeatable"
    )
    rs.add_argument("--no-progress", action="store_true", help="no progress bar")
    rs.add_argument("--device", default="auto", help=_device_help())
    _add_compute_args(rs)
    rs.set_defaults(func=_cmd_rm_score)

    pt = sub.add_parser(
        "pretrain",
        help="pretrain a tiny GPT-2 on a text file (cached); prints the model's final/ folder",
        description="Pretrain a tiny model (train.mode=sft on task pretrain-text) so it knows some English. "
        "The result is cached under a key of the settings and the text's content; a second call "
        "with the same settings prints the cached path and trains nothing. A killed run resumes. "
        "Use the printed path as model.name_or_path or model.init_from.",
    )
    pt.add_argument("--text", required=True, help="UTF-8 text file, e.g. ../shared/data/tiny-shakespeare/input.txt")
    pt.add_argument(
        "--preset", default="tiny-gpt2", choices=["tiny-gpt2", "tiny-llama"], help="model preset (default tiny-gpt2)"
    )
    pt.add_argument(
        "--tiny",
        action="append",
        metavar="KEY=VALUE",
        help="size override, repeatable (tiny-gpt2 default: n_layer=4 n_embd=128 n_head=4)",
    )
    pt.add_argument("--tokenizer", default="char", help="char (default) or gpt2-offline")
    pt.add_argument(
        "--steps", type=int, default=600, help="optimiser steps (default 600: about 4 passes over tiny-shakespeare)"
    )
    pt.add_argument("--batch-size", type=int, default=32)
    pt.add_argument("--lr", type=float, default=2e-3)
    pt.add_argument("--chunk-chars", type=int, default=256, help="characters per training window (default 256)")
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--cache-dir", help="cache folder (default $DPOLAB_CACHE/pretrained or ~/.cache/dpolab/pretrained)")
    pt.add_argument("--no-progress", action="store_true", help="no progress bar")
    pt.set_defaults(func=_cmd_pretrain)

    d = sub.add_parser("demo", help="SFT then DPO, DPOP and Gate-DPO on the built-in arithmetic task; writes a report")
    d.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    d.add_argument("--quick", action="store_true", help="a much shorter run (seconds), for smoke tests")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_demo)

    from .studies import list_studies

    studies = list_studies()
    width = max(len(n) for n, _ in studies)
    st = sub.add_parser(
        "study",
        help=f"run a packaged study ({', '.join(n for n, _ in studies)}): a resumable grid of runs, then its report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a packaged study: a grid of ordinary training runs, then its report (markdown\n"
        "+ PNG). Re-running skips finished runs and resumes unfinished ones.\n\nstudies:\n"
        + "\n".join(f"  {n:{width}s}  {summary}" for n, summary in studies),
    )
    st.add_argument(
        "name",
        choices=[n for n, _ in studies] + ["evidence"],
        metavar="NAME",
        help="study name: "
        + " | ".join(n for n, _ in studies)
        + "; or 'evidence': write RESULTS/EVIDENCE.md from the studies' claims.json (--size, default small)",
    )
    st.add_argument(
        "--results", default="docs/results", help="evidence: the folder holding STUDY-SIZE/ reports (docs/results)"
    )
    st.add_argument(
        "--size",
        choices=["cpu", "small", "paper"],
        help="(default cpu; evidence: small) cpu: tiny models, minutes on a CPU; small: the pretrained "
        "SmolLM2-135M-Instruct with LoRA, about 100 minutes on 2 CPU cores (needs the smollm2-135m preset); "
        "paper: the paper's scale (GPU, hub)",
    )
    st.add_argument(
        "--dry-run",
        action="store_true",
        help="list the runs and print the size's time budget (measured seconds per step), train nothing",
    )
    st.add_argument("--seeds", type=int, help="seeds per configuration (default 3; 1 with --smoke)")
    st.add_argument("--smoke", action="store_true", help="a few steps per run, to check the pipeline")
    st.add_argument("--out", help="output folder (default runs/study-NAME-SIZE)")
    st.add_argument(
        "--data-dir", help="folder with the real data sets (default ../shared/data); studies skip sets they cannot find"
    )
    _add_executor_args(st)
    st.set_defaults(func=_cmd_study, executor="local")

    cp = sub.add_parser(
        "compare",
        help="compare preference methods on your data: a resumable grid (methods x seeds), "
        "then a report with paired verdicts against a baseline",
        description="Train every method on the same pairs from the same model, for several seeds, and "
        "measure each on held-out pairs (reward accuracy, margin, log-prob changes, KL to the "
        "reference, sampled length; optionally a reward model and your oracle). Writes "
        "OUT/report.md and PNGs. Re-running skips finished runs and resumes unfinished ones. "
        "Every option can also come from --config (same names as keys).",
    )
    cp.add_argument("--config", "-c", help="YAML file with the same keys as the flags (flags given here win)")
    cp.add_argument("--model", help="model name/path or tiny preset (default tiny-gpt2)")
    cp.add_argument("--data", help="training pairs: any format dpolab train reads (data.train)")
    cp.add_argument("--task", help="a built-in task instead of --data (e.g. arithmetic)")
    cp.add_argument("--eval-data", help="held-out pairs (default: a seeded split of --data, --eval-fraction)")
    cp.add_argument(
        "--eval-fraction", type=float, help="share of the rows held out when there is no --eval-data (default 0.1)"
    )
    cp.add_argument("--min-eval", type=int, help="fewest held-out pairs accepted (default 8)")
    cp.add_argument(
        "--methods",
        help="comma-separated: loss names with parameters and weights, e.g. "
        "dpo,ipo,dpop:lam=50,dpo+0.1*sft (default dpo,ipo,dpop); online:METHOD is its on-policy twin "
        "(train.mode=online, needs --judge; other online.* settings through --set)",
    )
    cp.add_argument("--baseline", help="the method the others are judged against (default: the first)")
    cp.add_argument("--seeds", type=int, help="seeds per method (default 3)")
    lo = cp.add_mutually_exclusive_group()
    lo.add_argument(
        "--lora", action="store_true", default=None, help="train LoRA adapters (default, except for tiny presets)"
    )
    lo.add_argument("--full", dest="lora", action="store_false", help="full fine-tuning (default for tiny presets)")
    cp.add_argument("--budget", help="per run: 200steps or 2epochs (default 1epochs)")
    cp.add_argument("--evals", type=int, help="evaluations over a run, for the trajectories (default 8)")
    cp.add_argument(
        "--samples", type=int, help="held-out prompts sampled at each evaluation, for KL and length (default 32)"
    )
    cp.add_argument("--max-new-tokens", type=int, help="length budget of a sampled response (default 48)")
    cp.add_argument(
        "--reward-model", help="a reward model (dpolab rm train's final/) that scores the sampled responses"
    )
    cp.add_argument("--oracle", help="module:function(prompt, response) -> float that scores the sampled responses")
    cp.add_argument(
        "--judge",
        help="what scores the samples of online:METHOD arms (online.judge: rm:PATH, module:function, "
        "task:arithmetic, task:sentiment); it also scores every arm's held-out samples",
    )
    cp.add_argument("--split-seed", type=int, help="seed of the held-out split (default 0)")
    cp.add_argument("--model-seed", type=int, help="seed of a tiny preset's starting weights (default 0)")
    cp.add_argument("--out", help="output folder (default runs/compare)")
    cp.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any training config key for every run, repeatable (e.g. train.lr=1e-5)",
    )
    cp.add_argument(
        "--dry-run",
        action="store_true",
        help="print the grid, the number of runs and a time estimate from a few timed real steps; train nothing",
    )
    _add_executor_args(cp)
    cp.set_defaults(func=_cmd_compare)

    ins = sub.add_parser(
        "inspect-data",
        help="show how the first rows of a data file are tokenised, token by token, prompt | responses",
        description="Tokenise the first rows of a preference, SFT or prompt data file exactly as training does and "
        "print each token as its vocabulary piece: the prompt, a boundary marker (after "
        "the prompt's last tokens), then the chosen and rejected (or completion) tokens, with "
        "lengths and what truncation cut (--mode prompt, train.mode=online: the prompt alone, as it is sampled "
        "from). --config takes the tokenizer and the data options from a training config; the flags override it.",
    )
    ins.add_argument("--data", help="data file or dataset (default: data.train of --config)")
    ins.add_argument("--model", help="model name/path whose tokenizer to use (tiny presets: the char tokenizer)")
    ins.add_argument("--tokenizer", help="tokenizer name/path, or char | gpt2-offline")
    ins.add_argument("--config", "-c", help="a training config: its model's tokenizer and its data options")
    ins.add_argument("--rows", type=int, default=3, help="rows to show (default 3)")
    ins.add_argument(
        "--mode",
        default="auto",
        choices=["auto", "preference", "sft", "prompt"],
        help="row kind (default auto: a config's training mode decides; else preference if the rows have 'chosen', "
        "sft if 'completion', 'messages' or 'text', prompt if 'prompt' alone)",
    )
    ins.add_argument(
        "--column",
        "--columns",
        dest="columns",
        action="append",
        metavar="FIELD=COLUMN",
        help="column mapping, repeatable (as data.columns)",
    )
    ins.add_argument(
        "--max-length", type=int, help="maximum tokens of prompt + response (default 512, or the config's)"
    )
    ins.add_argument("--max-prompt-length", type=int, help="maximum prompt tokens (default max_length // 2)")
    ins.add_argument(
        "--truncation", choices=["keep_end", "keep_start"], help="which end of a long prompt to keep (default keep_end)"
    )
    ins.add_argument("--split", help="split of a hub dataset or saved DatasetDict")
    ins.add_argument("--ids", action="store_true", help="show each token's id too: [piece:id]")
    ins.add_argument(
        "--max-tokens",
        type=int,
        default=64,
        help="tokens shown per part before the middle is elided (default 64; 0 = all)",
    )
    ins.set_defaults(func=_cmd_inspect_data)

    for name, what in (
        ("generate", "a sampled reply to one prompt (argument or stdin)"),
        ("chat", "an interactive chat: one line per turn, replies printed"),
    ):
        g = sub.add_parser(
            name,
            help=f"{what}, from a model preset, a model folder or a LoRA run's final/",
            description=f"{what[0].upper()}{what[1:]}. The model's chat template is applied when its "
            "tokenizer has one (--no-chat-template: the text as is).",
        )
        if name == "generate":
            g.add_argument("prompt", nargs="?", help="the prompt (default: read stdin)")
        g.add_argument(
            "--model",
            default="smollm2-135m",
            help="model preset (default smollm2-135m), model folder or "
            "hub id, or a LoRA adapter folder written by dpolab train (its final/)",
        )
        g.add_argument("--tokenizer", help="tokenizer (default: the model's)")
        g.add_argument("--max-new-tokens", type=int, default=256, help="most tokens in the reply (default 256)")
        g.add_argument("--temperature", type=float, default=0.7, help="sampling temperature; 0 = greedy (default 0.7)")
        g.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling (default 0.9)")
        g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
        g.add_argument("--system", help="a system message first (chat template only)")
        g.add_argument("--no-chat-template", action="store_true", help="feed the text as is, without the chat template")
        g.add_argument("--device", default="auto", help=_device_help().replace("autocast", "weights"))
        g.set_defaults(func=_cmd_generate if name == "generate" else _cmd_chat)

    ls = sub.add_parser("losses", help="list every loss with its parameters and paper")
    ls.set_defaults(func=_cmd_losses)
    c = sub.add_parser("config", help="print every config option with its default and help")
    c.set_defaults(func=_cmd_config)
    for parser in [*sub.choices.values(), *rm_sub.choices.values()]:  # also accepted after the command
        parser.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers send before killing a job), raised in the main thread like Ctrl-C's
    KeyboardInterrupt."""


def _on_sigterm(signum, frame) -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM during the clean-up ends the process at once
    raise Terminated()


def _handle_sigterm() -> Callable[[], None]:
    """Turn SIGTERM into :class:`Terminated` while a training command runs; returns the undo (a no-op outside the
    main thread, where Python cannot set handlers)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _resume_hint(args, argv: List[str], terminated: bool) -> str:
    """Two lines for an interrupted ``train`` / ``rm train``: the last complete checkpoint and the command that
    continues from it (the same arguments plus ``--resume``)."""
    import shlex
    from pathlib import Path

    what = "interrupted (SIGTERM)" if terminated else "interrupted (SIGINT)"
    try:
        from .config import load_config
        from .engine.checkpoint import latest_checkpoint

        extra = ["train.mode=rm"] if args.func is _cmd_rm_train else []
        run_dir = Path(load_config(args.config, [*args.overrides, *extra]).output.dir)
        ckpt = latest_checkpoint(run_dir)
    except Exception:  # noqa: BLE001  (the hint must never hide the interruption itself)
        return what
    if (run_dir / "DONE").exists():  # the signal came after the run had finished: nothing to continue
        return f"{what} after the run had finished (DONE in {run_dir}); final/ is complete, nothing to resume"
    where = (
        f"last complete checkpoint: {ckpt}"
        if ckpt is not None
        else f"no complete checkpoint yet in {run_dir} (--resume starts from the beginning)"
    )
    rest = list(argv)
    if "--resume" not in rest:
        rest.insert(rest.index("--") if "--" in rest else len(rest), "--resume")
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        cmd = "accelerate launch <the same launch options> -m dpolab.cli"
    elif prog in ("cli.py", "__main__.py"):
        cmd = "python -m dpolab.cli"
    else:
        cmd = "dpolab"
    return f"{what}; {where}\nto continue: {cmd} {shlex.join(rest)}"


def _interrupted(args, argv: Optional[List[str]], run_command: bool, e: KeyboardInterrupt) -> int:
    """Report an interruption (with the resume hint for a training command); the exit status 130 or 143."""
    terminated = isinstance(e, Terminated)
    if not run_command:
        print("interrupted", file=sys.stderr)
    elif int(os.environ.get("RANK", "0")) == 0:  # under `accelerate launch`: one message, not one per process
        print(_resume_hint(args, sys.argv[1:] if argv is None else argv, terminated), file=sys.stderr)
    return 143 if terminated else 130


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    run_command = args.func in (_cmd_train, _cmd_rm_train)
    undo_sigterm = _handle_sigterm() if run_command else (lambda: None)
    try:
        return args.func(args)
    except KeyboardInterrupt as e:  # Ctrl-C (SIGINT), or SIGTERM for a training command
        return _interrupted(args, argv, run_command, e)
    except Exception as e:
        from .interrupts import interrupt_behind

        if interrupt_behind(e) is not None:  # a library's clean-up failed after the interrupt and replaced it
            return _interrupted(args, argv, run_command, interrupt_behind(e))
        if not isinstance(e, _expected_errors()):
            raise  # a bug or an environment failure: the traceback is the report
        if args.traceback:  # the whole chain of causes (e.g. the OSError behind a DataError), same exit code
            import traceback

            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if argv is None:  # the `dpolab` program, not a caller's main([...]): the work is done or refused
            _ignore_interrupts_while_exiting()
        undo_sigterm()


def _ignore_interrupts_while_exiting() -> None:
    """Ctrl-C after the command has finished (a run is already complete and intact) would land in an exit hook of a
    library (torch's) and print a traceback for nothing; from here to the exit of the process it is ignored."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
