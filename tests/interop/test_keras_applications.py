"""keras.applications weights load strictly and give the same numbers."""

import keras
import numpy as np
import pytest

import resnet
from conftest import images, marked_slow, randomize_norms, relative_error
from resnet import interop

TOLERANCE = 1e-3  # max |ours - theirs| / max |theirs|, for logits and every feature map

# Our config, keras.applications class, and the layers whose outputs are C2..C5 there.
KERAS_CASES = {
    "keras_resnet50": ("ResNet50", ["conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"]),
    "keras_resnet101": ("ResNet101", ["conv2_block3_out", "conv3_block4_out", "conv4_block23_out", "conv5_block3_out"]),
    "keras_resnet152": ("ResNet152", ["conv2_block3_out", "conv3_block8_out", "conv4_block36_out", "conv5_block3_out"]),
    # ResNetV2 strides in the last block of a stage: C2..C4 are the outputs before that block.
    "keras_resnet50_v2": ("ResNet50V2", ["conv2_block2_out", "conv3_block3_out", "conv4_block5_out", "post_relu"]),
    "keras_resnet101_v2": ("ResNet101V2", ["conv2_block2_out", "conv3_block3_out", "conv4_block22_out", "post_relu"]),
    "keras_resnet152_v2": ("ResNet152V2", ["conv2_block2_out", "conv3_block7_out", "conv4_block35_out", "post_relu"]),
}


def keras_application(name, classes=1000, size=64):
    cls_name, feature_layers = KERAS_CASES[name]
    source = getattr(keras.applications, cls_name)(
        weights=None, input_shape=(size, size, 3), classes=classes, classifier_activation=None
    )
    randomize_norms(source, shift=0.2)
    taps = keras.Model(source.input, [source.output] + [source.get_layer(n).output for n in feature_layers])
    return source, taps


def assert_matches(ours, taps, x):
    logits, *features = [np.asarray(t) for t in taps(x)]
    assert relative_error(np.asarray(ours(x)), logits) <= TOLERANCE
    for (key, ours_feature), theirs in zip(ours.extract_features(x).items(), features, strict=True):
        assert ours_feature.shape == theirs.shape, key
        assert relative_error(np.asarray(ours_feature), theirs) <= TOLERANCE, key


@pytest.mark.parametrize("name", marked_slow(sorted(KERAS_CASES), lambda name: name != "keras_resnet50"))
def test_keras_applications_weights_match_numerically(name):
    source, taps = keras_application(name)
    ours = resnet.build(name)
    report = interop.load_keras_applications_weights(ours, source)
    assert len(report.loaded) == len(ours.weights) and not report.skipped
    assert_matches(ours, taps, images(batch=2, size=64))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["keras_resnet50", "keras_resnet50_v2"])
def test_keras_applications_weights_load_from_weights_h5_and_legacy_h5(name, tmp_path):
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    source, taps = keras_application(name)
    x = images(batch=1, size=64)
    modern = tmp_path / "model.weights.h5"
    source.save_weights(modern)
    legacy = tmp_path / "model.h5"  # the format Keras caches under ~/.keras/models/
    with h5py.File(legacy, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    for path in (modern, legacy):
        ours = resnet.build(name)
        report = interop.load_keras_applications_weights(ours, path)
        assert report.source == str(path)
        assert_matches(ours, taps, x)


def test_keras_skip_classifier_for_other_classes():
    source, _ = keras_application("keras_resnet50")
    ours = resnet.build("keras_resnet50", ["ResNet.num_classes = 10"])
    with pytest.raises(ValueError, match=r"shape mismatch: predictions/kernel \(2048, 1000\).*skip_classifier=True"):
        interop.load_keras_applications_weights(ours, source)
    report = interop.load_keras_applications_weights(ours, source, skip_classifier=True)
    assert report.skipped == ["predictions/bias", "predictions/kernel"]
    np.testing.assert_array_equal(
        ours.get_layer("stage4").blocks[2].convs[2].kernel.numpy(),
        source.get_layer("conv5_block3_3_conv").kernel.numpy(),
    )


@pytest.mark.slow  # builds keras.applications' ResNet50
def test_keras_negative_moving_variance_loads_nothing():
    source, _ = keras_application("keras_resnet50")
    norm = source.get_layer("conv3_block2_2_bn")
    variance = norm.moving_variance.numpy()
    variance[5] = -0.25
    norm.moving_variance.assign(variance)
    ours = resnet.build("keras_resnet50")
    before = [v.numpy().copy() for v in ours.weights]
    with pytest.raises(
        ValueError,
        match=r"nothing was loaded.*unusable values: conv3_block2_2_bn/moving_variance has 1 "
        r"negative value\(s\), impossible for a variance",
    ):
        interop.load_keras_applications_weights(ours, source)
    for variable, old in zip(ours.weights, before, strict=True):
        np.testing.assert_array_equal(variable.numpy(), old, err_msg=variable.path)


@pytest.mark.slow  # 7-9 s: the quick loop keeps the numerical checks
def test_keras_loader_refuses_other_layouts_and_files(tmp_path):
    with pytest.raises(ValueError, match=r"does not have a keras.applications ResNet layout.*stride_on='3x3'"):
        interop.load_keras_applications_weights(resnet.build("resnet50"), tmp_path / "x.h5")
    with pytest.raises(ValueError, match=r"does not have a keras.applications ResNet layout.*block"):
        interop.load_keras_applications_weights(resnet.build("resnet18"), tmp_path / "x.h5")  # basic blocks
    ours = resnet.build("keras_resnet50")
    with pytest.raises(ValueError, match=r"Weights file '.*missing.h5' does not exist"):
        interop.load_keras_applications_weights(ours, tmp_path / "missing.h5")
    not_h5 = tmp_path / "notes.h5"
    not_h5.write_text("not weights")
    with pytest.raises(ValueError, match=r"notes.h5' is not an HDF5 weights file"):
        interop.load_keras_applications_weights(ours, not_h5)
    other = tmp_path / "resnet101.weights.h5"
    keras.applications.ResNet101(weights=None, input_shape=(64, 64, 3)).save_weights(other)
    before = ours.get_layer("stem").convs[0].kernel.numpy().copy()
    with pytest.raises(ValueError, match=r"resnet101.weights.h5' does not hold keras.applications.ResNet50 weights"):
        interop.load_keras_applications_weights(ours, other)
    np.testing.assert_array_equal(ours.get_layer("stem").convs[0].kernel.numpy(), before)
