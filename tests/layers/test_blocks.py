"""Residual blocks: branch layout, stride placement, shortcuts in the block, pre-activation, options."""

import keras
import numpy as np
import pytest

import resnet
from conftest import images, randomize_norms, trainable_count


@pytest.mark.parametrize("stride_on, conv1, conv2", [("1x1", (2, 2), (1, 1)), ("3x3", (1, 1), (2, 2))])
def test_stride_placement(stride_on, conv1, conv2):
    block = resnet.BottleneckBlock(64, strides=2, stride_on=stride_on)
    assert block(images(size=16, channels=256)).shape == (2, 8, 8, 256)
    assert block.convs[0].strides == conv1 and block.convs[1].strides == conv2


def test_resnext_and_wide_widths():
    resnext = resnet.BottleneckBlock(128, groups=32, base_width=4)
    wide = resnet.BottleneckBlock(128, base_width=128)
    assert resnext.width == wide.width == 256
    resnext.build((None, 8, 8, 512))
    wide.build((None, 8, 8, 512))
    assert [c.filters for c in resnext.convs] == [256, 256, 512] and resnext.convs[1].groups == 32
    assert [c.filters for c in wide.convs] == [256, 256, 512] and wide.convs[1].groups == 1


def test_post_activation_block_computes_relu_of_branch_plus_shortcut():
    block = resnet.BasicBlock(8, norm="none", use_bias=False)
    x = images(size=8, channels=8)
    out = np.asarray(block(x))
    relu = lambda t: np.maximum(t, 0.0)  # noqa: E731
    branch = block.convs[1](relu(np.asarray(block.convs[0](x))))
    np.testing.assert_allclose(out, relu(np.asarray(branch) + x), rtol=1e-5, atol=1e-5)


def test_plain_block_has_no_shortcut():
    block = resnet.BasicBlock(8, norm="none", shortcut="none")
    x = images(size=8, channels=8)
    out = np.asarray(block(x))
    branch = block.convs[1](np.maximum(np.asarray(block.convs[0](x)), 0.0))
    np.testing.assert_allclose(out, np.maximum(np.asarray(branch), 0.0), rtol=1e-5, atol=1e-5)
    assert not block.shortcut_layer.weights


def test_preactivation_block_layout():
    block = resnet.BottleneckBlock(16, strides=2, preact=True, use_bias="auto")
    block(images(size=8, channels=32))
    assert block.preact_norm is not None
    assert block.norms[-1] is None and block.convs[-1].use_bias  # nothing normalizes the last conv
    assert not block.convs[0].use_bias  # a norm follows
    shortcut = block.shortcut_layer
    assert shortcut.projects and shortcut.norm_layer is None and shortcut.conv.use_bias


def test_preactivation_identity_block_is_identity_at_zero_init():
    block = resnet.BasicBlock(8, preact=True, zero_init_last=True)
    x = images(size=8, channels=8)
    np.testing.assert_allclose(np.asarray(block(x, training=False)), x, rtol=0, atol=1e-6)
    assert not np.any(np.asarray(block.convs[-1].kernel))


def test_zero_init_last_norm_makes_a_block_its_shortcut():
    block = resnet.BottleneckBlock(4, zero_init_last=True)
    x = images(size=8, channels=16)
    np.testing.assert_allclose(np.asarray(block(x, training=False)), np.maximum(x, 0.0), rtol=0, atol=1e-6)
    assert not np.any(np.asarray(block.norms[-1].gamma))


def test_squeeze_excite_width_and_gate():
    block = resnet.BottleneckBlock(64, se_ratio=1 / 16)
    block(images(size=4, channels=256))
    assert block.se.reduce.filters == 16 and block.se.expand.filters == 256
    se = resnet.SqueezeExcite(0.25)
    x = np.abs(images(size=4, channels=16))
    gate = np.asarray(se(x)) / x
    assert np.all((gate > 0) & (gate < 1))
    np.testing.assert_allclose(gate, gate[:, :1, :1, :].repeat(4, 1).repeat(4, 2), rtol=1e-4)


