"""Every shipped config survives `.keras` save/load bit for bit and exports a servable SavedModel;
an edited file is refused rather than loaded with the edits ignored or the weights in part."""

import io
import json
import re
import zipfile

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

import resnet
from conftest import images, marked_slow, randomize_norms, relative_error

# In the quick loop: the CIFAR ResNet-20 family and ResNet-18; every other config is `slow`.
QUICK = ("cifar/resnet20", "cifar/resnet20_b", "resnet18")


@pytest.mark.parametrize("name", marked_slow(resnet.available_configs(), lambda name: name not in QUICK))
def test_keras_save_load_and_export_round_trip(name, tmp_path):
    model = resnet.build(name)
    randomize_norms(model)
    x = images(size=32 if name.startswith("cifar/") else 64)
    expected = np.asarray(model(x, training=False))

    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert type(reloaded) is resnet.ResNet
    assert reloaded.get_config() == model.get_config()
    np.testing.assert_array_equal(np.asarray(reloaded(x, training=False)), expected)

    export_dir = str(tmp_path / "saved_model")
    model.export(export_dir, verbose=False)
    loaded = tf.saved_model.load(export_dir)  # keep a reference: it owns the variables
    served = loaded.serve(tf.constant(x))
    # Graph execution may fuse and reorder float32 ops: compare relative to the output's scale.
    assert relative_error(np.asarray(served), expected) < 1e-5


def test_reload_ignores_gin_bindings_active_at_load_time(tmp_path):
    model = resnet.build("cifar/resnet20")
    path = str(tmp_path / "model.keras")
    model.save(path)
    # Bindings that would change every nested layer if the saved config were incomplete.
    gin.parse_config(
        """
        BasicBlock.shortcut = @ProjectionShortcut
        BasicBlock.se_ratio = 0.5
        BatchNorm.epsilon = 0.1
        ZeroPadShortcut.trainable = False
        """
    )
    reloaded = keras.models.load_model(path)
    assert reloaded.get_config() == model.get_config()
    assert reloaded.count_params() == model.count_params()
    x = images()
    np.testing.assert_array_equal(np.asarray(reloaded(x)), np.asarray(model(x)))


@pytest.mark.parametrize(
    "layer",
    [
        lambda: resnet.BottleneckBlock(16, strides=2, groups=4, base_width=16, se_ratio=0.25, shortcut="avg_down"),
        lambda: resnet.BasicBlock(
            16,
            preact=True,
            norm={"class_name": "GroupNorm", "config": {"groups": 4}},
            shortcut={"class_name": "ProjectionShortcut", "config": {"always": True}},
        ),
        lambda: resnet.ResidualStage("basic", num_blocks=2, filters=16, strides=2, downsample_block="last"),
        lambda: resnet.DeepStem(widths=(8, 8, 16), norm="layer", activation="swish"),
        lambda: resnet.FrozenBatchNorm(epsilon=1e-3),
    ],
)
def test_layer_config_round_trip(layer):
    original = layer()
    x = images(size=16, channels=16 if not isinstance(original, resnet.ClassicStem) else 3)
    expected = np.asarray(original(x))
    clone = type(original).from_config(original.get_config())
    clone(x)
    clone.set_weights(original.get_weights())
    assert clone.get_config() == original.get_config()
    np.testing.assert_array_equal(np.asarray(clone(x)), expected)


# ------------------------------------------------------------- edited files: refused, never half-loaded


