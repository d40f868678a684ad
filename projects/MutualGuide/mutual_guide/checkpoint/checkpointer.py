"""The detector's checkpointer: strict loading of whole detectors, fine-tuning, atomic saves."""
import logging
import os
from typing import Dict, Mapping

import torch

import detectron2.utils.comm as comm
from detectron2.checkpoint import DetectionCheckpointer

from mutual_guide.checkpoint.state_dict import check_state_dict_fits
from mutual_guide.utils.atomic_io import AtomicWritePathManager

__all__ = ["EMA_KEY", "MutualGuideCheckpointer"]

logger = logging.getLogger(__name__)

EMA_KEY = "ema"  # the checkpointable name of the average of the weights, and its entry in the files

class MutualGuideCheckpointer(DetectionCheckpointer):
    """
    A model says how it loads by two attributes: `loads_whole_detectors` (True: MODEL.WEIGHTS is a whole detector,
    loaded strictly as below) and `class_logit_prefix` (the state-dict prefix of its class-logit layers, which
    fine-tuning restarts with the model's `reset_class_logits()`). Other models load as detectron2 loads them.

    Loads the project's checkpoints and the authors' state dicts (renamed by the detector's own pre-hook,
    see paper_checkpoint.py).

    detectron2's checkpointer skips tensors whose shapes differ and only logs a warning, which silently leaves
    a head untrained when, say, NUM_CLASSES is wrong. MODEL.WEIGHTS here is a whole detector, so any shape
    mismatch, missing or unexpected tensor is an error naming the file and the keys, and nothing is loaded.

    With `finetune=True` (MODEL.MUTUAL_GUIDE.FINETUNE) the class-logit layers (`head.conf`) of a checkpoint
    trained on other classes are left out and start afresh with the head's prior-probability initialisation;
    every other tensor must still fit, since a checkpoint of another backbone or neck is not a fine-tune.

    Checkpoints and `last_checkpoint` are written atomically (atomic_io.py): a save interrupted by a kill
    never leaves a truncated file under a checkpoint's name.

    With an exponential moving average of the weights (a checkpointable named "ema", engine/ema.py ModelEMA), a
    saved file's "model" is the *averaged* weights: what the run evaluates, and what every reader of the file
    (--eval-only, demo.py, tools/export_model.py, detectron2's own checkpointer, `torch.load(f)["model"]`) takes
    without knowing about the average. The training weights and the update count are under "ema":
    {"training_weights": ..., "updates": u}. Only a checkpointer made with `restores_training=True` (the
    trainer's) puts them back for --resume: "training_weights" into the model, "model" into the average.
    """

    def __init__(self, model, save_dir="", *, finetune: bool = False, restores_training: bool = False,
                 **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.finetune = finetune
        self.restores_training = restores_training
        self._loading_path = ""
        self._restoring = False
        self.path_manager = AtomicWritePathManager(self.path_manager)

    def save(self, name, **kwargs):
        """fvcore's save; with an "ema" checkpointable, "model" holds the averaged weights (see the class)."""
        ema = self.checkpointables.get(EMA_KEY)
        if ema is not None:
            state = ema.state_dict()
            # fvcore writes kwargs over the entries it made from the model and the checkpointables
            kwargs = {"model": state["averages"],
                      EMA_KEY: {"training_weights": self.model.state_dict(), "updates": state["updates"]}, **kwargs}
        super().save(name, **kwargs)

    def get_checkpoint_file(self):
        """
        The checkpoint OUTPUT_DIR/last_checkpoint names ("" when there is no such file). fvcore's reads any content
        as a name: an empty file gives the folder itself, a binary one a UnicodeDecodeError; here both, and a name
        of a missing file, are errors naming last_checkpoint and what it holds.
        """
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        try:
            with open(save_file, "rb") as f:
                raw = f.read(4096)
        except FileNotFoundError:
            return ""
        try:
            name = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            name = None
        remedy = (f"write the file name of one of the checkpoints of {self.save_dir!r} into it, or remove it (then "
                  "--resume starts from MODEL.WEIGHTS)")
        if not name or any(c in name for c in "\n\x00/"):
            what = "is empty" if not raw.strip() else f"holds {raw[:40]!r}"
            raise ValueError(f"{save_file} should hold the file name of the last checkpoint (such as "
                             f"model_0004999.pth), but it {what}: {remedy}")
        path = os.path.join(self.save_dir, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{save_file} names {name!r}, which is not a file of {self.save_dir!r}: {remedy}")
        return path

    def resume_or_load(self, path, *, resume=True):
        """detectron2's rule (with `resume` and a last checkpoint, that one, else `path`), saying which, before loading."""
        if resume and self.has_checkpoint():
            last = self.get_checkpoint_file()
            if path and os.path.abspath(path) != os.path.abspath(last):
                logger.warning(
                    f"--resume and MODEL.WEIGHTS {path!r}: loading {last!r}, the last checkpoint of OUTPUT_DIR "
                    f"(named in its last_checkpoint), not MODEL.WEIGHTS. To load MODEL.WEIGHTS, leave out --resume "
                    f"or use another OUTPUT_DIR."
                )
            else:
                logger.info(f"--resume: loading {last!r}")
        return super().resume_or_load(path, resume=resume)

    def _load_file(self, filename):
        """detectron2's reading of `filename`, with an error naming the file when it is not a checkpoint."""
        try:
            loaded = super()._load_file(filename)
        except FileNotFoundError:
            raise
        except Exception as e:  # pickle and torch raise many types on a file that is not theirs (KeyError among them)
            raise ValueError(
                f"Cannot read {filename!r} as a checkpoint ({type(e).__name__}: {e}). MODEL.WEIGHTS must be a file "
                "saved by torch.save: a checkpoint of this project or of detectron2, or the authors' state dict"
            ) from e
        if not isinstance(loaded, dict) or not isinstance(loaded.get("model"), dict):
            raise ValueError(f"{filename!r} holds no state dict (a dict of tensors, or one under 'model'): got "
                             f"{type(loaded.get('model') if isinstance(loaded, dict) else loaded).__name__}")
        return self._training_state(loaded) if self._restoring else loaded

    def load(self, path, checkpointables=None):
        """fvcore's load (checkpointables None: all, as --resume does; [] the model only, as MODEL.WEIGHTS does)."""
        self._loading_path = path
        self._restoring = self.restores_training and checkpointables is None
        return super().load(path, checkpointables=checkpointables)

    def _training_state(self, loaded):
        """
        The file as --resume needs it (the class docstring's layout undone): "model" the training weights, "ema"
        {"averages", "updates"} for the ModelEMA, or no "ema" when this run keeps no average.
        """
        saved = loaded.get(EMA_KEY)
        has_ema = EMA_KEY in self.checkpointables
        if not isinstance(saved, dict) or "training_weights" not in saved:
            if has_ema:
                logger.warning(
                    f"--resume from {self._loading_path!r}, which holds no EMA of the weights (saved without "
                    f"MODEL_EMA.ENABLED): the average starts afresh from the weights loaded, its decay ramp from 0"
                )
            return loaded
        loaded = dict(loaded)
        saved = dict(loaded.pop(EMA_KEY))
        averages, loaded["model"] = loaded["model"], saved.pop("training_weights")
        if has_ema:
            loaded[EMA_KEY] = {"averages": averages, "updates": saved["updates"]}
        else:
            logger.warning(
                f"--resume from {self._loading_path!r}, saved with an EMA of the weights, and MODEL_EMA.ENABLED "
                f"False: training goes on from its training weights; the average (its 'model') is left out"
            )
        return loaded

    def _load_model(self, checkpoint):
        if not getattr(self.model, "loads_whole_detectors", False):
            # detectron2's own detectors (MutualGuideRetinaNet) load as detectron2 loads them: its ImageNet .pkl
            # files by name heuristics, a partial fit with a warning, as users of those configs expect
            return super()._load_model(checkpoint)
        # Not DetectionCheckpointer._load_model: fvcore's compares shapes under the file's names, before the
        # detector's pre-hook renames the authors' keys, and only warns. Checking from a pre-hook registered after
        # the detector's sees the names the model loads, and raises before any tensor is copied. (detectron2's
        # Caffe2/pycls name heuristics, the other thing it does, are for detectron2's own models.)
        self._left_out = []
        handle = self.model.register_load_state_dict_pre_hook(self._check_fit)
        try:
            self.model.load_state_dict(checkpoint.pop("model"), strict=False)
        finally:
            handle.remove()
        if self._left_out:
            self._restart_class_layers()
        return None  # nothing for fvcore to warn about: whatever did not fit raised, or was re-initialised and logged

    def _check_fit(self, module, state_dict, prefix, *_):
        own = module.state_dict()
        given = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        prefix_of_layers = module.class_logit_prefix
        under_prefix = sorted(prefix_of_layers + k for k in module.get_submodule(prefix_of_layers[:-1]).state_dict())
        misfits = [k for k in under_prefix if k in given and tuple(given[k].shape) != tuple(own[k].shape)]
        other_classes = bool(misfits)
        # the layers whose size depends on the number of classes; a layer is one weight and one bias, both start
        # afresh even if one of them happened to fit. Layers under the prefix that fit (the conv unit before the
        # 1x1 class layer of the 2023 head) are loaded.
        layers = {k.rsplit(".", 1)[0] for k in misfits}
        class_keys = [k for k in under_prefix if k.rsplit(".", 1)[0] in layers]
        if self.finetune and other_classes:
            self._left_out = [_describe(k, given, own) for k in class_keys]
            for k in class_keys:
                state_dict.pop(prefix + k, None)
                given.pop(k, None)
                del own[k]
        hint = ""
        if other_classes and not self.finetune:
            hint = "; to start new class layers from a detector of other classes: MODEL.MUTUAL_GUIDE.FINETUNE True"
        check_state_dict_fits(
            own,
            given,
            f"Checkpoint {self._loading_path!r} does not fit the configured network (check "
            f"MODEL.BACKBONE.NAME, MODEL.NECK.NAME, INPUT.SIZE, MODEL.MUTUAL_GUIDE.NUM_CLASSES{hint})",
        )

    def _restart_class_layers(self):
        self.model.reset_class_logits()
        if comm.get_world_size() > 1:
            # every process drew its own random weights: all start from the main process's, as DDP's own
            # construction-time broadcast would have done
            for param in self.model.get_submodule(self.model.class_logit_prefix[:-1]).parameters():
                torch.distributed.broadcast(param.data, src=0)
        logger.warning(
            "Fine-tuning from %r (MODEL.MUTUAL_GUIDE.FINETUNE): every other tensor loaded; these %d class-logit "
            "tensors re-initialised with the prior probability 0.01:\n  %s",
            self._loading_path,
            len(self._left_out),
            "\n  ".join(self._left_out),
        )


def _describe(key, given, own):
    shape = f"{tuple(given[key].shape)} in the file" if key in given else "missing from the file"
    return f"{key}: {shape}, {tuple(own[key].shape)} in the model"
