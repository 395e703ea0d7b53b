"""`ResNet`: stem, residual stages and head as one functional Keras model."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from resnet.layers.activations import serialize_activation
from resnet.layers.conv import DEFAULT_KERNEL_INITIALIZER, check_conv_settings
from resnet.layers.normalization import make_norm
from resnet.registry import (
    ArgsConfigMixin,
    build_from_spec,
    check_unbound,
    constructor_parameters,
    register,
    resolve_spec,
)
from resnet.stage import DOWNSAMPLE_BLOCKS, ResidualStage
from resnet.validation import check_choice, check_int, check_int_sequence, check_rate, listing

OUTPUT_STRIDES = (None, 8, 16, 32)
POOLINGS = ("avg", "max", None)
# The record of every weight's path and shape that a ResNet adds to the weights it saves.
LAYOUT_KEY = "weights_layout"


def _check_stage_layout(
    stage_blocks: Sequence[int], stage_filters: Sequence[int], stage_strides: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    stage_blocks = check_int_sequence("ResNet.stage_blocks", stage_blocks)
    if not stage_blocks:
        raise ValueError("`ResNet.stage_blocks` must list at least one stage; received ().")
    n = len(stage_blocks)
    stage_filters = check_int_sequence("ResNet.stage_filters", stage_filters, length=n)
    stage_strides = check_int_sequence("ResNet.stage_strides", stage_strides, length=n)
    return stage_blocks, stage_filters, stage_strides


def _check_options(
    downsample_block: str, width_multiplier: float, output_stride: int | None, drop_path_rate: float
) -> None:
    check_choice("ResNet.downsample_block", downsample_block, DOWNSAMPLE_BLOCKS)
    if isinstance(width_multiplier, bool) or not isinstance(width_multiplier, (int, float)) or width_multiplier <= 0:
        raise ValueError(f"`ResNet.width_multiplier` must be a positive number; received {width_multiplier!r}.")
    check_choice("ResNet.output_stride", output_stride, OUTPUT_STRIDES)
    check_rate("ResNet.drop_path_rate", drop_path_rate)


def _check_head(include_top: bool, pooling: str | None, dropout_rate: float, num_classes: int) -> None:
    check_rate("ResNet.dropout_rate", dropout_rate)
    check_choice("ResNet.pooling", pooling, POOLINGS)
    if include_top and pooling is None:
        raise ValueError("`ResNet.pooling` must be 'avg' or 'max' when `include_top` is True; received None.")
    if include_top:
        check_int("ResNet.num_classes", num_classes)


def _check_input_shape(input_shape: Any) -> tuple:
    if not isinstance(input_shape, Sequence) or len(input_shape) != 3:
        raise ValueError(f"`ResNet.input_shape` must be (height, width, channels); received {input_shape!r}.")
    height, width, channels = input_shape
    check_int("ResNet.input_shape channels", channels)
    for dim in (height, width):
        if dim is not None:
            check_int("ResNet.input_shape height/width", dim)
    return tuple(input_shape)


def _resolve_block_and_stem(
    block: Any, stem: Any, norm_spec: dict | None, shared_settings: dict[str, Any], preact: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The block and stem specs, with the network-wide settings imposed on them.

    A pre-activation stem is a bare conv: its norm and activation come first in the blocks.
    A spec that gives one of these settings another value (an edited config) is refused.
    """
    block_spec = resolve_spec(
        "block", block, "ResNet.block", overrides=dict(shared_settings, norm=norm_spec, preact=preact), owner="ResNet"
    )
    bare = "`ResNet.preact` is True: the stem is a bare conv"
    stem_overrides = dict(shared_settings, **(dict(norm=None, activation=None) if preact else dict(norm=norm_spec)))
    stem_spec = resolve_spec(
        "stem",
        stem,
        "ResNet.stem",
        overrides=stem_overrides,
        owner="ResNet",
        hints=dict(norm=bare, activation=bare) if preact else None,
    )
    return block_spec, stem_spec


def _check_output_stride(output_stride: int | None, stem_stride: int) -> None:
    if output_stride is not None and output_stride < stem_stride:
        raise ValueError(
            f"`ResNet.output_stride`={output_stride} is smaller than the stride of the stem "
            f"({stem_stride}); use a value in {OUTPUT_STRIDES[1:]} of at least {stem_stride}."
        )


