"""Exporting a trained model for serving and deployment: uint8 images in, probabilities and
classes out, the run's preprocessing inside, every file checked in its own runtime.

* `resnet.export.serving`: `export_for_serving`, what an export writes and how it is checked.
* `resnet.export.deploy`: the serving graph, its TFLite and ONNX conversions, and the runners
  that load each file in its runtime.
* `resnet.export.placement`: where an export goes: `--output` checked, built beside it, swapped in.
* `python -m resnet.export` (`resnet-export`): the binary.
"""

from resnet.export.deploy import FORMATS, QUANTIZATIONS, ExportError
from resnet.export.placement import check_output
from resnet.export.serving import export_for_serving

__all__ = ["FORMATS", "QUANTIZATIONS", "ExportError", "check_output", "export_for_serving"]
