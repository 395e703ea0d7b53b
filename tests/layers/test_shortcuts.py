"""Shortcuts: the paper's options A, B, C, ResNet-D and none, and their errors."""

import numpy as np
import pytest

import resnet
from conftest import images, trainable_count


def test_option_a_subsamples_and_zero_pads():
    x = images(size=8, channels=4)
    out = np.asarray(resnet.ZeroPadShortcut(6, strides=2)(x))
    np.testing.assert_array_equal(out[..., :4], x[:, ::2, ::2, :])
    assert not np.any(out[..., 4:]) and out.shape == (2, 4, 4, 6)


def test_option_a_is_identity_where_shapes_match():
    x = images(size=4, channels=4)
    np.testing.assert_array_equal(np.asarray(resnet.ZeroPadShortcut(4)(x)), x)


def test_option_b_projects_only_where_shapes_change():
    same, change = resnet.ProjectionShortcut(4), resnet.ProjectionShortcut(8, strides=2)
    x = images(size=4, channels=4)
    np.testing.assert_array_equal(np.asarray(same(x)), x)
    assert not same.projects and not same.weights
    assert change(x).shape == (2, 2, 2, 8) and change.projects
    assert trainable_count(change) == 4 * 8 + 2 * 8


def test_option_c_projects_everywhere():
    shortcut = resnet.ProjectionShortcut(4, always=True)
    shortcut(images(size=4, channels=4))
    assert shortcut.projects and trainable_count(shortcut) == 4 * 4 + 2 * 4


def test_projection_can_subsample_where_only_the_stride_changes():
    shortcut = resnet.ProjectionShortcut(4, strides=2, project_on_stride=False)
    x = images(size=4, channels=4)
    np.testing.assert_array_equal(np.asarray(shortcut(x)), x[:, ::2, ::2, :])
    assert not shortcut.projects


def test_resnet_d_average_pools_before_a_stride_one_conv():
    shortcut = resnet.AvgDownShortcut(8, strides=2, norm="none")
    x = images(size=5, channels=4)
    out = np.asarray(shortcut(x))
    assert out.shape == (2, 3, 3, 8) and shortcut.conv.strides == (1, 1)
    # The corner average covers the 2x2 window; the last row/column averages only real pixels.
    kernel = np.asarray(shortcut.conv.kernel)[0, 0]
    np.testing.assert_allclose(out[:, 0, 0], x[:, :2, :2].mean(axis=(1, 2)) @ kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[:, 2, 2], x[:, 4, 4] @ kernel, rtol=1e-5, atol=1e-6)


def test_identity_shortcut_refuses_shape_changes():
    with pytest.raises(ValueError, match=r"IdentityShortcut.*cannot map 4 channels at stride 2 to 8"):
        resnet.BasicBlock(8, strides=2, shortcut="identity")(images(size=4, channels=4))


def test_zero_pad_cannot_remove_channels():
    with pytest.raises(ValueError, match=r"ZeroPadShortcut.*only add channels.*8 channels.*outputs 4"):
        resnet.ZeroPadShortcut(4)(images(size=4, channels=8))


@pytest.mark.parametrize(
    "binding, expected_class, expected_params",
    [
        ("BasicBlock.shortcut = @ProjectionShortcut", resnet.ProjectionShortcut, 272_474),
        ("BasicBlock.shortcut = 'projection'", resnet.ProjectionShortcut, 272_474),
        ("BasicBlock.shortcut = @AvgDownShortcut", resnet.AvgDownShortcut, 272_474),
        ("BasicBlock.shortcut = @NoShortcut", resnet.NoShortcut, 269_722),
        ("BasicBlock.shortcut = 'zero_pad'", resnet.ZeroPadShortcut, 269_722),
    ],
)
def test_shortcut_swaps_by_binding(binding, expected_class, expected_params):
    model = resnet.build("cifar/resnet20", [binding])
    assert trainable_count(model) == expected_params
    for stage in ("stage1", "stage2", "stage3"):
        for block in model.get_layer(stage).blocks:
            assert type(block.shortcut_layer) is expected_class
