"""Specs: complete resolution, gin precedence, lookups, and user-registered classes."""

import re

import gin
import keras
import numpy as np
import pytest

import resnet
from conftest import images
from resnet.registry import build_from_spec, constructor_parameters, resolve_spec, serialize_value


def test_spec_lists_every_argument_except_those_the_owner_sets():
    spec = resolve_spec("block", "bottleneck", "block")
    params = set(constructor_parameters(resnet.BottleneckBlock))
    owner = set(resnet.BottleneckBlock.owner_args) | {"name", "dtype", "trainable"}
    assert spec["class_name"] == "BottleneckBlock"
    assert set(spec["config"]) == params - owner
    assert spec["config"]["norm"]["class_name"] == "BatchNorm"
    assert spec["config"]["shortcut"] == {
        "class_name": "ProjectionShortcut",
        "config": {"always": False, "project_on_stride": True},
    }


def test_precedence_default_then_gin_then_explicit_then_overrides():
    gin.parse_config("BottleneckBlock.groups = 8\nBottleneckBlock.base_width = 8")
    spec = resolve_spec(
        "block",
        {"class_name": "bottleneck", "config": {"base_width": 16}},
        "block",
        overrides={"activation": "swish"},
        owner="ResNet",
    )
    assert spec["config"]["groups"] == 8  # gin
    assert spec["config"]["base_width"] == 16  # explicit beats gin
    assert spec["config"]["activation"] == "swish"  # owner override
    assert spec["config"]["stride_on"] == "3x3"  # default


def test_explicit_values_that_differ_from_the_owners_are_refused_and_equal_ones_kept():
    spec = {
        "class_name": "bottleneck",
        "config": {"activation": "gelu", "padding": "same", "groups": 2, "norm": "batch"},
    }
    overrides = {"activation": "relu", "padding": "symmetric", "norm": resolve_spec("norm", "batch", "norm")}
    with pytest.raises(
        ValueError,
        match=re.escape(
            "`ResNet.block` spec sets BottleneckBlock.activation='gelu', but ResNet sets activation='relu' for every "
            "block (bind `ResNet.activation`); `ResNet.block` spec sets BottleneckBlock.padding='same', but ResNet "
            "sets padding='symmetric' for every block (bind `ResNet.padding`)."
        ),
    ):
        resolve_spec("block", spec, "ResNet.block", overrides=overrides, owner="ResNet")
    spec["config"].update(activation="relu", padding="symmetric")  # the norm: a name for the owner's resolved spec
    resolved = resolve_spec("block", spec, "ResNet.block", overrides=overrides, owner="ResNet")
    assert resolved["config"]["groups"] == 2 and resolved["config"]["norm"] == overrides["norm"]
    with pytest.raises(
        ValueError,
        match=r"spec sets BottleneckBlock.preact=True, but ResNet sets preact=False for "
        r"every block \(`ResNet.preact` decides\)\.$",
    ):
        resolve_spec(
            "block",
            {"class_name": "bottleneck", "config": {"preact": True}},
            "ResNet.block",
            overrides={"preact": False},
            owner="ResNet",
            hints={"preact": "`ResNet.preact` decides"},
        )


def test_specs_list_what_their_owner_set_and_keep_it_when_resolved_again():
    spec = resolve_spec(
        "block", "basic", "ResNet.block", overrides={"activation": "relu", "padding": "same"}, owner="ResNet"
    )
    assert spec["set_by_owner"] == ["activation", "padding"]
    again = resolve_spec("block", spec, "ResidualStage.block")  # as the stage the ResNet passes it to
    assert again == spec
    assert resolve_spec("block", spec, "ResNet.block", overrides={"norm": "batch"}, owner="ResNet")["set_by_owner"] == [
        "activation",
        "norm",
        "padding",
    ]
    assert "set_by_owner" not in resolve_spec("block", "basic", "block")
    with pytest.raises(
        ValueError,
        match=re.escape("`ResNet.block` spec's 'set_by_owner' must list arguments of BasicBlock (['groups', "),
    ) as caught:
        resolve_spec("block", {"class_name": "basic", "set_by_owner": ["filters"]}, "ResNet.block")
    assert str(caught.value).endswith("; received ['filters'].")
    with pytest.raises(ValueError, match=r"received 'norm'\.$"):
        resolve_spec("block", {"class_name": "basic", "set_by_owner": "norm"}, "ResNet.block")


