"""The known third-party warnings are silenced narrowly (message, category, module), only inside the block."""

from __future__ import annotations

import warnings

import pytest

from dpolab.config import build_config
from dpolab.engine.objectives import get_objective
from dpolab.models.quiet import known_warnings_silenced
from dpolab.models.tokenizer import build_char_tokenizer

PEFT = "Could not find a config file in /x - will assume that the vocabulary was not modified."


def _raise(message, category, module):
    warnings.warn_explicit(message, category, filename=module.replace(".", "/") + ".py", lineno=1, module=module)


def test_only_the_known_messages_from_their_modules_are_silenced():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with known_warnings_silenced():
            _raise(PEFT, UserWarning, "peft.utils.save_and_load")
            _raise(
                "`is_gradient_checkpointing` is deprecated and will be removed in v6.",
                FutureWarning,
                "transformers.modeling_utils",
            )
            _raise(PEFT, UserWarning, "mypackage.module")  # same text, another module: kept
            _raise("another peft warning", UserWarning, "peft.utils.save_and_load")  # another text: kept
        _raise(PEFT, UserWarning, "peft.utils.save_and_load")  # outside the block: kept
    assert [(str(w.message), w.category) for w in seen] == [
        (PEFT, UserWarning),
        ("another peft warning", UserWarning),
        (PEFT, UserWarning),
    ]


@pytest.mark.slow
def test_lora_setup_raises_no_deprecation_note(tmp_path):
    """Policy and reward-model LoRA set-up, and merging a saved adapter back, raise no transformers deprecation note.

    Whether peft called directly still triggers the note depends on the installed transformers / peft (transformers
    5.24 with peft 0.21 did, 5.25 with 0.22 does not): that is upstream's behaviour, so it is not asserted here. What
    dpolab promises, no such note from its own LoRA paths, is asserted on every version; the silencing itself is checked
    with synthetic warnings by ``test_only_the_known_messages_from_their_modules_are_silenced``."""
    from dpolab.models.load import load_saved_model, save_model
    from dpolab.rewards.model import load_reward_model, merged_for_saving

    cfg = build_config({}, ["lora.enabled=true"])
    tok = build_char_tokenizer()
    note = lambda ws: [w for w in ws if "is_gradient_checkpointing" in str(w.message)]  # noqa: E731
    with warnings.catch_warnings(record=True) as quiet:
        warnings.simplefilter("always")
        policy = get_objective("preference")(cfg).load_model(tok, seed=0, max_positions=64)
        save_model(policy, tok, tmp_path / "adapter", cfg.model)
        load_saved_model(tmp_path / "adapter", tok)
        merged_for_saving(load_reward_model(cfg.model, cfg.lora, tok))
    assert not note(quiet)
    assert any(type(m).__name__ == "LoraModel" or "Lora" in type(m).__name__ for m in policy.modules()), (
        "the policy was not wrapped with LoRA: the check above saw no LoRA set-up"
    )


def test_known_log_record_is_dropped_and_others_kept(caplog):
    """bitsandbytes' optional-kernel notice (printed at every peft import) is dropped; its other records are not."""
    import logging

    import dpolab.models  # noqa: F401 - installs the filters
    from dpolab.models.quiet import drop_known_log_records

    drop_known_log_records()  # idempotent: a second call adds no second filter
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    assert sum(type(f).__name__ == "_DropKnown" for f in logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger="bitsandbytes.backends.cpu.ops"):
        logger.warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure ...",
            "No module named 'kernels'",
        )
        logger.warning("something else went wrong")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["something else went wrong"]