def _check_fits(input_shape: tuple, total_stride: int) -> None:
    if any(dim is not None and dim < total_stride for dim in input_shape[:2]):
        raise ValueError(
            f"`ResNet.input_shape`={tuple(input_shape)} is too small for this network: height and "
            f"width must be at least its total stride, {total_stride}."
        )


def _plan_stages(
    stem_stride: int,
    stage_blocks: Sequence[int],
    stage_strides: Sequence[int],
    output_stride: int | None,
    drop_path_rate: float,
) -> list[tuple[dict[str, Any], int]]:
    """For each stage: its `ResidualStage` strides, dilations and drop-path rates, and the
    network's stride after it.

    Once the stride would exceed `output_stride`, stages dilate instead of striding; the first
    dilated block keeps the previous dilation at its strided position (timm's rule). Drop-path
    rates grow linearly from 0 at the first block to `drop_path_rate` at the last.
    """
    total_blocks = sum(stage_blocks)
    stride, dilation, first_block = stem_stride, 1, 0
    plan = []
    for num, stage_stride in zip(stage_blocks, stage_strides, strict=True):
        first_dilation = dilation
        if output_stride is not None and stride * stage_stride > output_stride:
            dilation *= stage_stride
            stage_stride = 1
        stride *= stage_stride
        rates = [drop_path_rate * (first_block + j) / max(total_blocks - 1, 1) for j in range(num)]
        first_block += num
        stage = dict(strides=stage_stride, dilation=dilation, first_dilation=first_dilation, drop_path_rates=rates)
        plan.append((stage, stride))
    return plan


def _make_stages(
    block_spec: dict[str, Any],
    stem_stride: int,
    stage_blocks: Sequence[int],
    stage_filters: Sequence[int],
    stage_strides: Sequence[int],
    downsample_block: str,
    output_stride: int | None,
    drop_path_rate: float,
    policy: Any,
) -> tuple[list[ResidualStage], dict[str, int]]:
    """The stages `stage1`, ... and the stride of each one's feature map, keyed "C2", "C3", ..."""
    check_unbound(ResidualStage, constructor_parameters(ResidualStage), "ResNet")
    plan = _plan_stages(stem_stride, stage_blocks, stage_strides, output_stride, drop_path_rate)
    stages, feature_strides = [], {}
    for i, (num, filters, (stage_args, stride)) in enumerate(zip(stage_blocks, stage_filters, plan, strict=True)):
        stage = ResidualStage(
            block_spec,
            num_blocks=num,
            filters=filters,
            downsample_block=downsample_block,
            name=f"stage{i + 1}",
            dtype=policy,
            **stage_args,
        )
        stages.append(stage)
        feature_strides[f"C{i + 2}"] = stride // stage.strides if stage.downsamples_at_end else stride
    return stages, feature_strides


def _apply_stages(x: Any, stages: Sequence[ResidualStage]) -> tuple[Any, dict[str, Any]]:
    """Runs `stages` on `x`; returns their output and each stage's feature map, keyed "C2", ...

    A stage whose last block downsamples returns its feature map beside its output, so every
    feature is a tensor of the one graph whichever block carries a stage's stride.
    """
    features = {}
    for i, stage in enumerate(stages):
        key = f"C{i + 2}"
        if stage.downsamples_at_end:
            features[key], x = stage(x, return_feature=True)
        else:
            x = features[key] = stage(x)
    return x, features


def _apply_post_activation(
    x: Any, features: dict[str, Any], norm_spec: dict | None, activation: Any, policy: Any
) -> Any:
    """The final norm + activation of a pre-activation network, on the output and on the last
    feature map (the same tensor unless the last stage's last block downsamples)."""
    norm = make_norm(norm_spec, "post_norm", policy)
    act = keras.layers.Activation(activation or "linear", name="post_act", dtype=policy)

    def post(t):
        return act(norm(t) if norm is not None else t)

    last = f"C{len(features) + 1}"
    feature_is_output = features[last] is x
    x = post(x)
    features[last] = x if feature_is_output else post(features[last])
    return x


