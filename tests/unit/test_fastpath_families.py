"""The fast paths across model families (fp32, 1e-5 per token, log-probs and gradients, with and without LoRA) on
sequences longer than the models' sliding windows: Llama, Mistral and Phi-3 (a window on every layer), Qwen2 (with
and without its window: a full and a windowed layer), Gemma-2 and Gemma-3 (local and global layers, soft-capping),
GPT-NeoX, OPT and GPT-2. Then bf16 (autocast and bf16 weights) keeps the fast path and its probe still catches a
wrong mask; and the probe's limits: a window longer than its sequences, layer types a 4D mask cannot describe, a
window the model applies by index, out-of-memory."""

import random
import warnings

import pytest
import torch

from dpolab.data.collate import collate_preference, collate_preference_fast
from dpolab.data.types import TokenizedPair
from dpolab.models.fastpath import batch_logps, fast_path_report
from dpolab.models.load import disable_dropout, tiny_config
from dpolab.models.logprobs import response_logps
from dpolab.models.tokenizer import build_char_tokenizer
from dpolab.models.unwrap import unwrap

TOK = build_char_tokenizer()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one intra-op thread is several times faster than two on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


FAMILIES = {  # preset, config overrides (the presets' windows are 16 tokens, dpolab.models.load.TINY_WINDOW)
    "llama": ("tiny-llama", {}),
    "mistral-window": ("tiny-mistral", {}),
    "qwen2": ("tiny-qwen2", {}),
    "qwen2-window": ("tiny-qwen2-sw", {}),  # layer 0 full, layer 1 windowed: a dict of masks
    "gemma2": ("tiny-gemma2", {}),  # local + global layers, soft-capping 30 (logits) and 50 (attention), eager
    "gemma2-cap2": ("tiny-gemma2", {"final_logit_softcapping": 2.0}),  # a cap that the tiny model's logits feel
    "gemma3": ("tiny-gemma3", {}),
    "gemma3-cap2": ("tiny-gemma3", {"final_logit_softcapping": 2.0, "attn_logit_softcapping": 50.0}),
    "phi3-window": ("tiny-phi3", {}),
    "gpt-neox": ("tiny-gpt-neox", {}),
    "opt": ("tiny-opt", {}),
    "gpt2": ("tiny-gpt2", {}),
}


def _pairs(seed=0, lens=((20, 17, 5), (3, 30, 12), (25, 2, 18), (9, 9, 9))):
    """Pairs of varied lengths whose sequences (up to 44 tokens) are longer than the 16-token windows."""
    rng = random.Random(seed)
    ids = lambda k: [rng.randrange(4, 90) for _ in range(k)]  # noqa: E731
    return [
        TokenizedPair(prompt_ids=[1] + ids(a), chosen_ids=ids(b) + [2], rejected_ids=ids(c) + [2]) for a, b, c in lens
    ]


SHORT = ((1, 7, 3), (4, 2, 5))  # units of at most 14 tokens


def _model(name, lora=False, overrides=None):
    from transformers import AutoModelForCausalLM

    preset, over = FAMILIES[name]
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(tiny_config(preset, TOK, {**over, **(overrides or {})}))
    disable_dropout(m)
    for p in m.parameters():  # larger weights than the default init: log-probs spread over nats, windows matter
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.1)
    if lora:
        from dpolab.config import LoraConfig
        from dpolab.models.load import apply_lora

        m = apply_lora(m, LoraConfig(enabled=True, r=4, alpha=8))
        for n, p in m.named_parameters():  # non-zero B so the adapters matter
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.05)
    return m


