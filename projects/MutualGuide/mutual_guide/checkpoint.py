"""A DetectionCheckpointer that refuses checkpoints which do not fit the configured network."""
from detectron2.checkpoint import DetectionCheckpointer

from .atomic_io import AtomicWritePathManager
from .paper_checkpoint import convert_paper_state_dict

__all__ = ["CheckpointMismatchError", "MutualGuideCheckpointer"]


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the model built from the config."""


class MutualGuideCheckpointer(DetectionCheckpointer):
    """
    Loads the project's checkpoints and the authors' state dicts (renamed on the fly).

    detectron2's checkpointer skips tensors whose shapes differ and only logs a warning, which silently leaves
    a head untrained when, say, NUM_CLASSES is wrong. MODEL.WEIGHTS here is always a whole detector, so any
    shape mismatch, missing or unexpected tensor is an error naming the file and the keys.

    Checkpoints and `last_checkpoint` are written atomically (atomic_io.py): a save interrupted by a kill
    never leaves a truncated file under a checkpoint's name.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.path_manager = AtomicWritePathManager(self.path_manager)

    def load(self, path, *args, **kwargs):
        self._loading_path = path
        return super().load(path, *args, **kwargs)

    def _load_model(self, checkpoint):
        checkpoint["model"] = convert_paper_state_dict(dict(checkpoint["model"]))
        incompatible = super()._load_model(checkpoint)
        missing = [k for k in incompatible.missing_keys if not k.endswith("num_batches_tracked")]
        problems = [
            f"{k}: {tuple(c)} in the checkpoint, {tuple(m)} in the model" for k, c, m in incompatible.incorrect_shapes
        ]
        problems += [f"{k}: missing from the checkpoint" for k in missing]
        problems += [f"{k}: not in the model" for k in incompatible.unexpected_keys]
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise CheckpointMismatchError(
                f"Checkpoint {getattr(self, '_loading_path', '')!r} does not fit the configured network "
                f"(check MODEL.BACKBONE.NAME, MODEL.NECK.NAME, INPUT.SIZE, MODEL.MUTUAL_GUIDE.NUM_CLASSES):\n  "
                f"{shown}{more}"
            )
        return incompatible
