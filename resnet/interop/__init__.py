"""Loading keras.applications and PyTorch (torchvision / timm) weights with the same numerics.

One module per ecosystem, both ending in the same strict loader (`resnet.interop.core`): every
variable of the model must receive a tensor of the right shape and every tensor of the source
must be used, else nothing is loaded and a `ValueError` lists the names involved.
`skip_classifier=True` loads everything but the classifier (for fine-tuning with another number
of classes) and reports what it skipped.

* `load_keras_applications_weights(model, source)` (`resnet.interop.keras_applications`): from a
  built `keras.applications.ResNet50/101/152` or `ResNet50V2/101V2/152V2`, or a path to its
  `.h5` or `.weights.h5` file, into the `keras_resnet*` configs.
* `load_torch_state_dict(model, state_dict)` (`resnet.interop.pytorch`): from a mapping of torch
  parameter and buffer names to arrays, or a `.npz` / `.safetensors` file of them, or a file
  written by `torch.save` (torchvision's `.pth`, timm's `pytorch_model.bin`), into the configs
  named after torchvision / timm models. No loader needs torch or ever unpickles arbitrary
  objects: `torch.save` files are read by `read_torch_file(path)` (`resnet.interop.torch_file`),
  which resolves only the globals of a state dict and runs no code of the file.

Both of `torch.save`'s formats are read: its zip archive (torch >= 1.6) and its legacy format
(torch < 1.6, or `_use_new_zipfile_serialization=False`), in which the weights published before
torch 1.6 (July 2020) were saved.

Starting a training run from such weights, and freezing parts of the model, is training's
business: see `resnet.training.finetune`.
"""

from resnet.interop.core import LoadReport
from resnet.interop.keras_applications import load_keras_applications_weights
from resnet.interop.pytorch import load_torch_state_dict
from resnet.interop.torch_file import read_torch_file

__all__ = ["LoadReport", "load_keras_applications_weights", "load_torch_state_dict", "read_torch_file"]
