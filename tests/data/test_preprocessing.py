"""Preprocessing recipes: shapes, normalization numbers, crop geometry and serve == eval."""

import itertools

import gin
import numpy as np
import pytest
import tensorflow as tf

from resnet.data import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, Preprocessing


def image(height: int, width: int, seed: int = 0) -> tf.Tensor:
    return tf.constant(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def pixels(prep: Preprocessing, normalized: tf.Tensor) -> np.ndarray:
    """Undoes the normalization, back to 0..255 values."""
    return normalized.numpy() * np.array(prep.std) + np.array(prep.mean)


@pytest.mark.parametrize("recipe", ["cifar", "imagenet", "none"])
@pytest.mark.parametrize("height, width", [(32, 32), (45, 60), (70, 21)])
def test_every_recipe_gives_float32_images_of_image_size(recipe, height, width):
    prep = Preprocessing(recipe, image_size=24)
    for method in (prep.train, prep.eval):
        out = method(image(height, width))
        assert out.dtype == tf.float32 and out.shape == (24, 24, 3)
        assert np.isfinite(out.numpy()).all()


def test_normalization_of_a_constant_image():
    constant = tf.fill([32, 32, 3], tf.constant(128, tf.uint8))
    expected = (128 - np.array(CIFAR10_MEAN)) / np.array(CIFAR10_STD)
    np.testing.assert_allclose(
        Preprocessing().eval(constant).numpy(), np.broadcast_to(expected, (32, 32, 3)), rtol=1e-6
    )
    prep = Preprocessing("imagenet", image_size=16, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    expected = (128 - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])
    for method in (prep.train, prep.eval):  # any crop or resize of a constant image is that constant
        np.testing.assert_allclose(
            method(tf.fill([40, 50, 3], tf.constant(128, tf.uint8))).numpy()[5, 5], expected, rtol=1e-5
        )


def test_cifar_train_is_a_shifted_window_of_the_zero_padded_image_and_flips_half():
    original = image(32, 32)
    padded = np.pad(original.numpy(), [(4, 4), (4, 4), (0, 0)])
    windows = {(dy, dx): padded[dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)}
    tf.random.set_seed(0)
    no_flip = Preprocessing(flip=False)
    seen = set()
    for _ in range(30):
        out = np.round(pixels(no_flip, no_flip.train(original)))
        matches = [offset for offset, window in windows.items() if np.array_equal(out, window)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 10  # the offset is random
    flip = Preprocessing(pad=0)
    outs = [np.round(pixels(flip, flip.train(original))) for _ in range(30)]
    flipped = sum(np.array_equal(out, original.numpy()[:, ::-1]) for out in outs)
    assert all(np.array_equal(out, original) or np.array_equal(out, original.numpy()[:, ::-1]) for out in outs)
    assert 5 < flipped < 25


def test_cifar_eval_resizes_only_other_sizes():
    prep = Preprocessing()
    original = image(32, 32)
    np.testing.assert_allclose(np.round(pixels(prep, prep.eval(original))), original.numpy())
    np.testing.assert_array_equal(prep.train(original).shape, prep.eval(image(20, 50)).shape)


@pytest.mark.parametrize("portrait", [True, False])
def test_imagenet_eval_resizes_the_shorter_side_to_256_and_crops_the_centre(portrait):
    # A ramp along the longer side: bilinear resizing keeps it linear away from the borders, so
    # every output pixel is known. 200 x 300 -> 256 x 384 (shorter side 256), crop offset 16 / 80.
    ramp = np.broadcast_to(np.arange(300, dtype=np.float64) * 0.8, (200, 300))
    source = ramp.T if portrait else ramp
    prep = Preprocessing("imagenet", image_size=224, mean=(0, 0, 0), std=(1, 1, 1))
    out = prep.eval(tf.constant(np.repeat(source[..., None], 3, -1).astype(np.uint8))).numpy()
    assert out.shape == (224, 224, 3)
    along = np.arange(224) + 80  # positions in the 384-long resized side
    # Enlarging is plain bilinear interpolation, sampled at half-pixel centres.
    expected = np.interp((along + 0.5) * 300 / 384 - 0.5, np.arange(300), np.floor(np.arange(300) * 0.8))
    profile = out[:, 100, 0] if portrait else out[100, :, 0]
    across = out[100, :, 0] if portrait else out[:, 100, 0]
    np.testing.assert_allclose(profile, expected, atol=1e-3)
    assert np.ptp(across) < 1e-3  # constant along the shorter side


def test_imagenet_crop_fraction_sets_the_resize():
    prep = Preprocessing("imagenet", image_size=10, crop_fraction=0.5, mean=(0, 0, 0), std=(1, 1, 1))
    # 20 x 20 resized to round(10 / 0.5) = 20: unchanged, so the centre crop is rows/cols 5..14.
    original = image(20, 20)
    np.testing.assert_allclose(prep.eval(original).numpy(), original.numpy()[5:15, 5:15], atol=1e-4)


@pytest.mark.parametrize("recipe", ["cifar", "imagenet", "none"])
def test_serve_equals_eval_on_each_image(recipe):
    prep = Preprocessing(recipe, image_size=24)
    batch = tf.stack([image(37, 50, seed=s) for s in range(3)])
    served = prep.serve(batch)
    assert served.shape == (3, 24, 24, 3) and served.dtype == tf.float32
    for k in range(3):
        np.testing.assert_array_equal(served[k].numpy(), prep.eval(batch[k]).numpy())
    signature = tf.function(prep.serve, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    np.testing.assert_array_equal(signature(batch).numpy(), served.numpy())


def test_recipes_trace_inside_tf_data_with_unknown_sizes():
    images = tf.data.Dataset.from_generator(
        lambda: (image(20 + k, 30 - k, seed=k) for k in range(4)),
        output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
    )
    for recipe in ("cifar", "imagenet", "none"):
        prep = Preprocessing(recipe, image_size=16)
        for method in (prep.train, prep.eval):
            batches = images.map(method, num_parallel_calls=tf.data.AUTOTUNE).batch(4)
            assert batches.element_spec.shape.as_list() == [None, 16, 16, 3]
            assert next(iter(batches)).shape == (4, 16, 16, 3)


@pytest.mark.parametrize("recipe", ["cifar", "imagenet"])
def test_train_with_a_seed_depends_on_the_image_and_seed_only(recipe):
    prep = Preprocessing(recipe, image_size=16, pad=4)
    original = image(30, 40)
    first = prep.train(original, seed=[3, 9]).numpy()
    np.testing.assert_array_equal(prep.train(original, seed=tf.constant([3, 9], tf.int64)).numpy(), first)
    seeds = tf.data.Dataset.range(12).map(lambda i: tf.stack([tf.constant(3, tf.int64), i]))
    mapped = seeds.map(lambda seed: prep.train(original, seed=seed), num_parallel_calls=4, deterministic=True)
    outputs = [out.numpy() for out in mapped]
    np.testing.assert_array_equal(outputs[9], first)  # the same in a parallel tf.data map as eagerly
    assert len({out.tobytes() for out in outputs}) >= 8  # other seeds, other crops and flips


def test_train_flips_with_seeds_and_refuses_bad_seeds():
    prep = Preprocessing(pad=0)
    original = image(32, 32)
    flipped = [
        np.array_equal(np.round(pixels(prep, prep.train(original, seed=[0, k]))), original.numpy()[:, ::-1])
        for k in range(30)
    ]
    assert 5 < sum(flipped) < 25
    for bad in ([1.0, 2.0], [1, 2, 3], 7, "seed"):
        with pytest.raises(
            ValueError, match=r"`seed` must be None or 2 integers \(int32 or int64, shape \[2\]\); received"
        ):
            prep.train(original, seed=bad)


def test_none_recipe_is_deterministic_and_ignores_flip():
    prep = Preprocessing("none", image_size=16, flip=True)
    original = image(30, 40)
    np.testing.assert_array_equal(prep.train(original).numpy(), prep.eval(original).numpy())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"recipe": "inception"}, r"`recipe` must be one of 'cifar', 'imagenet', 'none'; received 'inception'"),
        ({"image_size": 0}, r"`image_size` must be an integer >= 1; received 0"),
        ({"mean": (1, 2)}, r"`mean` must be 3 numbers, one per RGB channel; received \(1, 2\)"),
        ({"std": (1, 0, 1)}, r"`std` must be 3 positive numbers"),
        ({"flip": "yes"}, r"`flip` must be True or False; received 'yes'"),
        ({"pad": -1}, r"`pad` must be an integer >= 0; received -1"),
        ({"crop_fraction": 1.5}, r"`crop_fraction` must be a number in \(0, 1\]; received 1.5"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Preprocessing(**kwargs)


def test_bad_images_are_refused():
    prep = Preprocessing()
    with pytest.raises(ValueError, match=r"`Preprocessing.eval` expects uint8 images \[H, W, 3\]; received float32"):
        prep.eval(tf.zeros([32, 32, 3]))
    with pytest.raises(ValueError, match=r"`Preprocessing.serve` expects uint8 images \[B, H, W, 3\]; .*\(32, 32, 3\)"):
        prep.serve(tf.zeros([32, 32, 3], tf.uint8))
    with pytest.raises(ValueError, match=r"`Preprocessing.train` expects .* shape \(32, 32, 1\)"):
        prep.train(tf.zeros([32, 32, 1], tf.uint8))


def test_preprocessing_is_gin_configurable():
    gin.parse_config("""
        Preprocessing.recipe = 'imagenet'
        resnet.Preprocessing.image_size = 64
        Preprocessing.std = (1, 2, 3)
    """)
    prep = Preprocessing()
    assert (prep.recipe, prep.image_size, prep.std) == ("imagenet", 64, (1.0, 2.0, 3.0))


def test_resizing_gives_tf_image_resize_antialias_numbers_from_convertible_ops():
    from resnet.data.preprocessing import _resize

    rng = np.random.default_rng(3)
    for height, width, new_height, new_width in [(37, 50, 24, 24), (20, 30, 45, 61), (300, 17, 31, 40), (5, 5, 5, 5)]:
        images = tf.constant(rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8))
        expected = tf.image.resize(images, [new_height, new_width], method="bilinear", antialias=True).numpy()
        np.testing.assert_allclose(_resize(images, new_height, new_width).numpy(), expected, atol=1e-3)
        np.testing.assert_allclose(_resize(images[0], new_height, new_width).numpy(), expected[0], atol=1e-3)
        bicubic = tf.image.resize(images, [new_height, new_width], method="bicubic", antialias=True)
        expected = tf.clip_by_value(bicubic, 0, 255).numpy()  # its overshoot clipped, as PIL's uint8 output is
        np.testing.assert_allclose(_resize(images, new_height, new_width, "bicubic").numpy(), expected, atol=1e-3)
    for recipe, interpolation in itertools.product(("cifar", "imagenet", "none"), ("bilinear", "bicubic")):
        serve = tf.function(Preprocessing(recipe, image_size=24, interpolation=interpolation).serve)
        graph = serve.get_concrete_function(tf.TensorSpec([None, None, None, 3], tf.uint8)).graph
        ops = {op.type for op in graph.get_operations()}
        assert "GatherV2" in ops and not ops & {"ScaleAndTranslate", "ResizeBilinear"}, ops


def test_a_fixed_size_serving_graph_resizes_only_what_it_must():
    prep = Preprocessing("imagenet", image_size=24, crop_fraction=0.75)
    assert prep.serving_size == (32, 32) and Preprocessing("cifar", image_size=24).serving_size == (24, 24)
    for size, resizes in (((32, 32), False), ((32, 40), False), ((30, 40), True), ((48, 48), True)):
        graph = tf.function(prep.serve).get_concrete_function(tf.TensorSpec([None, *size, 3], tf.uint8)).graph
        assert ("GatherV2" in {op.type for op in graph.get_operations()}) == resizes, size
        batch = tf.stack([image(*size, seed=s) for s in range(2)])
        np.testing.assert_array_equal(prep.serve(batch).numpy()[1], prep.eval(batch[1]).numpy())


def test_resize_to_fill_keeps_the_aspect_ratio_and_crops_the_centre():
    from resnet.data.preprocessing import resize_to_fill

    original = image(20, 40)
    np.testing.assert_array_equal(resize_to_fill(original, 20, 20).numpy(), original.numpy()[:, 10:30])
    assert resize_to_fill(tf.stack([original] * 2), 10, 30).shape == (2, 10, 30, 3)
    assert resize_to_fill(original, 10, 30).dtype == tf.uint8


def test_interpolation_is_bilinear_unless_bicubic_is_asked_for():
    image = tf.constant(np.random.default_rng(5).integers(0, 256, (37, 50, 3), dtype=np.uint8))
    bilinear = Preprocessing("imagenet", image_size=24).eval(image)
    bicubic = Preprocessing("imagenet", image_size=24, interpolation="bicubic").eval(image)
    assert not np.allclose(bilinear.numpy(), bicubic.numpy(), atol=1e-2)
    assert Preprocessing("imagenet", image_size=24, interpolation="bicubic").train(image, seed=[1, 2]).shape == (
        24,
        24,
        3,
    )
    with pytest.raises(ValueError, match="`interpolation` must be one of 'bilinear', 'bicubic'; received 'nearest'"):
        Preprocessing(interpolation="nearest")
