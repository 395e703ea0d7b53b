"""ResNet: features, summary, head options, dilation, stochastic depth, precision, bad input."""

import keras
import numpy as np
import pytest

import resnet
from conftest import images, trainable_count


@pytest.fixture(scope="module")
def resnet50():
    return resnet.build("resnet50", ["ResNet.input_shape = (224, 224, 3)"])


def test_features_have_pyramid_shapes_and_strides(resnet50):
    features = resnet50.extract_features(images(batch=1, size=224))
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        "C2": (1, 56, 56, 256),
        "C3": (1, 28, 28, 512),
        "C4": (1, 14, 14, 1024),
        "C5": (1, 7, 7, 2048),
    }
    assert resnet50.feature_strides == {"C2": 4, "C3": 8, "C4": 16, "C5": 32}


def test_c5_is_the_input_of_the_head(resnet50):
    x = images(batch=1, size=224)
    c5 = np.asarray(resnet50.extract_features(x)["C5"])
    head = resnet50.get_layer("classifier")
    logits = np.asarray(head(np.mean(c5, axis=(1, 2))))
    expected = np.asarray(resnet50(x))
    # float32 sums of 2048 terms: rounding scales with the largest logits (about 100 here).
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def test_features_of_last_block_downsampling_layout_keep_pyramid_strides():
    model = resnet.build("keras_resnet50_v2")
    features = model.extract_features(images(batch=1, size=64))
    assert {k: tuple(v.shape)[1:3] for k, v in features.items()} == {
        "C2": (16, 16),
        "C3": (8, 8),
        "C4": (4, 4),
        "C5": (2, 2),
    }
    # C5 of a pre-activation network is after the final norm + ReLU, as the head sees it.
    assert float(np.min(features["C5"])) >= 0.0


@pytest.mark.parametrize(
    "bindings",
    [
        ["ResNet.downsample_block = 'last'", "ResNet.stage_strides = (2, 2, 2, 1)"],
        ["ResNet.downsample_block = 'last'", "ResNet.output_stride = 16"],
        # The last stage downsamples in its last block: C5 is that block's input, after the final norm.
        ["ResNet.downsample_block = 'last'", "ResNet.preact = True"],
    ],
)
def test_feature_maps_have_the_strides_feature_strides_gives(bindings):
    model = resnet.build("resnet18", bindings)
    features = model.extract_features(images(batch=1, size=64))
    assert {k: 64 // v.shape[1] for k, v in features.items()} == model.feature_strides


def test_stage_returns_its_feature_map_beside_its_output():
    stage = resnet.ResidualStage("basic", num_blocks=3, filters=8, strides=2, downsample_block="last")
    x = images(size=8, channels=8)
    feature, outputs = stage(x, return_feature=True)
    np.testing.assert_array_equal(np.asarray(stage(x)), np.asarray(outputs))
    expected = stage.blocks[1](stage.blocks[0](x))
    np.testing.assert_allclose(np.asarray(feature), np.asarray(expected), rtol=1e-6, atol=1e-6)
    inputs = keras.Input((None, None, 8))
    symbolic_feature, symbolic_outputs = stage(inputs, return_feature=True)
    assert symbolic_feature.shape == (None, None, None, 8) and symbolic_outputs.shape == (None, None, None, 8)


def test_rng_state_paths_are_scoped_and_repeatable():
    def seed_paths():
        model = resnet.build("cifar/resnet20", ["ResNet.drop_path_rate = 0.2"])
        return [v.path for v in model.variables if "seed" in v.path]

    first = seed_paths()
    assert first == seed_paths()  # a second build in the same process names them alike
    assert first[0] == "stage1/block2/drop_path/seed_generator/seed_generator_state" and len(first) == 8


@pytest.mark.parametrize("output_stride, strides", [(16, (4, 8, 16, 16)), (8, (4, 8, 8, 8))])
def test_output_stride_dilates_instead_of_striding(output_stride, strides):
    model = resnet.build("resnet50", [f"ResNet.output_stride = {output_stride}"])
    features = model.extract_features(images(batch=1, size=64))
    assert [64 // v.shape[1] for v in features.values()] == list(strides)
    assert list(model.feature_strides.values()) == list(strides)
    stage4 = model.get_layer("stage4")
    assert stage4.strides == 1 and stage4.dilation == 32 // output_stride
    # timm's rule: the first block keeps the previous dilation at its (former) strided conv.
    assert stage4.blocks[0].convs[1].dilation_rate == (stage4.first_dilation,) * 2
    assert stage4.blocks[1].convs[1].dilation_rate == (stage4.dilation,) * 2
    assert trainable_count(model) == 25_557_032


def test_features_feed_another_functional_model():
    backbone = resnet.build("resnet18", ["ResNet.include_top = False"])
    inputs = keras.Input((64, 64, 3))
    features = backbone.extract_features(inputs)
    merged = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(features[k]) for k in ("C4", "C5")])
    head = keras.Model(inputs, keras.layers.Dense(3)(merged))
    assert head(images(batch=2, size=64)).shape == (2, 3)


