"""Image preprocessing recipes: uint8 images in, normalized float32 tensors out.

Everything is pure TensorFlow, so `Preprocessing.train` and `Preprocessing.eval` run inside
`tf.data` map functions and `Preprocessing.serve` inside an exported SavedModel signature.
Resizing is bilinear (or, by choice, bicubic) with antialiasing: when shrinking, each output
pixel averages the source pixels it covers, as PIL's filters (which torchvision and timm use)
do; when enlarging, it is plain interpolation.
"""

from __future__ import annotations

from collections.abc import Sequence

import gin
import numpy as np
import tensorflow as tf

from resnet.validation import check_choice, check_int

RECIPES = ("cifar", "imagenet", "none")

# The ImageNet statistics every torchvision / timm / keras.applications "torch" model uses.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# Per-channel mean and standard deviation of the pixels of the 50,000 CIFAR-10 training images.
# The often-copied std (0.2023, 0.1994, 0.2010) is not the dataset's pixel std; see the
# discussion in kuangliu/pytorch-cifar issue #19, which computes both.
CIFAR10_MEAN = (0.4914 * 255, 0.4822 * 255, 0.4465 * 255)
CIFAR10_STD = (0.2470 * 255, 0.2435 * 255, 0.2616 * 255)

# Random-resized-crop ranges of Inception / torchvision's RandomResizedCrop.
_CROP_AREA = (0.08, 1.0)
_CROP_ASPECT_RATIO = (3 / 4, 4 / 3)
_CROP_ATTEMPTS = 10


def _check_triple(argument: str, value: object, positive: bool = False) -> tuple[float, float, float]:
    numbers = (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and (v > 0 or not positive) for v in value)
    )
    if not numbers:
        kind = "positive numbers" if positive else "numbers"
        raise ValueError(f"`{argument}` must be 3 {kind}, one per RGB channel; received {value!r}.")
    return tuple(float(v) for v in value)


def _triangle(distance: tf.Tensor) -> tf.Tensor:
    return tf.maximum(0.0, 1.0 - tf.abs(distance))


def _keys_cubic(distance: tf.Tensor) -> tf.Tensor:
    """Keys' cubic convolution kernel with a = -0.5, the bicubic filter of PIL and TensorFlow."""
    x = tf.abs(distance)
    near = (1.5 * x - 2.5) * x * x + 1.0
    far = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
    return tf.where(x < 1.0, near, tf.where(x < 2.0, far, 0.0))


# Interpolation -> (filter, its support radius in source pixels when not shrinking).
_FILTERS = {"bilinear": (_triangle, 1), "bicubic": (_keys_cubic, 2)}
INTERPOLATIONS = tuple(_FILTERS)


def _resize(
    images: tf.Tensor, height: tf.Tensor | int, width: tf.Tensor | int, interpolation: str = "bilinear"
) -> tf.Tensor:
    """Bilinear or bicubic resize with antialiasing of uint8 images [..., H, W, C] to float32.

    The numbers of `tf.image.resize(..., interpolation, antialias=True)` (up to float rounding;
    bicubic results clipped to 0..255),
    built from gathers, multiplies and sums instead of its `ScaleAndTranslate` kernel, which
    neither TFLite's builtin ops nor ONNX have: an exported serving graph converts to both.
    """
    images = tf.cast(images, tf.float32)
    rank = images.shape.rank
    for axis, size in ((rank - 3, height), (rank - 2, width)):
        if isinstance(size, int) and images.shape[axis] == size:
            continue  # resizing to the same length copies exactly; a static graph need not do it
        index, weight = _resize_taps(tf.shape(images)[axis], size, interpolation)
        weight = tf.reshape(weight, tf.concat([tf.shape(weight), tf.ones([rank - 1 - axis], tf.int32)], 0))
        images = tf.reduce_sum(tf.gather(images, index, axis=axis) * weight, axis=axis + 1)
    if interpolation == "bicubic":  # its negative lobes overshoot; PIL's uint8 output is clipped too
        images = tf.clip_by_value(images, 0.0, 255.0)
    return images