def edited_copy(path, directory, edit, name="edited.keras") -> str:
    """A copy of the `.keras` file `path` whose ResNet config `edit(config)` changed in place."""
    with zipfile.ZipFile(path) as archive:
        members = {member: archive.read(member) for member in archive.namelist()}
    document = json.loads(members["config.json"])
    edit(document["config"])
    members["config.json"] = json.dumps(document).encode()
    edited = str(directory / name)
    with zipfile.ZipFile(edited, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return edited


def _set(section, key, value):
    def edit(config):
        (config[section]["config"] if section else config)[key] = value

    return edit


def _set_norm_epsilon(config):
    config["block"]["config"]["norm"]["config"]["epsilon"] = 0.5


GROUP_NORM = {"class_name": "GroupNorm", "config": {"groups": 4, "epsilon": 1e-5, "gamma_initializer": "ones"}}
BATCH_NORM = (
    "{'class_name': 'BatchNorm', 'config': {'momentum': 0.9, 'epsilon': 1e-05, 'gamma_initializer': 'ones', "
    "'synchronized': None}}"
)


@pytest.fixture(scope="module")
def resnet20_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("saved") / "resnet20.keras")
    resnet.build("cifar/resnet20").save(path)
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            _set("block", "norm", GROUP_NORM),
            "`ResNet.block` spec sets BasicBlock.norm={'class_name': 'GroupNorm', 'config': {'groups': 4, "
            "'epsilon': 1e-05, 'gamma_initializer': 'ones'}}, but ResNet sets "
            f"norm={BATCH_NORM} for every block (bind `ResNet.norm`).",
        ),
        (
            _set_norm_epsilon,
            "sets BasicBlock.norm={'class_name': 'BatchNorm', 'config': {'momentum': 0.9, 'epsilon': 0.5,",
        ),
        (
            _set("block", "padding", "same"),
            "`ResNet.block` spec sets BasicBlock.padding='same', but ResNet sets padding='symmetric' for every block "
            "(bind `ResNet.padding`).",
        ),
        (_set("block", "activation", "swish"), "sets BasicBlock.activation='swish', but ResNet sets activation='relu'"),
        (_set("block", "use_bias", True), "sets BasicBlock.use_bias=True, but ResNet sets use_bias=False"),
        (
            _set("block", "preact", True),
            "sets BasicBlock.preact=True, but ResNet sets preact=False for every block (bind `ResNet.preact`).",
        ),
        (
            _set("block", "kernel_initializer", "he_uniform"),
            "sets BasicBlock.kernel_initializer='he_uniform', but ResNet "
            "sets kernel_initializer={'module': 'keras.initializers'",
        ),
        (
            _set("stem", "padding", "same"),
            "`ResNet.stem` spec sets CifarStem.padding='same', but ResNet sets padding='symmetric' for every stem "
            "(bind `ResNet.padding`).",
        ),
        (_set("stem", "norm", None), f"sets CifarStem.norm=None, but ResNet sets norm={BATCH_NORM} for every stem"),
        # The network's own setting edited, the specs it stored left as they were.
        (_set(None, "activation", "swish"), "sets BasicBlock.activation='relu', but ResNet sets activation='silu'"),
    ],
)
def test_edited_settings_that_the_resnet_imposes_are_refused(resnet20_file, tmp_path, edit, message):
    """ResNet sets these on every block and stem: a stored spec that says otherwise was edited,
    and loading it used to drop the edit silently."""
    with pytest.raises(ValueError) as info:
        keras.models.load_model(edited_copy(resnet20_file, tmp_path, edit))
    assert message in str(info.value)


def test_edited_stem_of_a_preactivation_network_is_refused(tmp_path):
    path = str(tmp_path / "preact.keras")
    resnet.build("cifar/resnet20", ["ResNet.preact = True"]).save(path)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "`ResNet.stem` spec sets CifarStem.activation='relu', but ResNet sets activation=None for every stem "
            "(`ResNet.preact` is True: the stem is a bare conv)."
        ),
    ):
        keras.models.load_model(edited_copy(path, tmp_path, _set("stem", "activation", "relu")))


@pytest.mark.parametrize(
    "bindings, edit, message",
    [
        (
            [],
            _set("block", "groups", 2),
            "shapes differ: stage1/block1/conv1/kernel (3, 3, 16, 16) in the file, (3, 3, 8, 16) in the model",
        ),
        ([], _set("block", "se_ratio", 0.25), "'resnet20' has stage1/block1/se/expand/bias, "),
        (
            [],
            _set("block", "shortcut", {"class_name": "ProjectionShortcut", "config": {"always": True}}),
            "'resnet20' has stage1/block1/shortcut/conv/kernel, ",
        ),
        (
            [],
            _set("stem", "widths", [8]),
            "shapes differ: stage1/block1/conv1/kernel (3, 3, 16, 16) in the file, (3, 3, 8, 16) in the model",
        ),
        (
            [],
            _set(None, "include_top", False),
            "the file holds classifier/bias, classifier/kernel, which 'resnet20' has no place for.",
        ),
        ([], _set(None, "stage_blocks", [3, 3, 2]), "the file holds stage3/block3/conv1/kernel, "),
        (
            ["BasicBlock.se_ratio = 0.25"],
            _set("block", "se_ratio", None),
            "the file holds stage1/block1/se/expand/bias, ",
        ),
    ],
)
def test_edited_settings_that_change_the_weights_are_refused(tmp_path, bindings, edit, message):
    """Keras refuses weights of the wrong shape, but drops weights the rebuilt model has no place
    for without a word: the record of every weight a ResNet saves lets it refuse both."""
    path = str(tmp_path / "model.keras")
    resnet.build("cifar/resnet20", bindings).save(path)
    with pytest.raises(ValueError) as info:
        keras.models.load_model(edited_copy(path, tmp_path, edit))
    text = str(info.value)
    assert "do not fit 'resnet20' as its config builds it (was the config edited?); the file is refused" in text
    assert message in text


