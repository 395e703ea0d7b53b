"""Shipped configs: exact parameter counts, MAC counts, and how `resnet.build` handles gin."""

import textwrap

import keras
import pytest

import resnet
from conftest import marked_slow, trainable_count

# Trainable parameters: 1000 classes at 224x224 (ImageNet configs), 10 classes at 32x32 (cifar/).
TRAINABLE_PARAMS = {
    "resnet18": 11_689_512,  # torchvision
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnet200": 64_673_832,  # timm
    "resnext50_32x4d": 25_028_904,  # torchvision
    "wide_resnet50_2": 68_883_240,
    "resnet50d": 25_576_264,  # timm
    "seresnet50": 28_088_024,
    "resnet50_gn": 25_557_032,
    "keras_resnet50": 25_583_592,  # keras.applications.ResNet50
    "keras_resnet50_v2": 25_568_360,  # keras.applications.ResNet50V2
    "keras_resnet101": 44_601_832,  # keras.applications.ResNet101
    "keras_resnet152": 60_268_520,
    "keras_resnet101_v2": 44_577_896,  # keras.applications.ResNet101V2
    "keras_resnet152_v2": 60_236_904,
    "cifar/resnet20": 269_722,  # He et al. 2016, Table 6
    "cifar/resnet32": 464_154,
    "cifar/resnet44": 658_586,
    "cifar/resnet56": 853_018,
    "cifar/resnet110": 1_727_962,
    "cifar/resnet20_b": 272_474,  # option B
    "cifar/resnet20_c": 283_962,  # option C
    "cifar/plain20": 269_722,
    "cifar/plain56": 853_018,
}
# keras.applications' count_params(), which includes the batch-norm statistics.
ALL_PARAMS = {
    "keras_resnet50": 25_636_712,
    "keras_resnet50_v2": 25_613_800,
    "keras_resnet101": 44_707_176,
    "keras_resnet152": 60_419_944,
    "keras_resnet101_v2": 44_675_560,
    "keras_resnet152_v2": 60_380_648,
}


def test_every_shipped_config_has_an_expected_count():
    assert sorted(resnet.available_configs()) == sorted(TRAINABLE_PARAMS)


# The deepest networks (101 layers and more) take seconds to build: they run with the slow tests.
DEEP = ("101", "152", "200")


@pytest.mark.parametrize(
    "name",
    marked_slow(
        sorted(TRAINABLE_PARAMS),
        lambda name: name.endswith(DEEP) or any(name.endswith(f"{depth}_v2") for depth in DEEP),
    ),
)
def test_trainable_parameters_match_reference(name):
    cifar = name.startswith("cifar/")
    size = 32 if cifar else 224
    model = resnet.build(name, [f"ResNet.input_shape = ({size}, {size}, 3)"])
    assert model.output_shape == (None, 10 if cifar else 1000)
    assert trainable_count(model) == TRAINABLE_PARAMS[name]
    if name in ALL_PARAMS:
        assert model.count_params() == ALL_PARAMS[name]


@pytest.mark.parametrize(
    "name, bindings, gmacs",
    [
        # He et al. 2016, Table 1 (stride on the first 1x1 conv, as in the paper).
        ("resnet18", [], 1.81),
        ("resnet34", [], 3.66),
        ("resnet50", ["BottleneckBlock.stride_on = '1x1'"], 3.86),
        pytest.param("resnet101", ["BottleneckBlock.stride_on = '1x1'"], 7.57, marks=pytest.mark.slow),
        pytest.param("resnet152", ["BottleneckBlock.stride_on = '1x1'"], 11.28, marks=pytest.mark.slow),
        # torchvision's ResNet-50 (stride on the 3x3 conv).
        ("resnet50", [], 4.09),
    ],
)
def test_mac_count_matches_paper(name, bindings, gmacs):
    model = resnet.build(name, bindings)
    assert round(resnet.count_macs(model, (224, 224, 3)) / 1e9, 2) == gmacs


