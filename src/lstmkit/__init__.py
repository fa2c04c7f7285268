"""lstmkit: recurrent neural networks on text (PTB language models and more) on PyTorch."""

from lstmkit.config import PRESETS, LMConfig, preset
from lstmkit.errors import UserError

__version__ = "0.1.0"
__all__ = ["LMConfig", "PRESETS", "UserError", "preset", "__version__"]
