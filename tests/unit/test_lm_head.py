"""The fused two-pass LM head (``dpolab.models.fastpath._FusedHeadLogp``) equals the plain ``F.linear`` ->
(soft-cap) -> ``log_softmax`` -> ``gather`` with autograd: log-probs, WPO's ``log sum_v p_v^2`` and the gradients of
h, W and b, in one tile and over several, with each tile's exp kept (``response``) or recomputed in backward
(``response-recompute``), fp32 and bf16, under autocast."""

import pytest
import torch

from dpolab.models.fastpath import _head_logps, head_chunk_rows


def _inputs(dtype, bias, n=23, hidden=16, vocab=97, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(n, hidden, generator=g) * 2).to(dtype).requires_grad_()
    head = torch.nn.Linear(hidden, vocab, bias=bias).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, hidden, generator=g) * 0.5)
        if bias:
            head.bias.copy_(torch.randn(vocab, generator=g))
    tgt = torch.randint(0, vocab, (n,), generator=g)
    w = torch.randn(n, generator=g)
    return h, head, tgt, w


def _plain(head, h, tgt, softcap):
    z = head(h)
    if softcap is not None:
        z = torch.tanh(z / softcap) * softcap
    lsm = z.float().log_softmax(-1)
    return lsm.gather(1, tgt[:, None]).squeeze(1), torch.logsumexp(2 * lsm.detach(), -1)


def _grads(out, w, h, head):
    h.grad = None
    head.zero_grad(set_to_none=True)
    (out * w).sum().backward()
    return [t.grad.clone() for t in (h, head.weight, head.bias) if t is not None]


@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk_rows", [5, 1000], ids=["tiles", "one-tile"])
@pytest.mark.parametrize("recompute", [False, True], ids=["keep", "recompute"])
@pytest.mark.parametrize("mode", ["fp32", "bf16", "fp32-autocast"])
def test_fused_head_equals_plain(mode, recompute, chunk_rows, bias, softcap):
    h, head, tgt, w = _inputs(torch.bfloat16 if mode == "bf16" else torch.float32, bias)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "fp32-autocast"):
        want, want_sq = _plain(head, h, tgt, softcap)
        g0 = _grads(want, w, h, head)
        got, sq = _head_logps(head, h, tgt, chunk_rows, recompute=recompute, softcap=softcap, with_sq=True)
        g1 = _grads(got, w, h, head)
    assert got.dtype == sq.dtype == torch.float32 and not sq.requires_grad
    if mode == "fp32":
        tol = dict(atol=1e-5, rtol=1e-5)
        assert torch.allclose(got, want, **tol) and torch.allclose(sq, want_sq, **tol)
        for a, b in zip(g1, g0):
            assert torch.allclose(a, b, **tol)
    else:  # the same bf16 logits: the log-probs agree to float32 rounding; the grads to bf16 rounding of a sum
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-5) and torch.allclose(sq, want_sq, atol=1e-4, rtol=1e-5)
        for a, b in zip(g1, g0):
            assert a.dtype == b.dtype
            assert torch.allclose(a.float(), b.float(), rtol=2e-2, atol=2e-2 * b.float().abs().max().item())
    # and the values really depend on what is tested: another target, or no soft-cap, moves them
    other, _ = _plain(head, h, (tgt + 1) % head.weight.shape[0], softcap)
    assert (other - want).abs().max() > 1e-2


def test_without_sq_nothing_extra_and_same_values():
    h, head, tgt, _ = _inputs(torch.float32, True)
    a, none = _head_logps(head, h, tgt, 5, recompute=False)
    b, sq = _head_logps(head, h, tgt, 5, recompute=False, with_sq=True)
    assert none is None and torch.equal(a, b) and sq.shape == a.shape


@pytest.mark.parametrize("chunk_rows", [5, 1000], ids=["tiles", "one-tile"])
def test_kept_tile_backward_twice(chunk_rows):
    """Kept tiles' exps serve backward; a second backward (retain_graph) must not see them modified."""
    h, head, tgt, w = _inputs(torch.float32, False)
    out, _ = _head_logps(head, h, tgt, chunk_rows, recompute=False)
    (out * w).sum().backward(retain_graph=True)
    first = head.weight.grad.clone()
    (out * w).sum().backward()
    assert torch.allclose(head.weight.grad, 2 * first, atol=1e-6)


def test_lora_head_gives_sq_through_the_module():
    """A head that is not a plain nn.Linear goes through the module per tile (with checkpointing on request)."""
    h, head, tgt, w = _inputs(torch.float32, False)
    seq = torch.nn.Sequential(head)  # anything but nn.Linear
    want, want_sq = _plain(head, h, tgt, None)
    for recompute in (False, True):
        got, sq = _head_logps(seq, h, tgt, 5, recompute=recompute, with_sq=True)
        assert torch.allclose(got, want, atol=1e-6) and torch.allclose(sq, want_sq, atol=1e-6)


def test_chunk_rows_rule():
    assert head_chunk_rows(50257, "cpu") == 384  # 256 MiB / (3 x 4 bytes x 50257), in multiples of 64
    assert head_chunk_rows(49152, "cpu") == 448
    assert head_chunk_rows(262144, "cpu") == 256  # the efficiency floor
    assert head_chunk_rows(1000, "cpu") % 64 == 0 and head_chunk_rows(1000, "cpu") > head_chunk_rows(50257, "cpu")


def test_keep_saves_every_tile_and_recompute_saves_none():
    """train.logits=response keeps the [N, V] exps for backward; response-recompute keeps no [rows, V] tile."""
    h, head, tgt, _ = _inputs(torch.float32, False)
    vocab = head.weight.shape[0]

    def saved_vocab_rows(recompute):
        out, _ = _head_logps(head, h, tgt, 5, recompute=recompute)
        return sum(
            t.shape[0] for t in out.grad_fn.saved_tensors if t is not None and t.dim() == 2 and t.shape[1] == vocab
        )

    assert saved_vocab_rows(False) == h.shape[0]
    assert saved_vocab_rows(True) == 0
