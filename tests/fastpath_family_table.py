"""Which layout each model family really gets, and how far its log-probs are from the plain path's.

    .venv/bin/python tests/fastpath_family_table.py

For each tiny preset (``dpolab.models.load.TINY_PRESETS``, 16-token windows; plus GPT-Neo, whose window is applied by
the model itself) and each requested layout (prefix, packed; logits=response) in fp32, under bf16 autocast
(``train.bf16=true``) and with bf16 weights: the (layout, logits) that ``dpolab.models.fastpath.resolve`` picks and the
largest per-token |log-p| difference from the plain path (``train.layout=padded train.logits=full``) computed in the
same precision, and the same for WPO's per-token log sum_v p_v^2 (``with_sq``), on 8 pairs of sequences of 9 to 45
tokens. Not a test (pytest does not collect it); a table for
docs/performance.md.
"""

from __future__ import annotations

import random
import warnings

import torch


def main() -> None:
    from transformers import AutoModelForCausalLM, GPTNeoConfig

    from dpolab.data.collate import collate_preference_fast
    from dpolab.data.types import TokenizedPair
    from dpolab.models.fastpath import batch_logps, resolve
    from dpolab.models.load import TINY_PRESETS, disable_dropout, tiny_config
    from dpolab.models.logprobs import response_logps
    from dpolab.models.tokenizer import build_char_tokenizer

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    tok = build_char_tokenizer()
    rng = random.Random(0)
    ids = lambda k: [rng.randrange(4, 90) for _ in range(k)]  # noqa: E731
    lens = [(20, 17, 5), (3, 30, 12), (25, 2, 18), (9, 9, 9), (1, 7, 3), (12, 2, 9), (30, 14, 8), (6, 3, 15)]
    pairs = [
        TokenizedPair(prompt_ids=[1] + ids(a), chosen_ids=ids(b) + [2], rejected_ids=ids(c) + [2]) for a, b, c in lens
    ]

    def build(name):
        torch.manual_seed(0)
        if name == "gpt-neo (window_size 16)":
            cfg = GPTNeoConfig(
                vocab_size=len(tok),
                hidden_size=64,
                num_layers=2,
                num_heads=4,
                window_size=16,
                attention_types=[[["global", "local"], 1]],
                max_position_embeddings=1024,
                bos_token_id=1,
                eos_token_id=2,
                pad_token_id=0,
            )
        else:
            cfg = tiny_config(name, tok)
        m = AutoModelForCausalLM.from_config(cfg)
        disable_dropout(m)
        for p in m.parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=0.1)
        return m.eval()

    modes = {
        "fp32": (torch.float32, False),
        "bf16 autocast": (torch.float32, True),
        "bf16 weights": (torch.bfloat16, False),
    }
    print("| family | layout | " + " | ".join(f"{m}: used, max err (log-p; log sum p^2)" for m in modes) + " |")
    print("|---|---|" + "---|" * len(modes))
    for name in [*TINY_PRESETS, "gpt-neo (window_size 16)"]:
        for layout in ("prefix", "packed"):
            cells = []
            for mode, (dtype, amp) in modes.items():
                model = build(name).to(dtype)
                batch = collate_preference_fast(pairs, tok.pad_token_id, layout)
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                    fast = batch_logps(model, batch, layout=layout, logits="response", with_sq=True)
                    used = resolve(model, batch, layout, "response")
                    plain = response_logps(model, batch.input_ids, batch.attention_mask, batch.loss_mask, with_sq=True)
                err = (fast.token_logps - plain.token_logps).abs().max().item()
                sq_err = (fast.token_log_sum_sq - plain.token_log_sum_sq).abs().max().item()
                cells.append(f"{used[0]}/{used[1]}, {err:.1e}; {sq_err:.1e}")
            print(f"| {name} | {layout} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
