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
    path = _write(tmp_path, "mine.gin", """\
        include 'resnext50_32x4d.gin'
        include 'cifar/resnet20.gin'
        """)
    with caplog.at_level(logging.DEBUG):
        resnet.parse([path, "resnext50_32x4d"])
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert gin.query_parameter("BottleneckBlock.groups") == 32


def test_an_include_takes_effect_where_it_stands(tmp_path):
    path = _write(tmp_path, "mine.gin", """\
        ResNet.num_classes = 7
        ResNet.name = 'before'
        include 'cifar/resnet20.gin'
        ResNet.name = 'after'
        """)
    model = resnet.build(path)
    # resnet20.gin binds both: the include overrides what precedes it, and what follows wins.
    assert model.name == "after" and model.output_shape == (None, 10)


def test_imports_above_an_include_hold_below_it(tmp_path):
    path = _write(tmp_path, "mine.gin", """\
        from __gin__ import dynamic_registration
        import resnet.model
        include 'cifar/resnet20.gin'
        resnet.model.ResNet.num_classes = 7
        """)
    resnet.parse([path])
    assert gin.query_parameter("ResNet.num_classes") == 7


def test_errors_in_an_included_file_name_that_file_and_line(tmp_path):
    inner = _write(tmp_path, "inner.gin", """\
        include 'resnet18.gin'
        BasicBlock.grups = 2
        """)
    outer = _write(tmp_path, "outer.gin", f"""\
        ResNet.num_classes = 10
        include '{inner}'
        """)
    with pytest.raises(ValueError) as info:
        resnet.build(outer)
    message = str(info.value)
    assert message.startswith(f"Invalid gin config {outer}:")
    assert f'In file "{inner}", line 2' in message and "grups" in message


def test_a_missing_include_names_the_file_and_line(tmp_path):
    path = _write(tmp_path, "mine.gin", """\
        ResNet.num_classes = 10
        include 'resnet51.gin'
        """)
    with pytest.raises(ValueError) as info:
        resnet.parse([path])
    message = str(info.value)
    assert "resnet51.gin" in message and f'In file "{path}", line 2' in message
