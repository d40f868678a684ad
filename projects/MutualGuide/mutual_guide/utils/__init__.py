"""Helpers every layer may use: atomic writes, event scalars, drawing, detectron2's private names, the oracle."""
