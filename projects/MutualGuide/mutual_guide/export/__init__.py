"""TorchScript and ONNX export of the detector, with or without its test-time selection (NMS)."""
from mutual_guide.export.exportable import (
    NMS_OUTPUT_NAMES,
    OUTPUT_NAMES,
    DetectorWithNMS,
    ExportableDetector,
    add_nms,
    export_onnx,
    export_torchscript,
    prepare_for_export,
)

__all__ = [
    "DetectorWithNMS",
    "ExportableDetector",
    "NMS_OUTPUT_NAMES",
    "OUTPUT_NAMES",
    "add_nms",
    "export_onnx",
    "export_torchscript",
    "prepare_for_export",
]
