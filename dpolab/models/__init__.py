"""Models: loading (tiny presets, LoRA), log-probs (plain and fast paths), reference, generation primitive,
tokenizers."""

from .quiet import drop_known_log_records

drop_known_log_records()  # before any submodule imports peft (which imports bitsandbytes)