def test_what_the_owner_set_is_passed_explicitly_not_left_to_gin():
    """A block whose spec says its owner set `norm` and `activation` does not record them as its
    own in the operative config, even where they equal gin's values; the same spec without the
    list records them (what a spec leaves to gin depends on the spec alone)."""
    owned = resolve_spec("block", "basic", "ResNet.block", overrides={"activation": "relu"}, owner="ResNet")
    _build_block(owned)
    operative = gin.operative_config_str()
    assert "BasicBlock.activation" not in operative and "BasicBlock.groups = 1" in operative
    gin.clear_config()
    _build_block(resolve_spec("block", "basic", "block"))
    assert "BasicBlock.activation = 'relu'" in gin.operative_config_str()


def test_serialized_values_carry_no_keras_sharing_marks():
    """Within a save or load Keras marks a config whose object's id it saw before, and the earlier
    config too, in place; stored values must not change after the fact."""
    from keras.src.saving.serialization_lib import ObjectSharingScope

    initializer = keras.initializers.HeNormal()
    with ObjectSharingScope():
        first = serialize_value(initializer)
        second = serialize_value(initializer)
    assert (
        first
        == second
        == {
            "module": "keras.initializers",
            "class_name": "HeNormal",
            "config": {"seed": None, "input_axes": None, "output_axes": None},
            "registered_name": None,
        }
    )


def test_nested_specs_are_resolved_with_gin():
    gin.parse_config("BatchNorm.momentum = 0.5\nProjectionShortcut.always = True")
    spec = resolve_spec("block", resnet.BasicBlock, "block")
    assert spec["config"]["norm"]["config"]["momentum"] == 0.5
    assert spec["config"]["shortcut"]["config"]["always"] is True


def test_gin_reference_resolves_to_the_registered_class():
    gin.parse_config("ResidualStage.block = @BasicBlock")
    stage = gin.get_configurable(resnet.ResidualStage)(num_blocks=1, filters=8)
    stage(keras.ops.ones((1, 8, 8, 8)))  # builds the blocks
    assert type(stage.blocks[0]) is resnet.BasicBlock and stage.block["class_name"] == "BasicBlock"
    with gin.config_scope("backbone"):  # gin passes the same class, unscoped, within a scope
        stage = gin.get_configurable(resnet.ResidualStage)(num_blocks=1, filters=8)
    assert stage.block["class_name"] == "BasicBlock"


def test_unregistered_class_is_explained():
    class Mine(keras.layers.Layer):
        pass

    with pytest.raises(ValueError, match=r"not a registered block.*resnet.register\('block'\)"):
        resolve_spec("block", Mine, "ResNet.block")


def test_unregistered_subclass_is_not_mistaken_for_its_base():
    class TweakedBlock(resnet.BasicBlock):
        pass

    with pytest.raises(ValueError, match=r"TweakedBlock, which is not a registered block"):
        resolve_spec("block", TweakedBlock, "ResNet.block")


def test_user_registered_block_builds_into_a_resnet():
    @resnet.register("block", "wide_basic")
    class WideBasicBlock(resnet.BasicBlock):
        """A BasicBlock with twice the filters."""

        def _branch(self):
            return [(f * 2 if i == 0 else f, k, s, d, g) for i, (f, k, s, d, g) in enumerate(super()._branch())]

    model = resnet.build("cifar/resnet20", ["ResNet.block = 'wide_basic'"])
    block = model.get_layer("stage1").blocks[0]
    assert type(block) is WideBasicBlock and block.convs[0].filters == 32
    clone = resnet.ResNet.from_config(model.get_config())
    assert clone.count_params() == model.count_params()


