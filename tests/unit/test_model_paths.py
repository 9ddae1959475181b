"""A model name that is a folder not written yet (`dpolab eval --model runs/x/final` before training finished) is
"model folder not found" at once, not a hub lookup with five retries ending in a network error (issue 32, defect 12)."""

from __future__ import annotations

import socket
import time

import pytest

from dpolab.config import ModelConfig
from dpolab.models import load
from dpolab.models.load import ModelLoadError, load_base_model, load_tokenizer
from dpolab.models.tokenizer import build_char_tokenizer


@pytest.fixture()
def no_network(monkeypatch):
    """The hub's host cannot be reached (as on a machine without network); counts the attempts."""
    tries = []

    def refuse(address, *a, **k):
        tries.append(address)
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return tries


def test_a_name_under_a_local_folder_is_a_missing_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    t0 = time.perf_counter()
    for load_it in (
        lambda n: load_tokenizer(ModelConfig(name_or_path=n)),
        lambda n: load_base_model(ModelConfig(name_or_path=n), build_char_tokenizer()),
    ):
        with pytest.raises(ModelLoadError, match=r"^model folder not found: runs/x \("):
            load_it("runs/x")
    assert time.perf_counter() - t0 < 5  # no hub round trips


def test_a_hub_shaped_name_when_the_hub_is_unreachable(tmp_path, monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(
        ModelLoadError,
        match=r"^model folder not found: someorg/not-a-model, and it cannot be looked "
        r"up on the hub \(huggingface.co is unreachable: Network is unreachable",
    ):
        load_tokenizer(ModelConfig(name_or_path="someorg/not-a-model"))
    assert time.perf_counter() - t0 < 5 and no_network == [("huggingface.co", 443)]


def test_offline_mode_says_so(tmp_path, monkeypatch, no_network):
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match=r"cannot be looked up on the hub \(HF_HUB_OFFLINE is set"):
        load_tokenizer(ModelConfig(name_or_path="someorg/not-a-model"))
    assert no_network == []


def test_a_cached_or_reachable_hub_name_goes_on_to_the_loader(monkeypatch, no_network):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: f"/cache/{repo}/{name}")
    assert load._hub_unreachable("someorg/cached") is None and no_network == []  # cached: works offline, not probed
    monkeypatch.undo()

    class Conn:
        def close(self):
            pass

    monkeypatch.setattr(socket, "create_connection", lambda address, timeout: Conn())
    assert load._hub_unreachable("someorg/not-cached") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # a direct probe says nothing about a proxied client
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("no")))
    assert load._hub_unreachable("someorg/not-cached") is None
