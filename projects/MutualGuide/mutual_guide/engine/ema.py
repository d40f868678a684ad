"""
Exponential moving average of a detector's weights (MODEL_EMA.*), for any meta-architecture.

After update u (the u-th optimizer step since the average started), every floating-point tensor of the state dict
(parameters and BatchNorm running statistics alike) becomes

    average <- d(u) * average + (1 - d(u)) * weight,      d(u) = DECAY * (1 - exp(-u / RAMP_ITERS))

as the authors' code at 108b4a8 does (utils/ema.py: 0.9998 and 2000, updated after every step). The ramp lets the
average follow the weights closely at first (d(1) is about 0.0005) and average over about 1 / (1 - DECAY) = 5000
steps later. RAMP_ITERS <= 0 gives the constant decay d(u) = DECAY of d2go's MODEL_EMA. Integer tensors (BatchNorm's
`num_batches_tracked`) are copied from the weights.

detectron2 0.7.2 has no EMA of weights (its DenseDetector's `_ema_update` averages a scalar, the number of
foreground anchors); d2go's `ModelEMA` is not a dependency here and keeps a fixed decay.
"""
import copy
import logging
import math

import torch

from detectron2.engine.hooks import HookBase

from mutual_guide.checkpoint.state_dict import check_state_dict_fits

__all__ = ["EMAHook", "ModelEMA", "build_model_ema"]

logger = logging.getLogger(__name__)


class ModelEMA:
    """
    The averaged detector (`self.model`, a copy of the training model in eval mode, never trained itself: it is
    what evaluation and checkpoints use) and the number of updates made (`self.updates`). A checkpointable:
    `state_dict()` is {"averages": the averaged state dict, "updates": int}.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.9998, ramp_iters: float = 2000):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"MODEL_EMA.DECAY must be in [0, 1), got {decay}")
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay, self.ramp_iters = decay, ramp_iters
        self.updates = 0
        self.restored = False  # True once a checkpoint's average was loaded (EMAHook then does not restart it)

    def decay_at(self, updates: int) -> float:
        """d(u) of the module docstring."""
        if self.ramp_iters <= 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-updates / self.ramp_iters))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One step of the average towards `model`'s weights (the unwrapped module, not DistributedDataParallel)."""
        self.updates += 1
        d = self.decay_at(self.updates)
        weights = model.state_dict()
        for key, average in self.model.state_dict().items():
            if average.dtype.is_floating_point:
                average.mul_(d).add_(weights[key].detach(), alpha=1.0 - d)
            else:
                average.copy_(weights[key])

    @torch.no_grad()
    def restart(self, model: torch.nn.Module) -> None:
        """The average becomes `model`'s weights, with no update made."""
        self.model.load_state_dict(model.state_dict())
        self.updates = 0

    def state_dict(self):
        return {"averages": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state):
        own = self.model.state_dict()
        check_state_dict_fits(own, state["averages"], "The EMA weights of the checkpoint do not fit the network")
        self.model.load_state_dict(state["averages"], strict=False)  # num_batches_tracked may be absent
        self.updates = int(state["updates"])
        self.restored = True


class EMAHook(HookBase):
    """
    Updates a ModelEMA after every optimizer step. Before the first step it restarts the average from the weights
    training starts with (MODEL.WEIGHTS, the ImageNet backbone or a fresh network), unless a resumed checkpoint
    gave the average and its update count. With DistributedDataParallel every process updates its own average from
    its own copy of the module: the parameters are identical everywhere after each step, so are the averages of
    them, and nothing is communicated.
    """

    def __init__(self, ema: ModelEMA, model: torch.nn.Module):
        self.ema, self._model = ema, model

    def before_train(self):
        if not self.ema.restored:
            self.ema.restart(self._model)
        logger.info("EMA of the weights: decay %s, ramp %s iterations, %d updates made so far",
                    self.ema.decay, self.ema.ramp_iters, self.ema.updates)

    def after_step(self):
        self.ema.update(self._model)


def build_model_ema(cfg, model):
    """The ModelEMA of MODEL_EMA.* for `model` (unwrapped), or None when MODEL_EMA.ENABLED is False."""
    if not cfg.MODEL_EMA.ENABLED:
        return None
    return ModelEMA(model, cfg.MODEL_EMA.DECAY, cfg.MODEL_EMA.RAMP_ITERS)