def test_operative_config_lists_what_nested_layers_used():
    gin.parse_config(
        """
        include 'resnext50_32x4d.gin'
        BatchNorm.momentum = 0.97
        """
    )
    gin.get_configurable(resnet.ResNet)()
    operative = gin.operative_config_str()
    for line in (
        "BottleneckBlock.groups = 32",
        "BottleneckBlock.base_width = 4",
        "BottleneckBlock.stride_on = '3x3'",  # defaults too, as gin records for what it calls
        "BottleneckBlock.shortcut = @ProjectionShortcut",
        "BatchNorm.momentum = 0.97",
        "ProjectionShortcut.always = False",
        "ResNet.stage_blocks = (3, 4, 6, 3)",
    ):
        assert line in operative, line
    # What the ResNet sets on its blocks and stem is its own binding, not theirs: the operative
    # config must not bind it on them, or parsing it back would be refused.
    for setting in ("norm", "activation", "preact", "padding", "use_bias", "kernel_initializer", "kernel_regularizer"):
        assert f"ResNet.{setting} = " in operative, setting
        assert f"BottleneckBlock.{setting} = " not in operative, setting
        assert f"ClassicStem.{setting} = " not in operative, setting
    # The operative config alone rebuilds the same network.
    gin.clear_config()
    gin.parse_config(operative)
    rebuilt = gin.get_configurable(resnet.ResNet)()
    assert rebuilt.get_config()["block"]["config"]["groups"] == 32
    assert sum(int(w.numpy().size) for w in rebuilt.trainable_weights) == 25_028_904


def _build_block(spec, **instance_args):
    block = build_from_spec(
        "block", spec, filters=8, strides=2, dilation=1, first_dilation=1, drop_path_rate=0.0, name="b", **instance_args
    )
    block(images(size=8, channels=8))  # creates the sublayers
    return block


def test_building_from_a_spec_keeps_its_values_and_records_what_gin_supplied():
    gin.parse_config(
        """
        BottleneckBlock.groups = 8
        BottleneckBlock.se_ratio = 0.25
        BatchNorm.momentum = 0.5
        BatchNorm.trainable = False
        """
    )
    spec = resolve_spec("block", {"class_name": "bottleneck", "config": {"groups": 2, "base_width": 64}}, "block")
    block = _build_block(spec)
    assert block.groups == 2 and block.se_ratio == 0.25
    norms = [norm for norm in block.norms if norm is not None]
    assert norms and all(norm.momentum == 0.5 and norm.trainable for norm in norms)  # specs ignore `trainable`
    operative = gin.operative_config_str()
    for line in ("BottleneckBlock.se_ratio = 0.25", "BottleneckBlock.base_width = 64", "BatchNorm.momentum = 0.5"):
        assert line in operative, line
    # Explicit values gin did not supply, and what the owner passes, are not gin's to record.
    for name in ("BottleneckBlock.groups", "BottleneckBlock.filters", "BottleneckBlock.name", "BatchNorm.trainable"):
        assert name not in operative, name


def test_a_spec_builds_the_same_layer_whatever_gin_binds_at_build_time():
    spec = resolve_spec("block", "basic", "block")
    reference = _build_block(spec)
    gin.parse_config(
        """
        BasicBlock.shortcut = @ZeroPadShortcut
        BasicBlock.zero_init_last = True
        BatchNorm.epsilon = 0.1
        """
    )
    block = _build_block(spec)
    assert block.get_config() == reference.get_config()
    block.set_weights(reference.get_weights())
    x = images(size=8, channels=8)
    np.testing.assert_array_equal(np.asarray(block(x)), np.asarray(reference(x)))
    operative = gin.operative_config_str()
    for line in (
        "BasicBlock.shortcut = @ZeroPadShortcut",
        "BasicBlock.zero_init_last = True",
        "BatchNorm.epsilon = 0.1",
    ):
        assert line not in operative, line
