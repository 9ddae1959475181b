"""Models: loading (tiny presets, LoRA), log-probs (plain and fast paths), reference, generation primitive, tokenizers."""
