"""The fused LM head's bf16 softmax (issue 33, ``dpolab.models.fastpath.BF16_SOFTMAX``): under bf16 compute it
makes no float32 [rows, V] tile, its log-probs stay within the family matrix's bf16 tolerance of the plain float32
path (and within 2^-8 nats of the float32-tile head it replaces), its gradients are as close to float32's as that
head's, and in float32 (or with a soft-cap, WPO's log sum p^2, or recomputed tiles) it changes no bit."""

import pytest
import torch

import dpolab.models.fastpath as F
from dpolab.data.collate import collate_preference_fast
from dpolab.data.types import TokenizedPair
from dpolab.models.load import disable_dropout, tiny_config
from dpolab.models.logprobs import response_logps
from dpolab.models.tokenizer import build_char_tokenizer

AMP = dict(device_type="cpu", dtype=torch.bfloat16)


def _inputs(n=70, hidden=32, vocab=301, dtype=torch.float32, bias=True):
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(n, hidden, generator=g) * 2).to(dtype).requires_grad_()
    head = torch.nn.Linear(hidden, vocab, bias=bias).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, hidden, generator=g))  # logits of tens: log-probs down to about -40
        if bias:
            head.bias.copy_(torch.randn(vocab, generator=g))
    return h, head, torch.randint(0, vocab, (n,), generator=g), torch.randn(n, generator=g)


def _run(monkeypatch, on: bool, amp: bool, recompute=False, softcap=None, with_sq=False, dtype=torch.float32):
    monkeypatch.setattr(F, "BF16_SOFTMAX", on)
    h, head, tgt, w = _inputs(dtype=dtype)
    with torch.autocast(**AMP, enabled=amp):
        out, sq = F._head_logps(head, h, tgt, 16, recompute=recompute, softcap=softcap, with_sq=with_sq)
    (out * w).sum().backward()
    return out.detach(), [t.grad.float() for t in (h, head.weight, head.bias)]


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("weights", ["fp32-autocast", "bf16"])
def test_bf16_softmax_within_tolerance(monkeypatch, weights):
    dtype, amp = (torch.float32, True) if weights == "fp32-autocast" else (torch.bfloat16, False)
    got, g_new = _run(monkeypatch, True, amp, dtype=dtype)
    old, g_old = _run(monkeypatch, False, amp, dtype=dtype)
    exact, g32 = _run(monkeypatch, True, False)  # float32 weights and compute: the true values
    assert (got - old).abs().max() <= 2**-8  # the rounding of p_max, nothing more
    assert exact.min() < -10  # log-probs far from 0, where the tolerance is not trivially met
    assert ((got - exact).abs() <= 8 * 2**-8 * (1 + exact.abs())).all()  # the family matrix's bf16 tolerance
    for new, before, want in zip(g_new, g_old, g32):  # gradients: as close to float32's as the float32-tile head
        assert _rel(new, want) <= 2 * _rel(before, want) + 1e-3


def test_bf16_softmax_makes_no_float32_tile(monkeypatch):
    from torch.profiler import ProfilerActivity, profile

    monkeypatch.setattr(F, "BF16_SOFTMAX", True)
    h, head, tgt, w = _inputs()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        with torch.autocast(**AMP):
            out, _ = F._head_logps(head, h, tgt, 16, recompute=False)
        (out * w).sum().backward()
    tiles = [
        ev.input_shapes[0]
        for ev in prof.events()
        if ev.name == "aten::_to_copy" and len(ev.input_shapes[0]) == 2 and ev.input_shapes[0][-1] == 301
    ]
    assert tiles == []  # the float32-tile head casts every [rows, V] tile up (forward) and down (backward)


@pytest.mark.parametrize(
    "case",
    [dict(amp=False), dict(amp=True, softcap=5.0), dict(amp=True, with_sq=True), dict(amp=True, recompute=True)],
    ids=["fp32", "softcap", "wpo-sq", "recompute"],
)
def test_bf16_softmax_changes_nothing_elsewhere(monkeypatch, case):
    (a, ga), (b, gb) = (_run(monkeypatch, on, **case) for on in (True, False))
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(ga, gb))


@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-llama"])
def test_bf16_softmax_keeps_models_within_the_family_tolerance(monkeypatch, family):
    """Through a model: the fast path (prefix layout, response head, bf16 softmax) against the plain padded path,
    both under bf16 autocast, within ``test_fastpath_families``'s bf16 tolerance, the probe passing."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(F, "BF16_SOFTMAX", True)
    tok = build_char_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(family, tok))
    disable_dropout(model)
    for p in model.parameters():
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.1)
    g = torch.Generator().manual_seed(0)
    ids = lambda k: torch.randint(4, 90, (k,), generator=g).tolist()  # noqa: E731
    pairs = [TokenizedPair(prompt_ids=[1] + ids(a), chosen_ids=ids(b), rejected_ids=ids(c)) for a, b, c in LENS]
    batch = collate_preference_fast(pairs, tok.pad_token_id, "prefix")
    with torch.autocast(**AMP):
        fast = F.batch_logps(model, batch)
        plain = response_logps(model, batch.input_ids, batch.attention_mask, batch.loss_mask)
    assert F.fast_path_report(model) == {("prefix", "response", "bfloat16"): None}
    diff = (fast.token_logps - plain.token_logps).abs().max()
    assert diff < 8 * 2**-8 * (1 + plain.token_logps.abs().max())


LENS = [(7, 13, 5), (3, 20, 9), (11, 5, 14), (2, 30, 3)]
