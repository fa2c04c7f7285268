"""lstmkit: recurrent neural networks on text (PTB language models and more) on PyTorch."""

from lstmkit.errors import UserError
from lstmkit.lm.config import PRESETS, LMConfig, preset

__version__ = "0.1.0"
__all__ = ["PRESETS", "LMConfig", "LanguageModelRun", "TextSource", "UserError", "__version__",
           "load", "preset", "train"]


def __getattr__(name: str):
    # The API (and with it the model code) is imported on first use of these names.
    if name in ("load", "LanguageModelRun", "TextSource", "train"):
        from lstmkit.lm import api

        return getattr(api, name)
    raise AttributeError(f"module 'lstmkit' has no attribute {name!r}")