def test_settings_that_leave_the_weights_fitting_may_be_edited(resnet20_file, tmp_path):
    """What the weights do not depend on (initialization, the head's dropout) is the file's to say."""

    def edit(config):
        config["block"]["config"]["zero_init_last"] = True
        config["dropout_rate"] = 0.5

    reloaded = keras.models.load_model(edited_copy(resnet20_file, tmp_path, edit))
    original = keras.models.load_model(resnet20_file)
    assert reloaded.block["config"]["zero_init_last"] is True and reloaded.dropout_rate == 0.5
    x = images()
    np.testing.assert_array_equal(np.asarray(reloaded(x)), np.asarray(original(x)))


@pytest.mark.parametrize(
    "bindings",
    [
        [
            "ResNet.norm = 'group'",
            "GroupNorm.groups = 4",
            "ResNet.activation = 'swish'",
            "ResNet.padding = 'same'",
            "ResNet.use_bias = 'auto'",
            "ResNet.kernel_initializer = 'he_uniform'",
        ],
        ["ResNet.preact = True", "ResNet.norm = 'frozen_batch'", "ResNet.activation = 'gelu'"],
    ],
)
def test_network_wide_settings_bound_in_gin_round_trip(tmp_path, bindings):
    """Stored specs repeat the values the ResNet imposes; equal values are accepted on reload."""
    model = resnet.build("cifar/resnet20", bindings)
    randomize_norms(model)
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert reloaded.get_config() == model.get_config()
    x = images()
    np.testing.assert_array_equal(np.asarray(reloaded(x)), np.asarray(model(x)))


def test_a_resnet_built_in_a_name_scope_or_inside_another_model_round_trips(tmp_path):
    """The record of the weights is relative to the ResNet, whatever scope its variables were made in."""
    with keras.name_scope("backbone"):
        scoped = resnet.build("cifar/resnet20")
    assert scoped.weights[0].path.startswith("backbone/")
    inputs = keras.Input((32, 32, 3))
    outer = keras.Model(
        inputs, keras.layers.Dense(2)(resnet.build("cifar/resnet20", ["ResNet.include_top = False"])(inputs))
    )
    x = images()
    for model in (scoped, outer):
        path = str(tmp_path / "model.keras")
        model.save(path)
        np.testing.assert_array_equal(np.asarray(keras.models.load_model(path)(x)), np.asarray(model(x)))


def test_load_weights_of_another_network_changes_nothing(tmp_path):
    """Keras loads the layers that fit before it raises about the others; a ResNet keeps its weights."""
    path = str(tmp_path / "grouped.weights.h5")
    resnet.build("cifar/resnet20", ["BasicBlock.groups = 2"]).save_weights(path)
    model = resnet.build("cifar/resnet20")
    before = [v.numpy().copy() for v in model.weights]
    with pytest.raises(ValueError, match=r"shapes differ: stage1/block1/conv1/kernel \(3, 3, 8, 16\) in the file"):
        model.load_weights(path)
    for variable, old in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(variable.numpy(), old, err_msg=variable.path)


def test_files_saved_without_the_weights_record_still_load(resnet20_file, tmp_path):
    """Files written before ResNets recorded their weights' layout load as they did."""
    import h5py

    with zipfile.ZipFile(resnet20_file) as archive:
        members = {member: archive.read(member) for member in archive.namelist()}
    weights = io.BytesIO(members["model.weights.h5"])
    with h5py.File(weights, "a") as f:
        assert list(f["vars"]) == [resnet.model.LAYOUT_KEY]
        del f["vars"]
    members["model.weights.h5"] = weights.getvalue()
    old = str(tmp_path / "old.keras")
    with zipfile.ZipFile(old, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    x = images()
    np.testing.assert_array_equal(
        np.asarray(keras.models.load_model(old)(x)), np.asarray(keras.models.load_model(resnet20_file)(x))
    )


def test_files_saved_before_specs_listed_what_their_owner_set_still_load(resnet20_file, tmp_path):
    """Stored specs now list the arguments the ResNet set (`set_by_owner`); files without the
    lists load into the same network and config."""

    def forget_owners(config):
        for section in ("block", "stem"):
            assert config[section].pop(resnet.registry.SET_BY_OWNER)

    old = keras.models.load_model(edited_copy(resnet20_file, tmp_path, forget_owners))
    current = keras.models.load_model(resnet20_file)
    assert old.get_config() == current.get_config()
    assert old.block[resnet.registry.SET_BY_OWNER] == sorted(
        ["activation", "kernel_initializer", "kernel_regularizer", "norm", "padding", "preact", "use_bias"]
    )
    x = images()
    np.testing.assert_array_equal(np.asarray(old(x)), np.asarray(current(x)))
