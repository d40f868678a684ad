"""Running the detector: the Trainer, the set-up of a run from the command line, the predictor."""
from mutual_guide.engine.defaults import argument_parser, setup
from mutual_guide.engine.predictor import MutualGuidePredictor
from mutual_guide.engine.trainer import Trainer

__all__ = ["MutualGuidePredictor", "Trainer", "argument_parser", "setup"]