def _apply_head(
    x: Any,
    include_top: bool,
    pooling: str | None,
    dropout_rate: float,
    num_classes: int,
    classifier_activation: Any,
    policy: Any,
) -> Any:
    if include_top or pooling:
        pool_cls = keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.GlobalMaxPooling2D
        x = pool_cls(name="pool", dtype=policy)(x)
    if include_top:
        if dropout_rate:
            x = keras.layers.Dropout(dropout_rate, name="dropout", dtype=policy)(x)
        # float32 whatever the policy: the logits and softmax of a mixed-precision network.
        x = keras.layers.Dense(num_classes, activation=classifier_activation, name="classifier", dtype="float32")(x)
    return x


def _weights_layout(model: keras.Model) -> dict[str, list[int]]:
    """Path -> shape of every weight of a ResNet, the paths relative to the model.

    Paths start with the name scope the model was built in, if any (`backbone/stem/conv1/kernel`),
    and a reloaded model is built in none. The stem and the first stage both have weights, so the
    paths' common part ends exactly there.
    """
    paths = [variable.path for variable in model.weights]
    prefix = os.path.commonprefix(paths)
    prefix = prefix[: prefix.rfind("/") + 1]
    return {variable.path[len(prefix) :]: [int(d) for d in variable.shape] for variable in model.weights}


def _check_layout(name: str, saved: dict[str, list[int]], rebuilt: dict[str, list[int]]) -> None:
    """Raises unless the weights recorded in a file are those of the rebuilt model, by path and shape."""
    extra = sorted(set(saved) - set(rebuilt))
    missing = sorted(set(rebuilt) - set(saved))
    reshaped = sorted(path for path in set(saved) & set(rebuilt) if saved[path] != rebuilt[path])
    problems = []
    if extra:
        problems.append(f"the file holds {listing(extra)}, which {name!r} has no place for")
    if missing:
        problems.append(f"{name!r} has {listing(missing)}, which the file lacks")
    if reshaped:
        problems.append(
            "shapes differ: "
            + listing(
                [f"{path} {tuple(saved[path])} in the file, {tuple(rebuilt[path])} in the model" for path in reshaped]
            )
        )
    if problems:
        raise ValueError(
            f"The weights in the file do not fit {name!r} as its config builds it (was the config edited?); "
            "the file is refused rather than loaded in part: " + "; ".join(problems) + "."
        )


