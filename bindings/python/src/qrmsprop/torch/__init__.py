"""PyTorch front end: drop-in replacements for bitsandbytes' RMSprop family.

    import qrmsprop.torch as bnb          # instead of: import bitsandbytes as bnb
    opt = bnb.optim.RMSprop8bit(model.parameters(), lr=1e-3)

RMSprop, RMSprop8bit, RMSprop32bit, RMSprop4bit and GlobalOptimManager are available both
here and under `qrmsprop.torch.optim` (the `bnb.optim.X` spelling).
"""
from . import optim
from .optim import GlobalOptimManager, RMSprop, RMSprop4bit, RMSprop8bit, RMSprop32bit

__all__ = ["optim", "RMSprop", "RMSprop8bit", "RMSprop32bit", "RMSprop4bit", "GlobalOptimManager"]