def test_count_macs_needs_a_size_for_unsized_models():
    model = resnet.build("resnet18")
    with pytest.raises(ValueError, match="input_shape"):
        resnet.count_macs(model)


def test_configs_resolve_by_name_and_by_path(tmp_path):
    path = resnet.config_path("cifar/resnet56")
    assert path.is_file() and path.name == "resnet56.gin"
    user = tmp_path / "mine.gin"
    user.write_text("include 'cifar/resnet20.gin'\nResNet.num_classes = 7\n")
    model = resnet.build(str(user))
    assert model.name == "resnet20" and model.output_shape == (None, 7)


def test_two_builds_do_not_leak_bindings():
    resnext = resnet.build("resnext50_32x4d")
    plain = resnet.build("resnet50")
    assert trainable_count(resnext) == TRAINABLE_PARAMS["resnext50_32x4d"]
    assert trainable_count(plain) == TRAINABLE_PARAMS["resnet50"]
    assert plain.get_layer("stage1").blocks[0].groups == 1
    # Nothing is left bound after a build: a plain constructor call sees only defaults.
    assert resnet.BottleneckBlock(64).groups == 1


@pytest.mark.parametrize("name", resnet.available_experiments())
def test_every_shipped_experiment_defines_the_macros_it_uses(name):
    import resnet.training.trainer  # noqa: F401  (registers Trainer, which experiments bind)

    resnet.parse([name])  # an undefined macro would be a ValueError here


def test_unknown_config_name_lists_shipped_configs():
    with pytest.raises(ValueError, match=r"Unknown config 'resnet51'.*cifar/resnet56"):
        resnet.build("resnet51")


def _write(tmp_path, text):
    path = tmp_path / "bad.gin"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_unknown_configurable_names_file_line_and_name(tmp_path):
    path = _write(
        tmp_path,
        """\
        include 'resnet18.gin'
        ResNet.num_classes = 10
        ResNett.num_classes = 10
        """,
    )
    with pytest.raises(ValueError) as info:
        resnet.build(path)
    message = str(info.value)
    assert path in message and "line 3" in message and "ResNett" in message


def test_unknown_parameter_names_file_line_and_parameter(tmp_path):
    path = _write(
        tmp_path,
        """\
        include 'resnet18.gin'
        BasicBlock.grups = 2
        """,
    )
    with pytest.raises(ValueError) as info:
        resnet.build(path)
    message = str(info.value)
    assert path in message and "line 2" in message and "grups" in message and "BasicBlock" in message


def test_syntax_error_names_file_and_line(tmp_path):
    path = _write(
        tmp_path,
        """\
        ResNet.num_classes = 10
        ResNet.stage_blocks = (2, 2
        """,
    )
    with pytest.raises(ValueError) as info:
        resnet.build(path)
    message = str(info.value)
    assert path in message and "line" in message and "syntax error" in message


def test_bad_binding_string_is_named():
    with pytest.raises(ValueError, match=r"Invalid gin binding 'ResNet\.nope = 1'.*nope"):
        resnet.build("resnet18", ["ResNet.nope = 1"])


def test_binding_a_network_wide_setting_on_the_block_is_refused():
    with pytest.raises(ValueError, match=r"BottleneckBlock\.norm.*bind it on ResNet"):
        resnet.build("resnet50", ["BottleneckBlock.norm = 'group'"])


def test_binding_a_per_block_setting_on_the_block_is_refused():
    with pytest.raises(ValueError, match=r"BasicBlock\.strides"):
        resnet.build("resnet18", ["BasicBlock.strides = 2"])


def test_gin_built_layers_are_plain_keras_layers():
    model = resnet.build("resnet18")
    block = model.get_layer("stage1").blocks[0]
    assert type(block) is resnet.BasicBlock
    assert keras.saving.get_registered_name(type(block)) == "resnet>BasicBlock"
