"""Exporting a trained model for serving and deployment: uint8 images in, probabilities and
classes out, the run's preprocessing inside, every file checked in its own runtime.

* `resnet.export.serving`: `export_for_serving`, what an export writes and how it is checked.
* `resnet.export.deploy`: the serving graph, its TFLite and ONNX conversions, and the runners
  that load each file in its runtime.
* `resnet.export.placement`: where an export goes: `--output` checked, built beside it, swapped in.
* `python -m resnet.export` (`resnet-export`): the binary.

The package itself imports nothing: `python -m resnet.export` imports it before `__main__`,
whose first line must run before TensorFlow is imported (see `resnet._startup`).
"""
