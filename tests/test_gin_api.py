"""gin files through `resnet.parse`: includes by name, their order, and what gin reports."""

import logging
import textwrap

import gin
import pytest

import resnet


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_including_shipped_configs_by_name_logs_nothing(tmp_path, caplog):
    # resnext50_32x4d.gin includes resnet50.gin by name in turn.
    path = _write(
        tmp_path,
        "mine.gin",
        """\
        include 'resnext50_32x4d.gin'
        include 'cifar/resnet20.gin'
        """,
    )
    with caplog.at_level(logging.DEBUG):
        resnet.parse([path, "resnext50_32x4d"])
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert gin.query_parameter("BottleneckBlock.groups") == 32


def test_an_include_takes_effect_where_it_stands(tmp_path):
    path = _write(
        tmp_path,
        "mine.gin",
        """\
        ResNet.num_classes = 7
        ResNet.name = 'before'
        include 'cifar/resnet20.gin'
        ResNet.name = 'after'
        """,
    )
    model = resnet.build(path)
    # resnet20.gin binds both: the include overrides what precedes it, and what follows wins.
    assert model.name == "after" and model.output_shape == (None, 10)


def test_imports_above_an_include_hold_below_it(tmp_path):
    path = _write(
        tmp_path,
        "mine.gin",
        """\
        from __gin__ import dynamic_registration
        import resnet.model
        include 'cifar/resnet20.gin'
        resnet.model.ResNet.num_classes = 7
        """,
    )
    resnet.parse([path])
    assert gin.query_parameter("ResNet.num_classes") == 7


def test_errors_in_an_included_file_name_that_file_and_line(tmp_path):
    inner = _write(
        tmp_path,
        "inner.gin",
        """\
        include 'resnet18.gin'
        BasicBlock.grups = 2
        """,
    )
    outer = _write(
        tmp_path,
        "outer.gin",
        f"""\
        ResNet.num_classes = 10
        include '{inner}'
        """,
    )
    with pytest.raises(ValueError) as info:
        resnet.build(outer)
    message = str(info.value)
    assert message.startswith(f"Invalid gin config {outer}:")
    assert f'In file "{inner}", line 2' in message and "grups" in message


def test_a_missing_include_names_the_file_and_line(tmp_path):
    path = _write(
        tmp_path,
        "mine.gin",
        """\
        ResNet.num_classes = 10
        include 'resnet51.gin'
        """,
    )
    with pytest.raises(ValueError) as info:
        resnet.parse([path])
    message = str(info.value)
    assert "resnet51.gin" in message and f'In file "{path}", line 2' in message


def test_a_file_that_includes_itself_is_refused(tmp_path):
    path = str(tmp_path / "self.gin")
    _write(
        tmp_path,
        "self.gin",
        f"""\
        ResNet.num_classes = 10
        include '{path}'
        """,
    )
    with pytest.raises(ValueError) as info:
        resnet.build(path)
    assert str(info.value) == f"Invalid gin config {path}: include cycle {path} (line 2) -> {path}"


def test_an_include_cycle_names_the_files_and_lines(tmp_path):
    a, b = str(tmp_path / "a.gin"), str(tmp_path / "b.gin")
    _write(tmp_path, "a.gin", f"include '{b}'\n")
    _write(
        tmp_path,
        "b.gin",
        f"""\
        include 'cifar/resnet20.gin'
        include '{a}'
        """,
    )
    with pytest.raises(ValueError) as info:
        resnet.parse([a])
    assert str(info.value) == f"Invalid gin config {a}: include cycle {a} (line 1) -> {b} (line 2) -> {a}"