def _grads(model, lp, w):
    model.zero_grad(set_to_none=True)
    (lp.sums * w).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _longest(pairs):
    return max(len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_fast_paths_equal_plain(family, lora):
    model = _model(family, lora)
    pairs = _pairs()
    window = getattr(unwrap(model, peft=True).config, "sliding_window", None)
    assert window is None or window < _longest(pairs) - 10  # the window really cuts these sequences
    plain_batch = collate_preference(pairs, TOK.pad_token_id)
    plain = response_logps(
        model, plain_batch.input_ids, plain_batch.attention_mask, plain_batch.loss_mask, with_sq=True
    )
    w = torch.linspace(-1.0, 1.5, plain.sums.shape[0])
    g0 = _grads(model, plain, w)
    assert g0
    for layout in ("prefix", "packed"):
        batch = collate_preference_fast(pairs, TOK.pad_token_id, layout, capacity=96)  # several units share a row
        assert batch.packed["input_ids"].shape[0] < len(pairs) * (2 if layout == "packed" else 1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a silent fallback to the plain path would make this test vacuous
            fast = batch_logps(model, batch, layout=layout, logits="response", chunk_rows=7, with_sq=True)
        g1 = _grads(model, fast, w)
        # WPO's per-token log sum p^2 from the same pass (soft-capped and LoRA heads included)
        assert torch.allclose(fast.token_log_sum_sq, plain.token_log_sum_sq, atol=1e-5, rtol=0), layout
        assert torch.equal(fast.counts, plain.counts) and torch.equal(fast.token_mask, plain.token_mask)
        # per token 1e-5; per sequence (sums of up to 44 tokens, added in another order) the same style as
        # test_fastpath.py; a missing window moves them by 0.05 to 0.5 here
        assert torch.allclose(fast.token_logps, plain.token_logps, atol=1e-5, rtol=0), layout
        assert torch.allclose(fast.sums, plain.sums, atol=1e-5, rtol=1e-6), layout
        assert g0.keys() == g1.keys()
        for n in g0:
            assert torch.allclose(g1[n], g0[n], atol=1e-5, rtol=1e-4), (layout, n)
        assert fast_path_report(model).get((layout, "response")) is None


def test_windows_and_softcap_change_these_log_probs():
    """The matrix above would be weak if its windows or soft-cap did not matter on its sequences: they do."""
    b = collate_preference(_pairs(), TOK.pad_token_id)
    for family, change in [
        ("mistral-window", {"sliding_window": 4096}),
        ("qwen2-window", {"sliding_window": 4096}),
        ("gemma2", {"sliding_window": 4096}),
        ("gemma3", {"sliding_window": 4096}),
        ("phi3-window", {"sliding_window": None}),
        ("gemma2-cap2", {"final_logit_softcapping": None}),
        ("gemma3-cap2", {"final_logit_softcapping": None}),
    ]:
        with torch.no_grad():
            a = response_logps(_model(family), b.input_ids, b.attention_mask, b.loss_mask).sums
            c = response_logps(_model(family, overrides=change), b.input_ids, b.attention_mask, b.loss_mask).sums
        assert (a - c).abs().max() > 1e-2, family


def test_probe_sees_a_window_longer_than_its_sequences(monkeypatch):
    """A window of 64 is longer than any probe sequence; the probe shortens it, so masks without the window fail."""
    import dpolab.models.fastpath as F

    model = _model("mistral-window", overrides={"sliding_window": 64})
    monkeypatch.setattr(F, "_windowed", lambda mask, pos, w: mask)  # a fast path that forgets the window
    with pytest.warns(UserWarning, match="probe mismatch"):
        F.batch_logps(model, collate_preference_fast(_pairs(lens=SHORT), TOK.pad_token_id, "prefix"))
    assert model.config.sliding_window == 64  # restored after the probe
    assert fast_path_report(model)[("prefix", "response")].startswith("probe mismatch")


def test_layer_types_a_mask_cannot_describe_keep_the_padded_layout():
    model = _model("llama")  # Llama runs every layer alike; a config naming other layer types must still be refused
    model.config.layer_types = ["full_attention", "linear_attention"]
    b = collate_preference_fast(_pairs(lens=SHORT), TOK.pad_token_id, "prefix")
    with pytest.warns(UserWarning, match="linear_attention"):
        got = batch_logps(model, b)
    want = response_logps(model, b.input_ids, b.attention_mask, b.loss_mask)
    assert torch.allclose(got.sums, want.sums, atol=1e-5)
    assert fast_path_report(model)[("padded", "response")] is None  # response logits on the padded batch are fine


def test_a_window_the_model_applies_by_index_keeps_the_padded_layout_for_long_units():
    """GPT-Neo windows its local layers by index in the row: exact in a packed row only while every unit fits."""
    from transformers import AutoModelForCausalLM, GPTNeoConfig

    from dpolab.models.fastpath import resolve

    torch.manual_seed(0)
    cfg = GPTNeoConfig(
        vocab_size=len(TOK),
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        window_size=16,
        attention_types=[[["global", "local"], 1]],
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = AutoModelForCausalLM.from_config(cfg)
    disable_dropout(model)
    short = collate_preference_fast(_pairs(lens=SHORT), TOK.pad_token_id, "prefix")
    long = collate_preference_fast(_pairs(), TOK.pad_token_id, "prefix")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve(model, short, "prefix", "response") == ("prefix", "response")
    with pytest.warns(UserWarning, match="window of 16"):
        assert resolve(model, long, "prefix", "response")[0] == "padded"
    for b in (short, long):
        got = batch_logps(model, b)
        want = response_logps(model, b.input_ids, b.attention_mask, b.loss_mask)
        assert torch.allclose(got.sums, want.sums, atol=1e-5)


def test_probe_raises_out_of_memory_and_falls_back_on_other_errors(monkeypatch):
    import dpolab.models.fastpath as F

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    b = collate_preference_fast(_pairs(lens=SHORT), TOK.pad_token_id, "prefix")
    monkeypatch.setattr(F, "_compare_paths", oom)
    model = _model("llama")
    with pytest.raises(torch.OutOfMemoryError):
        F.batch_logps(model, b)
    assert fast_path_report(model) == {}  # nothing cached: the next batch probes again

    def other(*a, **k):
        raise TypeError("forward() got an unexpected keyword argument 'position_ids'")

    monkeypatch.setattr(F, "_compare_paths", other)
    with pytest.warns(UserWarning, match="TypeError"):
        F.batch_logps(model, b)


# -- bf16: autocast (train.bf16=true) and bf16 weights keep the fast path -------------------------------------


@pytest.mark.parametrize("weights", ["fp32-autocast", "bf16"])
@pytest.mark.parametrize("family", ["mistral-window", "qwen2-window", "gemma2", "gpt2"])
def test_bf16_keeps_the_fast_path(family, weights):
    model = _model(family)
    if weights == "bf16":
        model.to(torch.bfloat16)
    batch = collate_preference_fast(_pairs(), TOK.pad_token_id, "prefix")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=weights != "bf16"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fast = batch_logps(model, batch, with_sq=True)
        plain = response_logps(model, batch.input_ids, batch.attention_mask, batch.loss_mask, with_sq=True)
    key = ("prefix", "response") + (("bfloat16",) if weights != "bf16" else ())
    assert fast_path_report(model) == {key: None}  # the exactness probe (fp32 weights: without autocast) passed
    diff = (fast.token_logps - plain.token_logps).abs().max()
    assert diff < 8 * 2**-8 * (1 + plain.token_logps.abs().max())  # bf16 rounding apart (other shapes)
    sq_diff = (fast.token_log_sum_sq - plain.token_log_sum_sq).abs().max()  # WPO's log sum p^2, the same way
    assert sq_diff < 8 * 2**-8 * (1 + plain.token_log_sum_sq.abs().max())


def test_low_precision_tolerance_still_catches_a_real_error():
    from dpolab.models.fastpath import _mismatch

    want = torch.tensor([[-10.0, -2.0, -0.1]])
    # bf16: rounding passes; half a nat at log-p -10 (what a 5e-2 x max|log-p| tolerance let through) does not
    assert _mismatch(want + torch.tensor([[0.05, 0.02, 0.005]]), want, torch.bfloat16, logit_scale=30.0) is None
    assert _mismatch(want + torch.tensor([[0.5, 0.0, 0.0]]), want, torch.bfloat16, logit_scale=30.0)
    assert _mismatch(want + torch.tensor([[0.0, 0.15, 0.0]]), want, torch.bfloat16, logit_scale=30.0)
    # small logits (a tiny model): its rounding is small, and so is the tolerance
    assert _mismatch(want + torch.tensor([[0.07, 0.0, 0.0]]), want, torch.bfloat16, logit_scale=0.5)
    # fp32: 1e-4 per token (times max |log-p|)
    assert _mismatch(want + 5e-4, want, torch.float32) is None
    assert _mismatch(want + 2e-3, want, torch.float32)
    nan = torch.tensor([[float("nan"), -1.0]])  # NaN weights: NaN in both counts as equal; NaN in one does not
    assert _mismatch(nan, nan, torch.float32) is None and _mismatch(nan, torch.tensor([[-1.0, -1.0]]), torch.float32)


@pytest.mark.parametrize("weights", ["fp32-autocast", "bf16"])
def test_bf16_probe_catches_a_wrong_mask(monkeypatch, weights):
    """A window-less mask on a windowed model is refused under bf16 too."""
    import dpolab.models.fastpath as F

    model = _model("mistral-window")
    if weights == "bf16":
        model.to(torch.bfloat16)
    monkeypatch.setattr(F, "_windowed", lambda mask, pos, w: mask)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=weights != "bf16"):
        with pytest.warns(UserWarning, match="probe mismatch"):
            F.batch_logps(model, collate_preference_fast(_pairs(), TOK.pad_token_id, "prefix"))