@register()
class ResNet(ArgsConfigMixin, keras.Model):
    """A residual network: stem, `len(stage_blocks)` residual stages, and a classifier head.

    It is a functional Keras model, so `summary()`, `plot_model` and feature taps work as for
    any functional model. Every argument is bindable in gin (`ResNet.stage_blocks = (3, 4, 6, 3)`);
    the shipped configs (`resnet.available_configs()`) are gin files that set them.

    Network-wide settings (`norm`, `activation`, `preact`, `padding`, `use_bias`,
    `kernel_initializer`, `kernel_regularizer`) are passed to the stem, every block and every
    shortcut; bind them here, not on the block class. Block-specific settings (`groups`,
    `base_width`, `stride_on`, `se_ratio`, `zero_init_last`, `shortcut`) are arguments of the
    block class: `BottleneckBlock.groups = 32`.

    Args:
        block: Block spec: "bottleneck", "basic", a block class, or a spec dict.
        stage_blocks: Blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
        stage_filters: Width (`filters`) of each stage's blocks.
        stage_strides: Stride of each stage.
        downsample_block: Which block of a stage carries its stride, "first" or "last".
        stem: Stem spec: "classic", "deep", "cifar", a stem class, or a spec dict.
        width_multiplier: Scales every stage width (wide ResNets of Zagoruyko & Komodakis).
        output_stride: 8, 16 or 32 to replace the strides beyond it by dilation (for dense
            prediction); None keeps the network's own stride.
        drop_path_rate: Stochastic depth rate of the last block; block i of n gets
            `drop_path_rate * i / (n - 1)`.
        preact: Pre-activation network (He et al., 2016b): bare conv stem, pre-activation
            blocks, and a final norm + activation after the last stage.
        norm: Norm spec for every norm layer: "batch", "sync_batch", "group", "layer",
            "frozen_batch", "none", a norm class or a spec dict.
        activation: Activation name or function.
        padding: "symmetric" (PyTorch, default) or "same" (TensorFlow).
        use_bias: Conv bias: True, False, or "auto" (only on convs no norm follows).
        kernel_initializer: Conv kernel initializer (default: torchvision's He normal, fan out).
        kernel_regularizer: Conv kernel regularizer, for training with Keras' `fit`; the
            trainer refuses it (its weight decay is `Trainer.weight_decay`).
        include_top: Whether to add the pooling + classifier head.
        pooling: Global pooling, "avg" or "max"; without the top, None returns the C5 map.
        dropout_rate: Dropout before the classifier.
        num_classes: Classifier outputs.
        classifier_activation: Activation of the classifier (None: logits). The classifier
            computes in float32 under mixed precision.
        input_shape: `(height, width, channels)`; heights and widths may be None.
        name: Model name.
        dtype: Dtype policy, e.g. "mixed_bfloat16"; defaults to the global policy.

    Example:

    >>> model = ResNet("basic", stage_blocks=(2, 2, 2, 2), num_classes=10)
    >>> tuple(model(keras.ops.ones((1, 64, 64, 3))).shape)
    (1, 10)
    >>> {k: tuple(v.shape) for k, v in model.extract_features(keras.ops.ones((1, 64, 64, 3))).items()}
    {'C2': (1, 16, 16, 64), 'C3': (1, 8, 8, 128), 'C4': (1, 4, 4, 256), 'C5': (1, 2, 2, 512)}
    """

    def __init__(
        self,
        block: Any = "bottleneck",
        stage_blocks: Sequence[int] = (3, 4, 6, 3),
        stage_filters: Sequence[int] = (64, 128, 256, 512),
        stage_strides: Sequence[int] = (1, 2, 2, 2),
        downsample_block: str = "first",
        stem: Any = "classic",
        width_multiplier: float = 1.0,
        output_stride: int | None = None,
        drop_path_rate: float = 0.0,
        preact: bool = False,
        norm: Any = "batch",
        activation: Any = "relu",
        padding: str = "symmetric",
        use_bias: bool | str = False,
        kernel_initializer: Any = DEFAULT_KERNEL_INITIALIZER,
        kernel_regularizer: Any = None,
        include_top: bool = True,
        pooling: str | None = "avg",
        dropout_rate: float = 0.0,
        num_classes: int = 1000,
        classifier_activation: Any = None,
        input_shape: Sequence[int | None] = (None, None, 3),
        name: str = "resnet",
        dtype: Any = None,
        trainable: bool = True,
    ):
        stage_blocks, stage_filters, stage_strides = _check_stage_layout(stage_blocks, stage_filters, stage_strides)
        _check_options(downsample_block, width_multiplier, output_stride, drop_path_rate)
        _check_head(include_top, pooling, dropout_rate, num_classes)
        input_shape = _check_input_shape(input_shape)
        classifier_activation = serialize_activation(classifier_activation, "ResNet.classifier_activation")
        policy = keras.dtype_policies.get(dtype) if dtype is not None else keras.config.dtype_policy()
        norm_spec = resolve_spec("norm", norm, "ResNet.norm")
        shared_settings = dict(
            check_conv_settings(padding, use_bias, kernel_initializer, kernel_regularizer),
            activation=serialize_activation(activation, "ResNet.activation"),
        )
        block_spec, stem_spec = _resolve_block_and_stem(block, stem, norm_spec, shared_settings, bool(preact))

        stem_layer = build_from_spec("stem", stem_spec, name="stem", dtype=policy)
        _check_output_stride(output_stride, stem_layer.stride)
        widths = [max(1, round(filters * width_multiplier)) for filters in stage_filters]
        stages, feature_strides = _make_stages(
            block_spec,
            stem_layer.stride,
            stage_blocks,
            widths,
            stage_strides,
            downsample_block,
            output_stride,
            drop_path_rate,
            policy,
        )
        total_stride = stem_layer.stride * math.prod(stage.strides for stage in stages)
        _check_fits(input_shape, total_stride)

        inputs = keras.Input(shape=input_shape, name="images")
        x, features = _apply_stages(stem_layer(inputs), stages)
        if preact:
            x = _apply_post_activation(x, features, norm_spec, shared_settings["activation"], policy)
        outputs = _apply_head(x, include_top, pooling, dropout_rate, num_classes, classifier_activation, policy)
        super().__init__(inputs=inputs, outputs=outputs, name=name, dtype=policy, trainable=trainable)
        # Inputs are checked in `call` with messages that name this model's settings.
        self.input_spec = None
        self._min_size = total_stride
        # The feature maps are tensors of the graph above; this model evaluates them.
        self._feature_model = keras.Model(inputs, features, name=f"{name}_features")

        self.block = block_spec
        self.stage_blocks = stage_blocks
        self.stage_filters = stage_filters
        self.stage_strides = stage_strides
        self.downsample_block = downsample_block
        self.stem = stem_spec
        self.width_multiplier = width_multiplier
        self.output_stride = output_stride
        self.drop_path_rate = drop_path_rate
        self.preact = bool(preact)
        self.norm = norm_spec
        for setting, value in shared_settings.items():
            setattr(self, setting, value)
        self.include_top = bool(include_top)
        self.pooling = pooling
        self.dropout_rate = dropout_rate
        self.num_classes = num_classes
        self.classifier_activation = classifier_activation
        self.image_shape = input_shape
        self.feature_strides = feature_strides

    def _check_images(self, images: Any) -> None:
        shape = tuple(images.shape)
        expected = self.image_shape
        if len(shape) != 4:
            raise ValueError(
                f"{self.name} takes a batch of images (batch, height, width, {expected[2]}); "
                f"received a tensor of shape {shape}."
            )
        if shape[3] is not None and shape[3] != expected[2]:
            raise ValueError(
                f"{self.name} expects images with {expected[2]} channels (input_shape={expected}); "
                f"received shape {shape}."
            )
        for axis, dim, want in zip(("height", "width"), shape[1:3], expected[:2], strict=True):
            if dim is None:
                continue
            if want is not None and dim != want:
                raise ValueError(
                    f"{self.name} was built for input_shape={expected}; received images of shape "
                    f"{shape}. Build it with input_shape=(None, None, {expected[2]}) for any size."
                )
            if dim < self._min_size:
                raise ValueError(
                    f"{self.name} needs images of at least {self._min_size}x{self._min_size} (its "
                    f"total stride); received {axis} {dim} in shape {shape}."
                )

    def call(self, inputs, training=None, mask=None):
        self._check_images(inputs)
        return super().call(inputs, training=training, mask=mask)

    def extract_features(self, images: Any, training: bool = False) -> dict[str, Any]:
        """Returns the feature maps of every stage, keyed `"C2"`, `"C3"`, ... (paper's conv2_x, ...).

        Each is the stage's output at its own resolution (for a stage whose last block
        downsamples, the input of that block); for pre-activation networks the last one is
        after the final norm and activation. `feature_strides` gives their strides; for the
        ImageNet networks they are 4, 8, 16, 32 (capped by `output_stride`).
        """
        self._check_images(images)
        return self._feature_model(images, training=training)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["input_shape"] = list(self.image_shape)
        return config

    def save_own_variables(self, store) -> None:
        """Saves, besides Keras' own state, the path and shape of every weight of the model.

        `load_own_variables`, which Keras calls before it loads any layer, checks them against
        the model being loaded: weights saved from another network (a `.keras` file whose
        config was edited, say `se_ratio` removed) are refused instead of loaded in part.
        """
        super().save_own_variables(store)
        layout = json.dumps(_weights_layout(self), sort_keys=True)
        store[LAYOUT_KEY] = np.frombuffer(layout.encode("utf-8"), dtype=np.uint8)

    def load_own_variables(self, store) -> None:
        """Checks the weights' record (see `save_own_variables`), if the file has one, then loads."""
        keys = list(store.keys())
        if LAYOUT_KEY in keys:
            saved = json.loads(np.asarray(store[LAYOUT_KEY], np.uint8).tobytes().decode("utf-8"))
            _check_layout(self.name, saved, _weights_layout(self))
        super().load_own_variables({key: store[key] for key in keys if key != LAYOUT_KEY})

    def load_weights(self, filepath, skip_mismatch: bool = False, **kwargs) -> None:
        """`keras.Model.load_weights`, all or nothing.

        Keras loads every part of a file that fits before it raises about the others; here a
        file that is refused leaves every weight as it was.
        """
        before = [variable.numpy() for variable in self.weights]
        try:
            super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
        except Exception:
            for variable, value in zip(self.weights, before, strict=True):
                variable.assign(value)
            raise

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects=None) -> ResNet:
        return cls(**config)
