"""`ResNet`: stem, residual stages and head as one functional Keras model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from resnet.layers.activations import serialize_activation
from resnet.layers.conv import DEFAULT_KERNEL_INITIALIZER, conv_settings
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
from resnet.validation import check_choice, check_int, check_int_sequence, check_rate

OUTPUT_STRIDES = (None, 8, 16, 32)
POOLINGS = ("avg", "max", None)


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
    for num, stage_stride in zip(stage_blocks, stage_strides):
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
        kernel_regularizer: Conv kernel regularizer.
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
        stage_blocks = check_int_sequence("ResNet.stage_blocks", stage_blocks)
        n = len(stage_blocks)
        if n == 0:
            raise ValueError("`ResNet.stage_blocks` must list at least one stage; received ().")
        stage_filters = check_int_sequence("ResNet.stage_filters", stage_filters, length=n)
        stage_strides = check_int_sequence("ResNet.stage_strides", stage_strides, length=n)
        check_choice("ResNet.downsample_block", downsample_block, DOWNSAMPLE_BLOCKS)
        if isinstance(width_multiplier, bool) or not isinstance(width_multiplier, (int, float)) or width_multiplier <= 0:
            raise ValueError(f"`ResNet.width_multiplier` must be a positive number; received {width_multiplier!r}.")
        check_choice("ResNet.output_stride", output_stride, OUTPUT_STRIDES)
        check_rate("ResNet.drop_path_rate", drop_path_rate)
        check_rate("ResNet.dropout_rate", dropout_rate)
        check_choice("ResNet.pooling", pooling, POOLINGS)
        if include_top and pooling is None:
            raise ValueError("`ResNet.pooling` must be 'avg' or 'max' when `include_top` is True; received None.")
        if include_top:
            check_int("ResNet.num_classes", num_classes)
        input_shape = self._check_input_shape(input_shape)
        classifier_activation = serialize_activation(classifier_activation, "ResNet.classifier_activation")
        policy = keras.dtype_policies.get(dtype) if dtype is not None else keras.config.dtype_policy()

        norm_spec = resolve_spec("norm", norm, "ResNet.norm")
        shared_settings = dict(
            conv_settings(padding, use_bias, kernel_initializer, kernel_regularizer),
            activation=serialize_activation(activation, "ResNet.activation"),
        )
        block_spec = resolve_spec(
            "block", block, "ResNet.block", overrides=dict(shared_settings, norm=norm_spec, preact=bool(preact)), owner="ResNet"
        )
        stem_overrides = dict(shared_settings, norm=None, activation=None) if preact else dict(shared_settings, norm=norm_spec)
        stem_spec = resolve_spec("stem", stem, "ResNet.stem", overrides=stem_overrides, owner="ResNet")
        stem_layer = build_from_spec("stem", stem_spec, name="stem", dtype=policy)
        if output_stride is not None and output_stride < stem_layer.stride:
            raise ValueError(
                f"`ResNet.output_stride`={output_stride} is smaller than the stride of the stem "
                f"({stem_layer.stride}); use a value in {OUTPUT_STRIDES[1:]} of at least {stem_layer.stride}."
            )

        check_unbound(ResidualStage, constructor_parameters(ResidualStage), "ResNet")
        plan = _plan_stages(stem_layer.stride, stage_blocks, stage_strides, output_stride, drop_path_rate)
        stages, feature_strides = [], {}
        for i, (num, filters, (stage_args, stride)) in enumerate(zip(stage_blocks, stage_filters, plan)):
            stages.append(
                ResidualStage(
                    block_spec,
                    num_blocks=num,
                    filters=max(1, round(filters * width_multiplier)),
                    downsample_block=downsample_block,
                    name=f"stage{i + 1}",
                    dtype=policy,
                    **stage_args,
                )
            )
            # A stage whose last block downsamples has its feature map before that block.
            downsamples_last = stages[-1].feature_block < num - 1
            feature_strides[f"C{i + 2}"] = stride // stage_args["strides"] if downsamples_last else stride
        self._min_size = stride
        if any(dim is not None and dim < stride for dim in input_shape[:2]):
            raise ValueError(
                f"`ResNet.input_shape`={tuple(input_shape)} is too small for this network: height and "
                f"width must be at least its total stride, {stride}."
            )

        inputs = keras.Input(shape=tuple(input_shape), name="images")
        # The main path (x) and the feature path (f) share nodes until a stage whose feature map
        # lies inside it (stride on its last block); from there the feature path has its own.
        x = f = stem_layer(inputs)
        features = {}
        for key, stage in zip(feature_strides, stages):
            shared = f is x
            x = stage(x)
            if stage.feature_block == stage.num_blocks - 1:
                f = x if shared else stage(f)
                features[key] = f
            else:
                features[key] = stage(f, part="head")
                f = stage(features[key], part="tail")
        if preact:
            post_norm = make_norm(norm_spec, "post_norm", policy)
            post_act = keras.layers.Activation(shared_settings["activation"] or "linear", name="post_act", dtype=policy)

            def post(t):
                return post_act(post_norm(t) if post_norm is not None else t)

            shared = f is x
            x = post(x)
            f = x if shared else post(f)
            features[next(reversed(features))] = f
        if include_top or pooling:
            pool_cls = keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.GlobalMaxPooling2D
            x = pool_cls(name="pool", dtype=policy)(x)
        if include_top:
            if dropout_rate:
                x = keras.layers.Dropout(dropout_rate, name="dropout", dtype=policy)(x)
            x = keras.layers.Dense(num_classes, activation=classifier_activation, name="classifier", dtype="float32")(x)
        super().__init__(inputs=inputs, outputs=x, name=name, dtype=policy, trainable=trainable)
        # Inputs are checked in `call` with messages that name this model's settings.
        self.input_spec = None

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
        # Shares this model's layers; kept out of Keras' tracking so weights are not counted twice.
        object.__setattr__(self, "_feature_model", keras.Model(inputs, features, name=f"{name}_features"))

    @staticmethod
    def _check_input_shape(input_shape: Any) -> tuple:
        if not isinstance(input_shape, Sequence) or len(input_shape) != 3:
            raise ValueError(
                f"`ResNet.input_shape` must be (height, width, channels); received {input_shape!r}."
            )
        height, width, channels = input_shape
        check_int("ResNet.input_shape channels", channels)
        for dim in (height, width):
            if dim is not None:
                check_int("ResNet.input_shape height/width", dim)
        return tuple(input_shape)

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
        for axis, dim, want in zip(("height", "width"), shape[1:3], expected[:2]):
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

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects=None) -> "ResNet":
        return cls(**config)

