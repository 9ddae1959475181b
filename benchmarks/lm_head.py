"""Peak memory and time of the LM head's forward + backward at the response positions: the old fused head (each
tile's float32 softmax saved until backward, 1024-row tiles) against the two-pass head of
``dpolab.models.fastpath._FusedHeadLogp`` (only h, targets and per-row logsumexp saved; tiles from
``head_chunk_rows``).

    .venv/bin/python benchmarks/lm_head.py         # all shapes, 2 rounds, -> benchmarks/results/lm_head.json
    .venv/bin/python benchmarks/lm_head.py --tokens 2048 --rounds 1 --out /tmp/x.json   # a quick look

Each measurement runs in a fresh subprocess (so one arm's high-water mark cannot hide another's); old and new
alternate within every round. Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` minus what the inputs hold;
on CPU the growth of the process's peak resident set (``ru_maxrss``) over the inputs' (indicative: the allocator
may keep or return pages). Time: the wall time of one forward + backward after one untimed warm-up call (CUDA:
synchronised). The inputs: h [tokens, hidden] and a head weight [vocab, hidden] (float32 on CPU, bfloat16 on CUDA),
both requiring gradients, random targets; the loss is sum of the log-probs times fixed random weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [("gpt2", 50257, 384), ("smollm2", 49152, 576)]  # (name, vocab, hidden)
OLD_CHUNK_ROWS = 1024  # batch_logps' old default


def _old_head(h, weight, tgt, chunk_rows=OLD_CHUNK_ROWS):
    """The head as it was before the two-pass change: one autograd Function per tile that saves the tile's exp."""
    import torch

    class _LinearLogp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h, weight, bias, tgt):
            z = torch.nn.functional.linear(h, weight, bias).float()
            zt = z.gather(1, tgt[:, None]).squeeze(1)
            m = z.amax(-1, keepdim=True)
            z.sub_(m).exp_()
            s = z.sum(-1, keepdim=True)
            out = zt - (m + s.log()).squeeze(1)
            ctx.save_for_backward(h, weight, bias, tgt, z, s)
            return out

        @staticmethod
        def backward(ctx, g):
            h, weight, bias, tgt, e, s = ctx.saved_tensors
            grad = e.mul_((-g[:, None]) / s)
            grad.scatter_add_(1, tgt[:, None], g[:, None].to(grad.dtype))
            grad = grad.to(h.dtype)
            return grad @ weight.to(h.dtype), (grad.t() @ h).to(weight.dtype), None, None

    return torch.cat(
        [
            _LinearLogp.apply(h[s : s + chunk_rows], weight, None, tgt[s : s + chunk_rows])
            for s in range(0, h.shape[0], chunk_rows)
        ]
    )


def _new_head(h, weight, tgt):
    import torch

    from dpolab.models.fastpath import _head_logps, head_chunk_rows

    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
    head.weight = weight
    return _head_logps(head, h, tgt, head_chunk_rows(weight.shape[0], h.device), recompute=False)[0]


def measure(arm: str, vocab: int, hidden: int, tokens: int) -> dict:
    """One arm on one shape, in this process."""
    import torch

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    g = torch.Generator(device="cpu").manual_seed(0)
    h = (torch.randn(tokens, hidden, generator=g) * 0.5).to(dev, dtype).requires_grad_()
    weight = torch.nn.Parameter((torch.randn(vocab, hidden, generator=g) * 0.05).to(dev, dtype))
    tgt = torch.randint(0, vocab, (tokens,), generator=g).to(dev)
    w = torch.rand(tokens, generator=g).to(dev)
    fn = _old_head if arm == "old" else _new_head

    def step():
        h.grad = weight.grad = None
        (fn(h, weight, tgt) * w).sum().backward()
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step()  # the measured peak includes the first call's allocations
    peak = (
        torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ) - base
    t0 = time.perf_counter()
    step()
    return {
        "arm": arm,
        "vocab": vocab,
        "hidden": hidden,
        "tokens": tokens,
        "device": dev.type,
        "dtype": str(dtype),
        "peak_mib": round(peak / 2**20, 1),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lm_head.json"))
    ap.add_argument("--one", nargs=4, metavar=("ARM", "VOCAB", "HIDDEN", "TOKENS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(measure(a.one[0], *map(int, a.one[1:]))))
        return
    import torch

    from dpolab import atomic
    from dpolab.models.fastpath import head_chunk_rows

    rows, k = [], 0
    for r in range(a.rounds):
        for name, vocab, hidden in SHAPES:
            for tokens in a.tokens:
                k += 1
                for arm in ("old", "new") if k % 2 else ("new", "old"):  # pairs, in alternating order
                    cmd = [sys.executable, __file__, "--one", arm, str(vocab), str(hidden), str(tokens)]
                    res = json.loads(
                        subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
                    )
                    res.update(round=r, shape=name)
                    print(json.dumps(res), flush=True)
                    rows.append(res)
    summary = []
    for name, vocab, hidden in SHAPES:
        for tokens in a.tokens:
            sel = {
                arm: [x for x in rows if x["shape"] == name and x["tokens"] == tokens and x["arm"] == arm]
                for arm in ("old", "new")
            }
            med = lambda xs, k: sorted(x[k] for x in xs)[len(xs) // 2]  # noqa: E731
            summary.append(
                {
                    "shape": name,
                    "vocab": vocab,
                    "hidden": hidden,
                    "tokens": tokens,
                    "new_chunk_rows": head_chunk_rows(vocab, "cuda" if torch.cuda.is_available() else "cpu"),
                    **{f"{arm}_peak_mib": med(sel[arm], "peak_mib") for arm in sel},
                    **{f"{arm}_seconds": med(sel[arm], "seconds") for arm in sel},
                }
            )
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": platform.platform(),
        "processor": platform.processor(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "note": "indicative: a shared 2-core machine under other load; old/new alternate in every round",
        "summary": summary,
        "runs": rows,
    }
    atomic.write_text(a.out, json.dumps(result, indent=1) + "\n")
    for s in summary:
        print(s)


if __name__ == "__main__":
    main()
