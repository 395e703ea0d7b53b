"""Fine-tuning: the pretrained weights a run starts from, and freezing parts of the model.

`Trainer.initial_weights = @PretrainedWeights()` loads published weights by name
(`resnet.pretrained`) or keras.applications or torchvision / timm files (through
`resnet.interop`) when a run starts; `Trainer.freeze_stages` calls `freeze`.
"""

from __future__ import annotations

import dataclasses
import os

import gin

from resnet.interop import LoadReport, load_keras_applications_weights, load_torch_state_dict
from resnet.model import ResNet
from resnet.pretrained import load_weights
from resnet.pretrained.table import entry

FORMATS = ("auto", "keras", "torch")


@gin.configurable(module="resnet")
@dataclasses.dataclass
class PretrainedWeights:
    """Weights a training run starts from (bind `Trainer.initial_weights = @PretrainedWeights()`).

    Give either `name`, published weights of `resnet.available_weights()` (downloaded once into
    a cache and checked against their publisher's hash; see `resnet.pretrained`), or `path`, a
    local file.

    Args:
        path: A weights file.
        format: For `path`: "keras" (keras.applications `.h5` / `.weights.h5`), "torch" (`.npz`,
            `.safetensors`, `.pth`, `.pt`, `.bin`), or "auto" (from the file name).
        skip_classifier: Do not load the classifier (fine-tuning to other classes).
        name: Published weights, e.g. "resnet50.tv2_in1k".
        cache_dir: Where named weights are cached (default: `$RESNET_WEIGHTS_DIR`, else
            `~/.keras/resnet-weights`).

    Example:

    >>> PretrainedWeights(name="resnet50.tv2_in1k", skip_classifier=True)  # `@PretrainedWeights()`
    PretrainedWeights(path=None, format='auto', skip_classifier=True, name='resnet50.tv2_in1k', cache_dir=None)
    """

    path: str | None = None
    format: str = "auto"
    skip_classifier: bool = False
    name: str | None = None
    cache_dir: str | None = None

    def __post_init__(self):
        if (self.path is None) == (self.name is None):
            raise ValueError(
                "`PretrainedWeights` needs exactly one of `name` (published weights, see "
                f"resnet.available_weights()) and `path` (a file); received name={self.name!r}, path={self.path!r}."
            )
        if self.path is not None:
            self.path = os.path.expanduser(str(self.path))
        else:
            entry(self.name)  # an unknown name fails when the config is read, not after the model is built
        if self.format not in FORMATS:
            raise ValueError(f"`PretrainedWeights.format` must be one of {FORMATS}; received {self.format!r}.")

    def load_into(self, model: ResNet) -> LoadReport:
        """Loads the weights into `model` with the loader of their format; see `resnet.interop`."""
        if self.name is not None:
            return load_weights(model, self.name, self.skip_classifier, self.cache_dir)
        kind = self.format
        if kind == "auto":
            kind = "keras" if str(self.path).lower().endswith(".h5") else "torch"
        if kind == "keras":
            return load_keras_applications_weights(model, self.path, self.skip_classifier)
        return load_torch_state_dict(model, self.path, self.skip_classifier)


def freeze(model: ResNet, stages: int, stem: bool = True, argument: str = "stages") -> None:
    """Makes the stem (if `stem`) and the first `stages` stages non-trainable.

    Their batch norms then also run in inference mode (Keras semantics of `trainable=False`).
    Errors name `stages` as `argument` (the trainer's is "Trainer.freeze_stages").

    Example:

    >>> import resnet
    >>> model = resnet.build("cifar/resnet20")
    >>> freeze(model, stages=2)
    >>> [model.get_layer(n).trainable for n in ("stem", "stage1", "stage2", "stage3")]
    [False, False, False, True]
    """
    count = len(model.stage_blocks)
    if isinstance(stages, bool) or not isinstance(stages, int) or not 0 <= stages <= count:
        raise ValueError(
            f"`{argument}` must be an integer in [0, {count}] (the model has {count} stages); received {stages!r}."
        )
    if stem:
        model.get_layer("stem").trainable = False
    for i in range(1, stages + 1):
        model.get_layer(f"stage{i}").trainable = False


def with_frozen_batch_norm(model: ResNet) -> ResNet:
    """A copy of `model` whose batch norms are `FrozenBatchNorm`, with the same weights.

    Equivalent to building with `ResNet.norm = 'frozen_batch'` (the gin way) and loading the
    weights.
    """
    config = model.get_config()

    def swap(value):
        if isinstance(value, dict):
            if value.get("class_name") in ("BatchNorm", "SyncBatchNorm"):
                return {"class_name": "FrozenBatchNorm", "config": {**value["config"], "synchronized": False}}
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    frozen = ResNet.from_config(swap(config))
    frozen.set_weights(model.get_weights())
    return frozen