def test_summary_lists_stem_stages_and_head_with_counts(resnet50):
    printed = []
    resnet50.summary(print_fn=lambda text, **kwargs: printed.append(text))
    text = "\n".join(printed)
    for row, layer in [
        ("stem (ClassicStem)", "stem"),
        ("stage4 (ResidualStage)", "stage4"),
        ("classifier (Dense)", "classifier"),
    ]:
        line = next(line for line in text.splitlines() if row in line)
        assert f"{resnet50.get_layer(layer).count_params():,}" in line
    assert "(None, 56, 56, 64)" in text and "(None, 7, 7, 2048)" in text
    assert "multiple" not in text and "unbuilt" not in text
    assert "Trainable params: 25,557,032" in text


@pytest.mark.parametrize("pooling, shape", [(None, (2, 2, 2, 512)), ("avg", (2, 512)), ("max", (2, 512))])
def test_headless_outputs(pooling, shape):
    model = resnet.build("resnet18", ["ResNet.include_top = False", f"ResNet.pooling = {pooling!r}"])
    assert tuple(model(images(size=64)).shape) == shape


def test_head_options():
    model = resnet.build(
        "resnet18", ["ResNet.num_classes = 5", "ResNet.dropout_rate = 0.3", "ResNet.classifier_activation = 'softmax'"]
    )
    probabilities = np.asarray(model(images(size=64)))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert model.get_layer("dropout").rate == 0.3


