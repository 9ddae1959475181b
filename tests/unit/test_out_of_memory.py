"""One out-of-memory rule (dpolab.errors.is_oom) for the trainer's one-line hint and the fast path's probe, which
re-raises what it says is out of memory and falls back to the plain path on anything else."""

from __future__ import annotations

import pytest
import torch

from dpolab.errors import is_oom

OUT_OF_MEMORY = [
    MemoryError(),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"),
    RuntimeError("MPS backend out of memory (MPS allocated: 1.2 GB)"),
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8589934592 bytes."),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: out of memory"),
    OSError(12, "Cannot allocate memory"),  # ENOMEM from the operating system
]
OTHER = [
    RuntimeError("shape mismatch"),
    TypeError("forward() got an unexpected keyword argument 'position_ids'"),
    ValueError("Expected all tensors to be on the same device"),
]


@pytest.mark.parametrize("exc", OUT_OF_MEMORY, ids=lambda e: type(e).__name__ + ":" + str(e)[:24])
def test_out_of_memory_in_every_form_is_out_of_memory(exc):
    assert is_oom(exc)


@pytest.mark.parametrize("exc", OTHER, ids=lambda e: type(e).__name__)
def test_other_errors_are_not(exc):
    assert not is_oom(exc)


def test_a_subclass_of_torch_out_of_memory_error_is_too():
    assert is_oom(type("DeviceOOM", (torch.OutOfMemoryError,), {})("no room"))


def test_the_trainer_and_the_fast_path_share_the_rule():
    import dpolab.engine.errors as engine_errors
    import dpolab.models.fastpath as fastpath

    assert engine_errors.is_oom is is_oom and fastpath.is_oom is is_oom


@pytest.mark.parametrize("exc", OUT_OF_MEMORY, ids=lambda e: type(e).__name__ + ":" + str(e)[:24])
def test_the_fast_path_probe_raises_out_of_memory_instead_of_falling_back(monkeypatch, exc):
    from test_fastpath_families import SHORT, TOK, _model, _pairs

    import dpolab.models.fastpath as F
    from dpolab.data.collate import collate_preference_fast

    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(F, "_compare_paths", boom)
    b = collate_preference_fast(_pairs(lens=SHORT), TOK.pad_token_id, "prefix")
    with pytest.raises(type(exc)):
        F.batch_logps(_model("llama"), b)
