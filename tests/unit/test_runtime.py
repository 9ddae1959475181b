"""The run's compute settings: ``train.bf16`` (true / false / auto), ``train.threads``, ``train.compile`` options."""

from __future__ import annotations

import pytest
import torch

from dpolab.config import ConfigError, build_config
from dpolab.engine.errors import TrainError
from dpolab.engine.precision import cpu_flags, resolve_bf16
from dpolab.engine.runtime import compile_mode, configure_runtime, set_threads

CPU = torch.device("cpu")


def test_bf16_auto_follows_the_cpu_flags():
    on, why = resolve_bf16("auto", CPU, flags={"avx2", "amx_bf16", "amx_tile"})
    assert on and "amx_bf16" in why
    on, why = resolve_bf16("auto", CPU, flags={"avx2", "avx512f", "avx512_bf16"})
    assert on and "avx512_bf16" in why
    on, why = resolve_bf16("auto", CPU, flags={"avx2", "avx512f"})
    assert not on and "fp32" in why


def test_bf16_true_and_false_are_kept():
    assert resolve_bf16(True, CPU, flags=set())[0] is True
    assert resolve_bf16(False, CPU, flags={"amx_bf16"})[0] is False
    with pytest.raises(TrainError, match="true, false or auto"):
        resolve_bf16("yes please", CPU)


def test_cpu_flags_reads_a_cpuinfo_file(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nvendor_id\t: X\nflags\t\t: fpu sse avx2 amx_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert cpu_flags(f) == {"fpu", "sse", "avx2", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") is None


def test_bf16_auto_on_this_machine_matches_proc_cpuinfo():
    flags = cpu_flags()
    on, why = resolve_bf16("auto", CPU)
    if flags is None:
        assert not on and "cpuinfo" in why
    else:
        assert on == bool(flags & {"amx_bf16", "avx512_bf16"}), why


def test_config_accepts_true_false_auto_and_names_the_choices():
    for value, want in (("auto", "auto"), ("true", True), (False, False), ("no", False)):
        assert build_config({}, [f"train.bf16={value}"]).train.bf16 == want
    with pytest.raises(ConfigError, match=r"train.bf16: 'fast' is not valid; choose true, false or auto"):
        build_config({}, ["train.bf16=fast"])


def test_compile_and_threads_options_are_checked():
    assert build_config({}, ["train.compile=true"]).train.compile is True
    assert build_config({}, ["train.compile=max-autotune"]).train.compile == "max-autotune"
    with pytest.raises(ConfigError, match="train.compile: 'fastest' is not valid"):
        build_config({}, ["train.compile=fastest"])
    with pytest.raises(ConfigError, match="train.threads: must be >= 1 or null"):
        build_config({}, ["train.threads=0"])
    assert (
        compile_mode(False) is None
        and compile_mode(True) == "default"
        and compile_mode("reduce-overhead") == "reduce-overhead"
    )


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_take_effect_and_are_logged(restore_threads):
    want = 1 if torch.get_num_threads() != 1 else 2
    lines = []
    rt = configure_runtime(build_config({}, [f"train.threads={want}", "train.bf16=false"]).train, CPU, lines.append)
    assert torch.get_num_threads() == want and rt.threads == want
    assert rt.threads_source == f"train.threads={want}"
    assert len(lines) == 1 and f"torch threads {want} intra-op" in lines[0] and "fp32" in lines[0]
    # inter-op threads: set, or (torch allows it once per process) the log says why not
    assert rt.interop_threads == torch.get_num_interop_threads()
    assert rt.interop_threads == want or "inter-op threads stay at" in lines[0]
    assert rt.record()["threads"] == want and rt.record()["bf16"] is False


def test_threads_default_leaves_torch_alone(restore_threads, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    torch.set_num_threads(1)
    intra, _, source, _ = set_threads(None)
    assert intra == 1 and source == "OMP_NUM_THREADS=3"


def test_bf16_auto_resolved_in_the_runtime(monkeypatch):
    import dpolab.engine.precision as precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})
    lines = []
    rt = configure_runtime(build_config({}, ["train.bf16=auto"]).train, CPU, lines.append)
    assert rt.bf16 and "avx512_bf16" in rt.bf16_reason and "bf16 autocast" in lines[0]
    with rt.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    rt = configure_runtime(build_config({}, ["train.bf16=auto"]).train, CPU, lines.append)
    assert not rt.bf16
    with rt.autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_compile_without_a_cxx_compiler_is_a_clear_error(monkeypatch):
    import dpolab.engine.runtime as runtime

    monkeypatch.setattr(runtime.shutil, "which", lambda name: None)
    with pytest.raises(TrainError, match="needs a C\\+\\+ compiler"):
        configure_runtime(build_config({}, ["train.compile=true"]).train, CPU, print)