def resize_to_fill(images: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """uint8 images [..., H, W, 3] scaled (keeping their aspect ratio) to cover `height` x
    `width`, centre-cropped to it, and rounded back to uint8: what a camera app or a batch job
    would feed a model with a fixed input size.

    >>> resize_to_fill(tf.zeros([300, 400, 3], tf.uint8), 224, 224).shape
    TensorShape([224, 224, 3])
    """
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    source_height, source_width = tf.cast(shape[-3], tf.float64), tf.cast(shape[-2], tf.float64)
    scale = tf.maximum(height / source_height, width / source_width)
    scaled_height = tf.maximum(height, tf.cast(tf.math.ceil(source_height * scale - 1e-6), tf.int32))
    scaled_width = tf.maximum(width, tf.cast(tf.math.ceil(source_width * scale - 1e-6), tf.int32))
    scaled = _resize(images, scaled_height, scaled_width)
    top, left = (scaled_height - height) // 2, (scaled_width - width) // 2
    cropped = scaled[..., top : top + height, left : left + width, :]
    pixels = tf.cast(tf.clip_by_value(tf.round(cropped), 0, 255), tf.uint8)
    return tf.ensure_shape(pixels, images.shape[:-3] + [height, width, 3])


def _resize_taps(length: tf.Tensor, size: tf.Tensor | int, interpolation: str) -> tuple[tf.Tensor, tf.Tensor]:
    """Source indices and weights, both [size, taps], of an antialiased resize of one axis.

    Output pixel `i` samples the source at `(i + 0.5) * length / size`; each source pixel within
    the filter's support weighs `filter(distance / kernel_scale)` (the triangle `1 - |x|` for
    bilinear, Keys' cubic for bicubic), normalized to sum to 1. When shrinking,
    `kernel_scale = length / size` widens the filter so that every source pixel contributes (the
    antialiasing); when enlarging it is 1, plain interpolation. Taps past the image's end get
    weight 0 (their index is clamped only to keep the gather in range).
    """
    kernel, radius = _FILTERS[interpolation]
    length_float = tf.cast(length, tf.float32)
    inverse_scale = 1.0 / (tf.cast(size, tf.float32) / length_float)
    kernel_scale = tf.maximum(inverse_scale, 1.0)
    taps = tf.minimum(2 * tf.cast(tf.math.ceil(radius * kernel_scale), tf.int32) + 1, length)
    sample = (tf.range(size, dtype=tf.float32) + 0.5) * inverse_scale
    start = tf.clip_by_value(tf.cast(tf.math.ceil(sample - radius * kernel_scale - 0.5), tf.int32), 0, length - 1)
    index = start[:, None] + tf.range(taps)[None, :]
    distance = (tf.cast(index, tf.float32) + 0.5 - sample[:, None]) / kernel_scale
    weight = kernel(distance) * tf.cast(index < length, tf.float32)
    return tf.minimum(index, length - 1), weight / tf.reduce_sum(weight, axis=1, keepdims=True)


@gin.configurable(module="resnet")
class Preprocessing:
    """Augmentation and normalization for training, evaluation and serving.

    Recipes:

    * "cifar" (He et al. 2016, sec. 4.2): train zero-pads `pad` pixels on each side (black, in
      pixel space, before normalization), takes a random `image_size` crop and, if `flip`, flips
      half the images horizontally. Eval only normalizes (after resizing to `image_size` if the
      image is another size).
    * "imagenet": train takes a random crop covering 8%..100% of the image with aspect ratio in
      [3/4, 4/3] (`tf.image.stateless_sample_distorted_bounding_box`; the whole image if no such
      crop is found in 10 tries), resizes it to `image_size` and, if `flip`, flips half the
      images. Eval resizes the shorter side to `round(image_size / crop_fraction)` (256 for 224,
      the longer side in proportion, rounded down as torchvision does) and takes the central
      `image_size` crop (offsets rounded down).
    * "none": train and eval both resize to `image_size` x `image_size` (if needed) and normalize.

    Every output is float32 `(x - mean) / std` with `x` in 0..255. Training draws its random
    numbers with stateless ops from a seed, `train(image, seed)`, so an augmentation can be
    reproduced exactly (`InputPipeline` derives the seed from its own seed, the epoch and the
    image's position in the epoch).

    Args:
        recipe: One of "cifar", "imagenet", "none".
        image_size: Side of the square output.
        mean: Per-channel mean subtracted, on the 0..255 scale.
        std: Per-channel standard deviation divided by, on the 0..255 scale.
        flip: Random horizontal flips when training ("cifar" and "imagenet").
        pad: Zero padding on each side before the random crop ("cifar").
        crop_fraction: Share of the resized eval image kept by the central crop ("imagenet").
        interpolation: How images are resized, "bilinear" or "bicubic" (timm's weights are
            evaluated with bicubic, torchvision's with bilinear).

    Example:

    >>> prep = Preprocessing("imagenet", image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    >>> image = tf.zeros([375, 500, 3], tf.uint8)
    >>> prep.train(image).shape, prep.eval(image).shape
    (TensorShape([224, 224, 3]), TensorShape([224, 224, 3]))
    >>> prep.serve(tf.zeros([4, 300, 300, 3], tf.uint8)).shape
    TensorShape([4, 224, 224, 3])
    >>> image = tf.random.uniform([375, 500, 3], maxval=256, dtype=tf.int32)
    >>> image = tf.cast(image, tf.uint8)
    >>> bool(tf.reduce_all(prep.train(image, seed=[7, 0]) == prep.train(image, seed=[7, 0])))
    True
    """

    def __init__(
        self,
        recipe: str = "cifar",
        image_size: int = 32,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        flip: bool = True,
        pad: int = 4,
        crop_fraction: float = 0.875,
        interpolation: str = "bilinear",
    ):
        self.recipe = check_choice("recipe", recipe, RECIPES)
        self.image_size = check_int("image_size", image_size)
        self.mean = _check_triple("mean", mean)
        self.std = _check_triple("std", std, positive=True)
        if not isinstance(flip, bool):
            raise ValueError(f"`flip` must be True or False; received {flip!r}.")
        self.flip = flip
        self.pad = check_int("pad", pad, minimum=0)
        if isinstance(crop_fraction, bool) or not (isinstance(crop_fraction, (int, float)) and 0 < crop_fraction <= 1):
            raise ValueError(f"`crop_fraction` must be a number in (0, 1]; received {crop_fraction!r}.")
        self.crop_fraction = float(crop_fraction)
        self.interpolation = check_choice("interpolation", interpolation, INTERPOLATIONS)

    @property
    def serving_size(self) -> tuple[int, int]:
        """The image size (height, width) that the evaluation preprocessing takes without resizing:
        `image_size` square, or for "imagenet" the square whose centre crop it is
        (`round(image_size / crop_fraction)`). Exports with a fixed input size use it."""
        side = round(self.image_size / self.crop_fraction) if self.recipe == "imagenet" else self.image_size
        return side, side

    def train(self, image: tf.Tensor, seed: tf.Tensor | Sequence[int] | None = None) -> tf.Tensor:
        """Randomly augments one uint8 image [H, W, 3] into float32 [image_size, image_size, 3].

        Args:
            image: The image, uint8 [H, W, 3].
            seed: The seed of the augmentation, int32 or int64 of shape [2] (a seed of
                TensorFlow's stateless random ops): the output depends on `image` and `seed`
                only, the same on every call, run and machine, however parallel the `tf.data`
                map it runs in. None draws a fresh seed from TensorFlow's global random state
                (seeded by `tf.random.set_seed`), so each call augments differently.
        """
        image = self._check(image, rank=3, method="train")
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(self._check_seed(seed), 2))
        if self.recipe == "cifar":
            padding = [[self.pad, self.pad], [self.pad, self.pad], [0, 0]]
            padded = tf.pad(self._resize_if_needed(image), padding)
            image = tf.image.stateless_random_crop(padded, [self.image_size, self.image_size, 3], seed=crop_seed)
        elif self.recipe == "imagenet":
            image = self._random_resized_crop(image, crop_seed)
        else:
            image = self._resize_if_needed(image)
        if self.flip and self.recipe != "none":
            image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
        return self._normalize(image)

    def eval(self, image: tf.Tensor) -> tf.Tensor:
        """Deterministically maps one uint8 image [H, W, 3] to float32 [image_size, image_size, 3]."""
        return self._eval(self._check(image, rank=3, method="eval"))

    def serve(self, images: tf.Tensor) -> tf.Tensor:
        """`eval` on a batch of uint8 images [B, H, W, 3] -> float32 [B, image_size, image_size, 3].

        Gives the same numbers as `eval` on each image, without `tf.map_fn`, for use inside an
        exported SavedModel signature.
        """
        return self._eval(self._check(images, rank=4, method="serve"))

    def _check(self, images: tf.Tensor, rank: int, method: str) -> tf.Tensor:
        images = tf.convert_to_tensor(images)
        layout = "[H, W, 3]" if rank == 3 else "[B, H, W, 3]"
        if images.dtype != tf.uint8 or images.shape.rank not in (None, rank) or images.shape[-1] not in (None, 3):
            raise ValueError(
                f"`Preprocessing.{method}` expects uint8 images {layout}; received {images.dtype.name} "
                f"of shape {images.shape}."
            )
        return images

    @staticmethod
    def _check_seed(seed: tf.Tensor | Sequence[int] | None) -> tf.Tensor:
        if seed is None:
            return tf.random.uniform([2], maxval=tf.int64.max, dtype=tf.int64)
        try:
            tensor = tf.convert_to_tensor(seed)
        except (TypeError, ValueError):
            tensor = None
        if tensor is None or tensor.dtype not in (tf.int32, tf.int64) or not tensor.shape.is_compatible_with([2]):
            raise ValueError(f"`seed` must be None or 2 integers (int32 or int64, shape [2]); received {seed!r}.")
        return tf.cast(tensor, tf.int64)  # an int32 seed and the same numbers in int64 augment alike

    def _eval(self, images: tf.Tensor) -> tf.Tensor:
        """The eval recipe on one image [H, W, 3] or a batch [B, H, W, 3]."""
        if self.recipe != "imagenet":
            return self._normalize(self._resize_if_needed(images))
        size = self.image_size
        shape = tf.shape(images)
        # Static sizes where known, so a fixed-size serving graph resizes only what it must.
        height = images.shape[-3] if images.shape[-3] is not None else shape[-3]
        width = images.shape[-2] if images.shape[-2] is not None else shape[-2]
        target = round(size / self.crop_fraction)
        static = isinstance(height, int) and isinstance(width, int)
        shorter = min(height, width) if static else tf.minimum(height, width)
        resized_height, resized_width = target * height // shorter, target * width // shorter
        resized = _resize(images, resized_height, resized_width, self.interpolation)
        top = (resized_height - size) // 2
        left = (resized_width - size) // 2
        cropped = resized[..., top : top + size, left : left + size, :]
        return self._normalize(tf.ensure_shape(cropped, images.shape[:-3] + [size, size, 3]))

    def _resize_if_needed(self, images: tf.Tensor) -> tf.Tensor:
        """Resizes to image_size x image_size unless the static shape says it already is.

        Bilinear resizing to an image's own size is an exact copy, so the result does not depend
        on whether the size was known statically.
        """
        size = self.image_size
        if images.shape[-3] == size and images.shape[-2] == size:
            return images
        return tf.ensure_shape(_resize(images, size, size, self.interpolation), images.shape[:-3] + [size, size, 3])

    def _random_resized_crop(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image),
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=seed,
            min_object_covered=0.0,
            aspect_ratio_range=_CROP_ASPECT_RATIO,
            area_range=_CROP_AREA,
            max_attempts=_CROP_ATTEMPTS,
            use_image_if_no_bounding_boxes=True,
        )
        crop = tf.slice(image, begin, crop_size)
        resized = _resize(crop, self.image_size, self.image_size, self.interpolation)
        return tf.ensure_shape(resized, [self.image_size, self.image_size, 3])

    def _normalize(self, images: tf.Tensor) -> tf.Tensor:
        # Multiplying by the reciprocal, not dividing: graph optimizers rewrite a division by a
        # constant that way, and eager and graph results must agree to the bit.
        mean = tf.constant(self.mean, tf.float32)
        inverse_std = tf.constant(1.0 / np.array(self.std, np.float32))
        return (tf.cast(images, tf.float32) - mean) * inverse_std
