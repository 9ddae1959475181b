"""One-line errors that point at the fix: an unknown key names the section that has it; a cause keeps its sentence."""

from __future__ import annotations

import pytest

from dpolab.config import ConfigError, build_config
from dpolab.errors import first_sentence


@pytest.mark.parametrize(
    "override, hint",
    [
        ("lr=1e-5", "(did you mean 'train.lr'?)"),  # was: did you mean 'lora'
        ("data.lr=1e-5", "(did you mean 'train.lr'?)"),
        ("batch_size=4", "(did you mean 'train.batch_size' or 'eval.batch_size'?)"),
        ("r=8", "(did you mean 'lora.r'?)"),
        ("trian=1", "(did you mean 'train'?)"),  # no section has the key: the fuzzy match as before
        ("train.optimzer=adamw", "(did you mean 'optimizer'?)"),
    ],
)
def test_unknown_key_suggests_the_section_that_has_it(override, hint):
    with pytest.raises(ConfigError) as e:
        build_config({}, [override])
    key = override.split("=")[0]
    assert str(e.value).startswith(f"unknown key '{key}' {hint}; valid keys: ")


def test_first_sentence_keeps_a_sentence_wrapped_over_lines():
    wrapped = ValueError(
        "Couldn't instantiate the backend tokenizer from one of:\n(1) a `tokenizers` library serialization "
        "file,\n(2) a slow tokenizer instance to convert or\n(3) an equivalent slow tokenizer class to "
        "instantiate and convert.\nYou need to have sentencepiece installed."
    )
    assert first_sentence(wrapped) == (
        "Couldn't instantiate the backend tokenizer from one of: (1) a `tokenizers` library "
        "serialization file, (2) a slow tokenizer instance to convert or (3) an equivalent "
        "slow tokenizer class to instantiate and convert."
    )
    assert (
        first_sentence(OSError("Can't load tokenizer for 'x'. Make sure it exists.\nMore."))
        == "Can't load tokenizer for 'x'. Make sure it exists."
    )
    assert first_sentence(ValueError("")) == "ValueError"
    long = first_sentence(ValueError("word " * 200), limit=50)
    assert long.endswith(" ...") and len(long) <= 54 and "\n" not in long
