"""Response log-probs: the selective path equals a plain full log_softmax over the vocabulary."""

import torch

from dpolab.models.logprobs import gather_logps


def test_matches_full_log_softmax():
    torch.manual_seed(0)
    n, t, v = 3, 7, 11
    logits = torch.randn(n, t, v, dtype=torch.float64)
    ids = torch.randint(0, v, (n, t))
    mask = torch.zeros(n, t, dtype=torch.bool)
    mask[0, 3:] = True
    mask[1, 5:6] = True
    mask[2, 1:4] = True
    got = gather_logps(logits, ids, mask, chunk_rows=2)  # several chunks
    full = logits[:, :-1].log_softmax(-1).gather(2, ids[:, 1:, None]).squeeze(2)
    want = (full * mask[:, 1:]).sum(-1)
    assert torch.allclose(got.sums.double(), want, atol=1e-6)
    assert got.counts.tolist() == [4, 1, 3]
    assert torch.allclose(got.token_logps.double(), full * mask[:, 1:], atol=1e-6)


def test_gradient_flows_only_through_response_positions():
    logits = torch.randn(1, 5, 4, requires_grad=True)
    ids = torch.tensor([[0, 1, 2, 3, 0]])
    mask = torch.tensor([[False, False, False, True, True]])
    gather_logps(logits, ids, mask).sums.sum().backward()
    assert logits.grad[0, :2].abs().sum() == 0 and logits.grad[0, 4].abs().sum() == 0
    assert logits.grad[0, 2:4].abs().sum() > 0


def test_log_sum_sq_probs_is_the_self_probability():
    """WPO's per-token log sum_v p_v^2, from the softmax directly (float64), at response positions only, detached."""
    torch.manual_seed(1)
    logits = torch.randn(2, 6, 9, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 9, (2, 6))
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 2:] = True
    mask[1, 4:] = True
    got = gather_logps(logits, ids, mask, chunk_rows=3, with_sq=True)
    want = logits[:, :-1].detach().softmax(-1).square().sum(-1).log() * mask[:, 1:]
    assert torch.allclose(got.token_log_sum_sq.double(), want, atol=1e-6)
    assert not got.token_log_sum_sq.requires_grad
    assert gather_logps(logits, ids, mask).token_log_sum_sq is None
