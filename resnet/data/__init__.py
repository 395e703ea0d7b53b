"""Reading labelled image datasets and preprocessing their images for training and serving.

>>> from resnet.data import DigitsData, Preprocessing
>>> source, prep = DigitsData(), Preprocessing("cifar", flip=False)
>>> images = source.examples("train").map(lambda image, label: (prep.train(image), label))
"""

from resnet.data.preprocessing import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RECIPES,
    Preprocessing,
)
from resnet.data.sources import (
    CifarData,
    DataError,
    DataSource,
    DigitsData,
    ImageFolderData,
    SyntheticData,
    TfdsData,
    TFRecordData,
)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RECIPES",
    "CifarData",
    "DataError",
    "DataSource",
    "DigitsData",
    "ImageFolderData",
    "Preprocessing",
    "SyntheticData",
    "TFRecordData",
    "TfdsData",
]
