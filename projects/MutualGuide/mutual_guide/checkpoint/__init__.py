"""Weights: state-dict helpers (a leaf), the authors' key names, and the checkpointer."""
from mutual_guide.checkpoint.checkpointer import MutualGuideCheckpointer
from mutual_guide.checkpoint.paper_keys import convert_paper_state_dict, to_paper_state_dict
from mutual_guide.checkpoint.state_dict import CheckpointMismatchError, check_state_dict_fits, unwrap_state_dict

__all__ = [
    "CheckpointMismatchError",
    "MutualGuideCheckpointer",
    "check_state_dict_fits",
    "convert_paper_state_dict",
    "to_paper_state_dict",
    "unwrap_state_dict",
]