def test_stochastic_depth_grows_linearly_and_acts_only_in_training():
    model = resnet.build("cifar/resnet20", ["ResNet.drop_path_rate = 0.4"])
    rates = [b.drop_path_rate for s in ("stage1", "stage2", "stage3") for b in model.get_layer(s).blocks]
    np.testing.assert_allclose(rates, np.linspace(0.0, 0.4, 9))
    x = images(batch=8)
    first, second = np.asarray(model(x, training=False)), np.asarray(model(x, training=False))
    np.testing.assert_array_equal(first, second)
    without = resnet.build("cifar/resnet20")
    without.set_weights(model.get_weights())
    np.testing.assert_allclose(np.asarray(without(x, training=False)), first, rtol=1e-6, atol=1e-6)
    # Training: the same weights give different outputs from call to call (random drops),
    # also with batch norm taking batch statistics in both.
    a, b = np.asarray(model(x, training=True)), np.asarray(model(x, training=True))
    assert not np.allclose(a, b)
    np.testing.assert_allclose(
        np.asarray(without(x, training=True)), np.asarray(without(x, training=True)), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("policy, compute", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision(policy, compute):
    model = resnet.build("cifar/resnet20", [f"ResNet.dtype = {policy!r}"])
    block = model.get_layer("stage2").blocks[0]
    assert block.convs[0].compute_dtype == compute
    assert block.convs[0].kernel.dtype == "float32"
    assert block.norms[0].dtype_policy.name == policy
    features = model.extract_features(images())
    assert features["C4"].dtype == compute
    logits = model(images())
    assert logits.dtype == "float32"
    assert np.all(np.isfinite(np.asarray(logits)))


def test_global_mixed_policy_is_followed():
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = resnet.build("cifar/resnet20")
    assert model.get_layer("stem").convs[0].compute_dtype == "bfloat16"
    assert model(images()).dtype == "float32"


def test_wrong_channel_count_is_a_clear_error():
    model = resnet.build("resnet18")
    with pytest.raises(ValueError, match=r"expects images with 3 channels.*\(2, 64, 64, 1\)"):
        model(images(size=64, channels=1))
    with pytest.raises(ValueError, match="3 channels"):
        model.extract_features(images(size=64, channels=4))


def test_too_small_input_is_a_clear_error():
    model = resnet.build("resnet18")
    with pytest.raises(ValueError, match=r"at least 32x32.*height 16"):
        model(images(size=16))
    with pytest.raises(ValueError, match=r"input_shape.*too small.*32"):
        resnet.build("resnet18", ["ResNet.input_shape = (16, 16, 3)"])


def test_fixed_input_shape_rejects_other_sizes():
    model = resnet.build("cifar/resnet20")
    with pytest.raises(ValueError, match=r"built for input_shape=\(32, 32, 3\)"):
        model(images(size=64))


@pytest.mark.parametrize(
    "binding, pattern",
    [
        ("ResNet.output_stride = 4", r"ResNet.output_stride.*None, 8, 16, 32.*received 4"),
        ("ResNet.norm = 'batchnorm'", r"Unknown norm 'batchnorm'.*ResNet.norm.*batch, sync_batch.*layer, none"),
        ("ResNet.block = 'resblock'", r"Unknown block 'resblock'.*basic, bottleneck"),
        ("ResNet.stem = 'big'", r"Unknown stem 'big'.*classic, deep, cifar"),
        ("BasicBlock.shortcut = 'b'", r"Unknown shortcut 'b'.*BasicBlock.shortcut.*projection"),
        ("BasicBlock.groups = 3", r"BasicBlock.groups.*=3 must divide.*64"),
        ("BasicBlock.se_ratio = 1.5", r"BasicBlock.se_ratio.*\[0, 1\].*1.5"),
        ("BasicBlock.se_ratio = 0.0", r"BasicBlock.se_ratio.*\(0, 1\].*0.0"),
        ("ResNet.stage_filters = (64, 128)", r"ResNet.stage_filters.*4 entries.*\(64, 128\)"),
        ("ResNet.padding = 'reflect'", r"`padding`.*'same', 'symmetric'.*'reflect'"),
        ("ResNet.use_bias = 'yes'", r"`use_bias`.*'auto'.*'yes'"),
        ("ResNet.activation = 'relu7'", r"ResNet.activation.*relu7"),
        ("ResNet.drop_path_rate = 1.0", r"ResNet.drop_path_rate.*\[0, 1\).*1.0"),
        ("ResNet.input_shape = (None, None)", r"ResNet.input_shape.*\(height, width, channels\)"),
        ("ResNet.num_classes = 0", r"ResNet.num_classes.*>= 1.*0"),
        ("ResNet.pooling = None", r"ResNet.pooling.*'avg' or 'max' when `include_top` is True"),
    ],
)
def test_bad_arguments_are_named(binding, pattern):
    with pytest.raises(ValueError, match=pattern):
        resnet.build("resnet18", [binding])


def test_bad_stride_placement_is_named():
    with pytest.raises(ValueError, match=r"BottleneckBlock.stride_on.*'1x1', '3x3'.*'5x5'"):
        resnet.build("resnet50", ["BottleneckBlock.stride_on = '5x5'"])


def test_output_stride_below_stem_stride_is_named():
    with pytest.raises(ValueError, match=r"output_stride.*=8.*stem \(16\)"):
        resnet.ResNet(
            "basic",
            stage_blocks=(1, 1),
            stage_filters=(8, 8),
            stage_strides=(2, 2),
            output_stride=8,
            stem={"class_name": "ClassicStem", "config": {"strides": 8}},
        )


def test_weight_names_are_deterministic(resnet50):
    paths = [w.path for w in resnet50.weights]
    assert len(set(paths)) == len(paths)
    for expected in (
        "stem/conv1/kernel",
        "stem/norm1/moving_mean",
        "stage1/block1/shortcut/conv/kernel",
        "stage2/block4/conv2/kernel",
        "stage4/block3/norm3/gamma",
        "classifier/kernel",
    ):
        assert expected in paths


def test_block_and_stem_specs_may_not_contradict_the_network_wide_settings():
    """ResNet sets norm, activation, padding, ... on every block and stem; a spec that says otherwise
    would be overridden without a word, so it is refused, naming both values."""
    with pytest.raises(
        ValueError,
        match=r"`ResNet.block` spec sets BasicBlock.norm='group', but ResNet sets "
        r"norm=\{'class_name': 'BatchNorm', .*\} for every block \(bind `ResNet.norm`\)\.",
    ):
        resnet.ResNet(
            {"class_name": "basic", "config": {"norm": "group"}},
            stage_blocks=(1, 1),
            stage_filters=(16, 32),
            stage_strides=(1, 2),
            stem="cifar",
        )
    with pytest.raises(
        ValueError,
        match=r"`ResNet.stem` spec sets CifarStem.use_bias=True, but ResNet sets "
        r"use_bias='auto' for every stem \(bind `ResNet.use_bias`\)\.",
    ):
        resnet.ResNet(
            "basic",
            stage_blocks=(1, 1),
            stage_filters=(16, 32),
            stage_strides=(1, 2),
            use_bias="auto",
            stem={"class_name": "cifar", "config": {"use_bias": True}},
        )


def test_specs_may_repeat_the_network_wide_settings_in_any_spelling():
    model = resnet.ResNet(
        {
            "class_name": "basic",
            "config": {
                "activation": "swish",
                "norm": "layer",
                "preact": False,
                "kernel_initializer": "he_normal",
                "use_bias": "auto",
                "padding": "same",
            },
        },
        stage_blocks=(1, 1),
        stage_filters=(16, 32),
        stage_strides=(1, 2),
        stem={"class_name": "cifar", "config": {"activation": keras.activations.silu, "norm": {"class_name": "layer"}}},
        activation=keras.activations.silu,
        norm="layer",
        kernel_initializer=keras.initializers.HeNormal(),
        use_bias="auto",
        padding="same",
        num_classes=10,
    )
    block = model.get_layer("stage1").blocks[0]
    assert block.activation == "silu" and type(block.norms[0]) is resnet.LayerNorm and block.padding == "same"
    assert model.stem["config"]["kernel_initializer"]["class_name"] == "HeNormal"
    assert tuple(model(images(batch=1)).shape) == (1, 10)
