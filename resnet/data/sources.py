"""Every labelled image dataset the project reads, as unbatched `tf.data` pipelines.

Each source is a `DataSource` (see `resnet.data.base` for what a source gives and the two
stages it reads a split in) and lives in the module of its family:

* `resnet.data.in_memory`: `DigitsData` (scikit-learn's digits) and `SyntheticData`;
* `resnet.data.cifar`: `CifarData`, the official CIFAR-10/100 python batches;
* `resnet.data.tfrecord`: `TFRecordData`, ImageNet-format TFRecord shards;
* `resnet.data.image_folder`: `ImageFolderData`, one directory of images per class;
* `resnet.data.tfds`: `TfdsData`, TensorFlow Datasets prepared on local disk.

`TFRecordData` and `ImageFolderData` report or skip corrupt records as
`resnet.data.corrupt_records` describes. Sources are gin configurables:

    Trainer.data = @CifarData()
    CifarData.data_dir = '/data/cifar-10-batches-py'
"""

from resnet.data.base import SPLITS, DataError, DataSource
from resnet.data.cifar import CifarData
from resnet.data.image_folder import IMAGE_EXTENSIONS, ImageFolderData
from resnet.data.in_memory import DigitsData, SyntheticData
from resnet.data.tfds import TfdsData
from resnet.data.tfrecord import TFRecordData

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "CifarData",
    "DataError",
    "DataSource",
    "DigitsData",
    "ImageFolderData",
    "SyntheticData",
    "TFRecordData",
    "TfdsData",
]