def test_dilated_block_keeps_resolution():
    block = resnet.BottleneckBlock(16, dilation=2, first_dilation=1)
    assert block(images(size=9, channels=64)).shape == (2, 9, 9, 64)
    assert block.convs[1].dilation_rate == (1, 1)
    basic = resnet.BasicBlock(16, dilation=4, first_dilation=2)
    assert basic(images(size=9, channels=16)).shape == (2, 9, 9, 16)
    assert [c.dilation_rate for c in basic.convs] == [(2, 2), (4, 4)]


def test_drop_path_only_in_training():
    drop = resnet.DropPath(0.5, seed=3)
    x = np.ones((64, 2, 2, 3), "float32")
    np.testing.assert_array_equal(np.asarray(drop(x)), x)
    np.testing.assert_array_equal(np.asarray(drop(x, training=False)), x)
    out = np.asarray(drop(x, training=True))
    kept = out.reshape(64, -1).max(axis=1) > 0
    assert 10 < kept.sum() < 54  # about half of the examples are dropped
    np.testing.assert_allclose(out[kept], 2.0)  # the rest are rescaled by 1 / keep
    assert np.all(out[~kept] == 0.0)


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: resnet.BasicBlock(64, groups=3), r"BasicBlock.groups.*=3 must divide.*64"),
        (lambda: resnet.BasicBlock(0), r"BasicBlock.filters.*>= 1.*0"),
        (lambda: resnet.BottleneckBlock(64, stride_on="first"), r"stride_on.*'1x1', '3x3'.*'first'"),
        (lambda: resnet.BottleneckBlock(64, se_ratio=-0.1), r"se_ratio.*-0.1"),
        (lambda: resnet.BottleneckBlock(64, se_ratio=2), r"se_ratio.*2"),
        (lambda: resnet.BottleneckBlock(1, base_width=32), r"base_width.*3x3 width of 0"),
        (lambda: resnet.BottleneckBlock(64, norm="bn"), r"Unknown norm 'bn' for `BottleneckBlock.norm`"),
        (
            lambda: resnet.BottleneckBlock(64, shortcut=resnet.ProjectionShortcut(8)),
            r"not a layer instance.*@ProjectionShortcut",
        ),
        (lambda: resnet.BottleneckBlock(64, drop_path_rate=1.5), r"drop_path_rate.*\[0, 1\).*1.5"),
        (
            lambda: resnet.BottleneckBlock(
                64, shortcut={"class_name": "ProjectionShortcut", "config": {"allways": True}}
            ),
            r"unknown argument\(s\) \['allways'\].*always",
        ),
    ],
)
def test_bad_block_arguments(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_grouped_block_checks_input_channels():
    block = resnet.BasicBlock(8, groups=4)
    with pytest.raises(ValueError, match=r"groups`=4 must divide the input channels, which are 6"):
        block(images(size=4, channels=6))


def test_stage_inside_a_functional_model_trains():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 8))
    x = resnet.ResidualStage("basic", num_blocks=2, filters=16, strides=2)(inputs)
    x = resnet.BottleneckBlock(4, zero_init_last=True)(x)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x_train = images(batch=32, size=16, channels=8, seed=1)
    y_train = (x_train.mean(axis=(1, 2, 3)) > 0).astype("int32")
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(x_train, y_train, batch_size=8, epochs=8, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] * 0.7
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_block_counts_match_torchvision_formula():
    # torchvision Bottleneck(256, 64): 1x1 (256*64) + 3x3 (64*64*9) + 1x1 (64*256) + 3 BN (2*(64+64+256)).
    block = resnet.BottleneckBlock(64)
    block(images(size=4, channels=256))
    assert trainable_count(block) == 256 * 64 + 64 * 64 * 9 + 64 * 256 + 2 * (64 + 64 + 256)


def test_blocks_run_with_randomized_norms_in_both_modes():
    block = resnet.BasicBlock(8, strides=2, shortcut="avg_down")
    x = images(size=8, channels=4)
    block(x)
    randomize_norms(block)
    inference, training = np.asarray(block(x, training=False)), np.asarray(block(x, training=True))
    assert inference.shape == training.shape == (2, 4, 4, 8)
    assert not np.allclose(inference, training)
