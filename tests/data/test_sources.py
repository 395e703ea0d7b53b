"""`resnet.data.sources` gathers every source family, and every source is a gin configurable."""

import importlib

import gin

import resnet.data
from conftest import write_cifar10
from resnet.data import CifarData, DataSource, DigitsData, SyntheticData, sources

FAMILIES = {
    "in_memory": ["DigitsData", "SyntheticData"],
    "cifar": ["CifarData"],
    "tfrecord": ["TFRecordData"],
    "image_folder": ["ImageFolderData"],
    "tfds": ["TfdsData"],
}


def test_every_source_class_is_importable_from_sources_and_from_resnet_data():
    for family, names in FAMILIES.items():
        module = importlib.import_module(f"resnet.data.{family}")
        for name in names:
            assert getattr(sources, name) is getattr(resnet.data, name) is getattr(module, name)

    def subclasses(cls):
        return {cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))}

    defined = {
        cls.__name__
        for cls in subclasses(DataSource)
        if cls.__module__.startswith("resnet.data.") and not cls.__name__.startswith("_")
    }
    assert defined == {"DataSource", *(name for names in FAMILIES.values() for name in names)}
    assert set(sources.__all__) == defined | {"DataError", "SPLITS", "IMAGE_EXTENSIONS"}


def test_sources_are_gin_configurable(tmp_path):
    write_cifar10(tmp_path, per_batch=1)
    gin.parse_config(f"""
        CifarData.data_dir = '{tmp_path}'
        SyntheticData.image_size = 8
        resnet.DigitsData.image_size = 16
    """)
    assert CifarData().num_examples("train") == 5
    assert SyntheticData().examples("eval").element_spec[0].shape == (8, 8, 3)
    assert DigitsData().examples("eval").element_spec[0].shape == (16, 16, 3)
    gin.parse_config("""
        TFRecordData.label_offset = 1
        resnet.ImageFolderData.skip_corrupt = True
        TfdsData.data_dir = '/data/tfds'
    """)  # gin refuses bindings of unknown configurables or arguments