def test_a_file_included_in_two_branches_is_parsed_twice_as_gin_does(tmp_path):
    base = _write(
        tmp_path,
        "base.gin",
        """\
        ResNet.num_classes = 5
        ResNet.name = 'base'
        """,
    )
    left = _write(
        tmp_path,
        "left.gin",
        f"""\
        include '{base}'
        ResNet.num_classes = 7
        """,
    )
    right = _write(tmp_path, "right.gin", f"include '{base}'\n")
    top = _write(
        tmp_path,
        "top.gin",
        f"""\
        include '{left}'
        include '{right}'
        ResNet.name = 'top'
        """,
    )
    resnet.parse([top])
    ours = gin.config_str()
    # The second parse of base.gin (through right.gin) overrides what left.gin bound after the first.
    assert gin.query_parameter("ResNet.num_classes") == 5 and gin.query_parameter("ResNet.name") == "top"
    gin.clear_config()
    gin.parse_config_file(top)
    assert gin.config_str() == ours


def test_an_undefined_macro_in_a_file_is_named_with_its_file_and_line_at_parse_time(tmp_path):
    inner = _write(
        tmp_path,
        "inner.gin",
        """\
        include 'cifar/resnet20.gin'
        ResNet.num_classes = %NOPE
        """,
    )
    outer = _write(tmp_path, "outer.gin", f"include '{inner}'\n")
    for path in (inner, outer):
        with pytest.raises(ValueError) as info:
            resnet.parse([path])
        assert str(info.value) == (
            f"gin macro %NOPE is used (in {inner}, line 2) but never defined; define it in a gin file or "
            "binding, e.g. `NOPE = <value>`."
        )


def test_undefined_macros_in_bindings_are_named_with_the_binding():
    with pytest.raises(ValueError, match=r"^gin macro %NOPE is used \(in the binding 'ResNet.num_classes = %NOPE'\)"):
        resnet.build("cifar/resnet20", ["ResNet.num_classes = %NOPE"])
    with pytest.raises(ValueError) as info:
        resnet.build("cifar/resnet20", ["ResNet.num_classes = %A", "ResNet.name = %scope/B\nResNet.norm = %A"])
    assert str(info.value).startswith(
        "gin macros %A (in the binding 'ResNet.num_classes = %A'), %scope/B (in the binding 'ResNet.name = %scope/B') "
        "are used but never defined"
    )


def test_a_macro_may_be_defined_anywhere_before_or_after_its_use(tmp_path):
    uses = _write(
        tmp_path,
        "uses.gin",
        """\
        include 'cifar/resnet20.gin'
        ResNet.num_classes = %CLASSES
        ResNet.name = %scope/NAME
        """,
    )
    defines = _write(
        tmp_path,
        "defines.gin",
        """\
        CLASSES = 7
        scope/NAME = 'mine'
        """,
    )
    includes_definitions = _write(
        tmp_path,
        "both.gin",
        f"""\
        include '{uses}'
        include '{defines}'
        """,
    )
    for files, bindings in [
        ([uses, defines], []),
        ([defines, uses], []),
        ([includes_definitions], []),
        ([uses], ["CLASSES = 7", "scope/NAME = 'mine'"]),
        ([uses], ["CLASSES = %SEVEN\nSEVEN = 7", "scope/NAME = 'mine'"]),
    ]:
        gin.clear_config()
        resnet.parse(files, bindings)
        model = gin.get_configurable(resnet.ResNet)()
        assert (model.name, model.output_shape) == ("mine", (None, 7)), (files, bindings)


def test_a_gin_constant_is_a_defined_macro():
    gin.constant("tests.test_gin_api.CONSTANT_CLASSES", 6)
    model = resnet.build("cifar/resnet20", ["ResNet.num_classes = %CONSTANT_CLASSES"])
    assert model.output_shape == (None, 6)


def test_the_cifar_experiment_macro_reaches_cifar_data(tmp_path):
    import resnet.training.trainer  # noqa: F401  (registers Trainer, which the experiment binds)
    from conftest import write_cifar10
    from resnet.data import CifarData

    resnet.parse(["experiments/cifar10_resnet56"])
    assert gin.query_parameter("%CIFAR_DIR") == "cifar-10-batches-py"
    write_cifar10(tmp_path)
    resnet.parse([], [f"CIFAR_DIR = '{tmp_path}'"])
    assert CifarData().data_dir == str(tmp_path)
