"""The training step: weight decay on kernels only, label smoothing, precision, XLA, model checks."""

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

import resnet
from conftest import torchvision_resnet18_state
from resnet import config
from resnet.training.steps import classification_loss, decayed_kernels, make_train_step
from resnet.training.trainer import Trainer, variables_by_path

TINY = [
    "ResNet.stage_blocks = (1, 1, 1)",
    "Trainer.batch_size = 8",
    "Trainer.steps_per_epoch = 2",
    "Trainer.epochs = 1",
    "learning_rate_schedule.schedule = 'constant'",
    "learning_rate_schedule.base_learning_rate = 0.5",
    "learning_rate_schedule.warmup_epochs = 0",
    "Trainer.momentum = 0.0",
]


def make_trainer(tmp_path, *bindings):
    config.parse(["experiments/demo"], TINY + list(bindings))
    trainer = gin.get_configurable(Trainer)(model_dir=tmp_path)
    trainer.build()
    return trainer


def batch(seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.normal(size=(8, 32, 32, 3)).astype("float32")), tf.constant(rng.integers(0, 10, 8), tf.int32)


def one_step_change(tmp_path, weight_decay):
    trainer = make_trainer(tmp_path, f"Trainer.weight_decay = {weight_decay}")
    keras.utils.set_random_seed(1)
    before = {path: v.numpy().copy() for path, v in variables_by_path(trainer.model).items()}
    trainer.make_train_step()(batch())
    after = {path: v.numpy() for path, v in variables_by_path(trainer.model).items()}
    return before, after


def test_weight_decay_adds_its_gradient_to_kernels_only(tmp_path):
    before0, after0 = one_step_change(tmp_path / "a", 0.0)
    gin.clear_config()
    keras.backend.clear_session()
    before1, after1 = one_step_change(tmp_path / "b", 0.01)
    lr, decay = 0.5, 0.01
    checked = set()
    for path in before0:
        np.testing.assert_array_equal(before0[path], before1[path])  # same initial weights
        extra = (after1[path] - before1[path]) - (after0[path] - before0[path])
        if path.endswith("kernel"):
            # SGD without momentum: the decay's extra step is -lr * decay * w (up to float error).
            np.testing.assert_allclose(extra, -lr * decay * before1[path], rtol=1e-3, atol=1e-6)
            checked.add(path.rsplit("/", 1)[-1])
        else:
            np.testing.assert_allclose(extra, 0.0, atol=1e-6)
    assert checked == {"kernel"}
    assert any(p.startswith("classifier/") for p in before0)


def test_layer_regularizers_are_refused_in_favour_of_weight_decay(tmp_path):
    refusal = r"regularization loss.*ResNet.kernel_regularizer.*Trainer.weight_decay"
    with pytest.raises(ValueError, match=refusal):
        make_trainer(tmp_path, "ResNet.kernel_regularizer = 'l2'")
    model = resnet.build("cifar/resnet20", ["ResNet.kernel_regularizer = 'l2'"])
    with pytest.raises(ValueError, match=refusal):
        make_train_step(model, keras.optimizers.SGD(), num_classes=10, global_batch_size=8)


def test_decayed_variables_are_conv_and_dense_kernels(tmp_path):
    trainer = make_trainer(tmp_path)
    names = {v.path for v in decayed_kernels(trainer.model)}
    assert "classifier/kernel" in names and "stem/conv1/kernel" in names
    assert not any(n.endswith(("gamma", "beta", "bias")) for n in names)
    convs = [l for l in trainer.model._flatten_layers() if isinstance(l, keras.layers.Conv2D)]
    assert len(names) == len(convs) + 1


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_training_steps(tmp_path, precision):
    trainer = make_trainer(tmp_path, f"Trainer.precision = {precision!r}")
    assert trainer.model.get_layer("stem").convs[0].compute_dtype == precision.split("_")[1]
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "mixed_float16")
    step = trainer.make_train_step()
    losses = [float(step(batch(i))[0]) for i in range(3)]
    assert all(np.isfinite(losses))


def test_xla_compiled_step_matches_the_plain_step(tmp_path):
    plain = make_trainer(tmp_path / "plain")
    weights = plain.model.get_weights()
    plain_loss = float(plain.make_train_step()(batch())[0])
    gin.clear_config()
    keras.backend.clear_session()
    xla = make_trainer(tmp_path / "xla", "Trainer.jit_compile = True")
    xla.model.set_weights(weights)
    assert float(xla.make_train_step()(batch())[0]) == pytest.approx(plain_loss, rel=1e-4)


def test_label_smoothing_in_training_only(tmp_path):
    trainer = make_trainer(tmp_path, "Trainer.label_smoothing = 0.1")
    images, labels = batch()
    options = dict(num_classes=10, label_smoothing=trainer.label_smoothing)
    logits, loss = classification_loss(trainer.model, images, labels, training=True, **options)
    log_p = tf.nn.log_softmax(logits).numpy()
    target = 0.9 * np.eye(10)[labels.numpy()] + 0.1 / 10
    np.testing.assert_allclose(loss.numpy(), -(target * log_p).sum(-1), rtol=1e-5)
    logits, loss = classification_loss(trainer.model, images, labels, training=False, **options)
    log_p = tf.nn.log_softmax(logits).numpy()
    np.testing.assert_allclose(loss.numpy(), -log_p[np.arange(8), labels.numpy()], rtol=1e-5)


@pytest.mark.parametrize(
    "binding, pattern",
    [
        ("Trainer.precision = 'float16'", r"Trainer.precision.*'mixed_bfloat16'.*'float16'"),
        ("Trainer.strategy = 'tpu'", r"Trainer.strategy.*'mirrored'.*'tpu'"),
        ("Trainer.batch_size = 0", r"Trainer.batch_size.*>= 1"),
        ("Preprocessing.image_size = 28", r"takes images of shape \(32, 32, 3\).*28x28x3"),
    ],
)
def test_bad_trainer_settings(tmp_path, binding, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_trainer(tmp_path, binding)


def test_fine_tuning_starts_from_pretrained_weights_and_keeps_frozen_stages(tmp_path):
    state = torchvision_resnet18_state()
    path = tmp_path / "resnet18.npz"
    np.savez(path, **state)
    # The demo's data and recipe, with torchvision's resnet18 (at 32x32) instead of ResNet-20.
    config.parse(["experiments/demo", "resnet18"], [
        "ResNet.stage_strides = (1, 2, 2, 2)", "BasicBlock.shortcut = @ProjectionShortcut", "ResNet.num_classes = 10",
        "Trainer.initial_weights = @PretrainedWeights()", f"PretrainedWeights.path = '{path}'",
        "PretrainedWeights.skip_classifier = True", "Trainer.freeze_stages = 2",
        "Trainer.epochs = 1", "Trainer.steps_per_epoch = 2", "Trainer.batch_size = 8",
    ])
    trainer = gin.get_configurable(Trainer)(model_dir=tmp_path / "run")
    trainer.train()
    weights = variables_by_path(trainer.model)
    # Frozen: exactly the pretrained values after training (statistics included).
    np.testing.assert_array_equal(weights["stem/conv1/kernel"].numpy(), state["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(weights["stage2/block2/norm2/moving_mean"].numpy(), state["layer2.1.bn2.running_mean"])
    # Trained: stage 3 moved away from its pretrained values.
    assert not np.allclose(weights["stage3/block1/conv1/kernel"].numpy(), state["layer3.0.conv1.weight"].transpose(2, 3, 1, 0))
    assert trainer.model.get_layer("stage3").trainable and not trainer.model.get_layer("stage2").trainable
