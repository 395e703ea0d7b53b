"""Fine-tuning helpers: pretrained weights bound in gin, frozen stages, frozen batch norms."""

import os

import gin
import keras
import numpy as np
import pytest

import resnet
from conftest import images, randomize_norms
from resnet._internals import flatten_layers
from resnet.training import finetune


# slow: it builds and loads two ImageNet-size models; CI runs it, the quick loop does not.
@pytest.mark.slow
def test_pretrained_weights_from_gin_and_freezing(tmp_path):
    path = tmp_path / "resnet50.weights.h5"
    keras.applications.ResNet50(weights=None).save_weights(path)
    gin.parse_config(f"PretrainedWeights.path = '{path}'\nPretrainedWeights.skip_classifier = True")
    weights = gin.get_configurable(finetune.PretrainedWeights)()
    ours = resnet.build("keras_resnet50", ["ResNet.num_classes = 3"])
    assert weights.load_into(ours).skipped == ["predictions/bias", "predictions/kernel"]
    finetune.freeze(ours, stages=2)
    frozen = {v.path.split("/")[0] for v in ours.weights if not any(v is t for t in ours.trainable_weights)}
    assert {"stem", "stage1", "stage2"} <= frozen and "stage3" not in {
        v.path.split("/")[0] for v in ours.non_trainable_weights if v.path.endswith("kernel")
    }
    with pytest.raises(ValueError, match=r"`stages` must be an integer in \[0, 4\]"):
        finetune.freeze(ours, stages=5)


def test_pretrained_weights_format_picks_the_loader(tmp_path):
    ours = resnet.build("resnet18")
    assert finetune.PretrainedWeights("~/resnet18.npz").path == os.path.expanduser("~/resnet18.npz")
    with pytest.raises(ValueError, match=r"Weights file '.*resnet18.npz' does not exist"):
        finetune.PretrainedWeights(tmp_path / "resnet18.npz").load_into(ours)
    h5 = tmp_path / "resnet18.h5"
    h5.write_text("not weights")
    with pytest.raises(ValueError, match=r"'resnet18' does not have a keras.applications ResNet layout"):
        finetune.PretrainedWeights(h5).load_into(ours)
    with pytest.raises(ValueError, match=r"resnet18.h5': expected a .npz, .safetensors, .pth or .pt weights file"):
        finetune.PretrainedWeights(h5, format="torch").load_into(ours)
    with pytest.raises(ValueError, match=r"`PretrainedWeights.format` must be one of .*; received 'onnx'"):
        finetune.PretrainedWeights(h5, format="onnx")


def test_with_frozen_batch_norm_keeps_outputs_and_freezes_statistics():
    model = resnet.build("cifar/resnet20")
    randomize_norms(model)
    frozen = finetune.with_frozen_batch_norm(model)
    norms = [layer for layer in flatten_layers(frozen) if isinstance(layer, resnet.BatchNorm)]
    assert norms and all(type(n) is resnet.FrozenBatchNorm for n in norms)
    x = images()
    np.testing.assert_allclose(
        np.asarray(frozen(x, training=True)), np.asarray(model(x, training=False)), rtol=1e-5, atol=1e-5
    )
