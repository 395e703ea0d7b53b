"""InputPipeline: order fixed by (seed, pass) and augmentation by (seed, epoch), exact mid-epoch
resume that decodes nothing it skips, full training batches, short epochs that go on through the
data, evaluation in order, and checked arguments."""

import gc
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import random_images, write_cifar10
from data_files import example
from resnet.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CifarData,
    DataSource,
    ImageFolderData,
    Preprocessing,
    SyntheticData,
    TFRecordData,
)
from resnet.data.pipeline import InputPipeline

CIFAR = dict(recipe="cifar", image_size=12, pad=3)  # random shifts and flips
IMAGENET = dict(recipe="imagenet", image_size=12)  # random resized crops and flips
PLAIN = dict(recipe="none", image_size=8, mean=(0, 0, 0), std=(1, 1, 1))  # no augmentation: pixels as read


def batches(dataset: tf.data.Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(images.numpy(), labels.numpy()) for images, labels in dataset]


def assert_same(actual, expected) -> None:
    assert len(actual) == len(expected)
    for (images, labels), (want_images, want_labels) in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(labels, want_labels)
        np.testing.assert_array_equal(images, want_images)


def epoch_labels(pipe: InputPipeline, **kwargs) -> list[int]:
    return [int(label) for _, labels in batches(pipe.train(**kwargs)) for label in labels]


class Numbered(DataSource):
    """Examples labelled with their index in the split ('eval' from 100 on), in 8x8 images of that
    value: the labels of an epoch show its order. `counted=False` hides the split sizes, as
    TFRecordData does."""

    name, num_classes = "numbered", 200

    def __init__(self, train_examples: int = 30, eval_examples: int = 10, counted: bool = True):
        self._sizes = {"train": train_examples, "eval": eval_examples}
        self._counted = counted

    def _records(self, split):
        labels = np.arange(self._sizes[split], dtype=np.int32) + (100 if split == "eval" else 0)
        images = np.broadcast_to(labels[:, None, None, None], (len(labels), 8, 8, 3)).astype(np.uint8)
        return tf.data.Dataset.from_tensor_slices((images, labels))

    def _num_examples(self, split):
        return self._sizes[split] if self._counted else None


def write_jpeg_shards(directory, shards: int = 3, per_shard: int = 8, corrupt: tuple[int, int] | None = None) -> str:
    """JPEG shards whose records all have distinct labels (shard * per_shard + record), so a
    label tells where a record landed; `corrupt` = (shard, record) gets bytes that are no image."""
    for s in range(shards):
        with tf.io.TFRecordWriter(os.path.join(directory, f"train-{s:05d}-of-{shards:05d}")) as writer:
            for r in range(per_shard):
                image = random_images(1, 14 + r, 18 - s, seed=100 + 10 * s + r)[0]
                encoded = b"\xff\xd8 not a jpeg" if corrupt == (s, r) else tf.io.encode_jpeg(image).numpy()
                writer.write(example(encoded, s * per_shard + r))
    return os.path.join(directory, "train-*")


def tfrecord_source(directory, skip_corrupt: bool = False, **kwargs) -> TFRecordData:
    pattern = write_jpeg_shards(directory, **kwargs)
    return TFRecordData(pattern, pattern, num_classes=24, skip_corrupt=skip_corrupt)


def array_source(directory) -> CifarData:
    write_cifar10(directory, per_batch=6)  # 30 training images
    return CifarData(str(directory))


def synthetic_source() -> SyntheticData:
    return SyntheticData(train_examples=30, eval_examples=10, image_size=12, num_classes=5)


# Resuming ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "uncached"])
@pytest.mark.parametrize("kind", ["arrays", "synthetic"])
def test_resumed_epoch_is_the_tail_of_the_full_epoch_bit_for_bit(tmp_path, kind, cache):
    source = array_source(tmp_path) if kind == "arrays" else synthetic_source()
    pipe = InputPipeline(source, Preprocessing(**CIFAR), batch_size=4, seed=5, cache=cache, shuffle_buffer=10)
    full = batches(pipe.train(epoch=2))
    assert len(full) == pipe.steps_per_epoch() == 7
    for skip in (1, 4, 6):
        assert_same(batches(pipe.train(epoch=2, skip_steps=skip)), full[skip:])
    assert batches(pipe.train(epoch=2, skip_steps=7)) == []


@pytest.mark.slow
def test_resumed_tfrecord_epoch_with_augmentation_is_the_tail_and_cache_changes_nothing(tmp_path):
    source = tfrecord_source(tmp_path)
    prep = Preprocessing(**IMAGENET)
    uncached = InputPipeline(source, prep, batch_size=4, seed=1, cache=False, shuffle_buffer=6)
    full = batches(uncached.train(epoch=1))
    assert len(full) == 6 and sorted(np.concatenate([labels for _, labels in full])) == list(range(24))
    for skip in (1, 3, 5):
        assert_same(batches(uncached.train(epoch=1, skip_steps=skip)), full[skip:])
    cached = InputPipeline(source, prep, batch_size=4, seed=1, cache=True, shuffle_buffer=6)
    assert_same(batches(cached.train(epoch=1, skip_steps=3)), full[3:])  # fills the cache
    assert_same(batches(cached.train(epoch=1)), full)
    assert_same(batches(cached.train(epoch=1, skip_steps=3)), full[3:])  # from the filled cache


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "uncached"])
def test_a_fresh_pipeline_resumed_at_any_step_gives_the_tail_of_the_epoch(cache):
    def pipeline():  # a new source and pipeline for each call, as in a restarted process
        return InputPipeline(Numbered(), Preprocessing(**PLAIN), batch_size=4, seed=1, cache=cache, shuffle_buffer=16)

    full = epoch_labels(pipeline(), epoch=5)
    for skip in range(8):
        assert epoch_labels(pipeline(), epoch=5, skip_steps=skip) == full[4 * skip :]


@pytest.mark.slow
def test_resume_skips_a_corrupt_tfrecord_before_the_resume_point_without_decoding_it(tmp_path):
    (tmp_path / "clean").mkdir()
    (tmp_path / "corrupt").mkdir()
    clean = InputPipeline(
        tfrecord_source(tmp_path / "clean"),
        Preprocessing(**IMAGENET),
        batch_size=4,
        seed=2,
        cache=False,
        shuffle_buffer=6,
    )
    order = epoch_labels(clean, epoch=0)
    corrupt = 1 * 8 + 5  # the label of record 5 of shard 1
    position = order.index(corrupt)  # where it lands in epoch 0
    assert 4 <= position < 20  # neither in the first nor the last batch
    step = position // 4
    source = tfrecord_source(tmp_path / "corrupt", corrupt=(1, 5))
    pipe = InputPipeline(source, Preprocessing(**IMAGENET), batch_size=4, seed=2, cache=False, shuffle_buffer=6)
    # Resumed past it: never read, never reported, and the rest of the epoch is the clean one.
    assert_same(batches(pipe.train(epoch=0, skip_steps=step + 1)), batches(clean.train(epoch=0, skip_steps=step + 1)))
    # Resumed before it: reported by shard and record, after the shuffle as before it.
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"could not read or decode .*train-00001-of-00003 \(record 5\)"
    ):
        batches(pipe.train(epoch=0, skip_steps=step))
    skipping = InputPipeline(
        tfrecord_source(tmp_path / "corrupt", skip_corrupt=True, corrupt=(1, 5)),
        Preprocessing(**IMAGENET),
        batch_size=4,
        seed=2,
        cache=False,
        shuffle_buffer=6,
    )
    assert epoch_labels(skipping, epoch=0, skip_steps=step + 1) == order[4 * (step + 1) :]
    assert skipping.source.skipped_count("train") == 0
    assert (
        epoch_labels(skipping, epoch=0, skip_steps=step)
        == [label for label in order[4 * step :] if label != corrupt][:-3]
    )
    assert skipping.source.skipped_count("train") == 1


def test_resume_skips_a_corrupt_image_file_before_the_resume_point(tmp_path):
    # One image per class directory: each label names its file.
    for c in range(10):
        os.makedirs(tmp_path / "train" / f"class{c}")
        image = random_images(1, 6 + c, 7, seed=c)[0]
        (tmp_path / "train" / f"class{c}" / "image.png").write_bytes(tf.io.encode_png(image).numpy())
    train = str(tmp_path / "train")
    prep = Preprocessing(**CIFAR)
    order = epoch_labels(
        InputPipeline(ImageFolderData(train, train), prep, batch_size=2, seed=0, cache=False, shuffle_buffer=4), epoch=3
    )
    target, step = order[5], 2  # the image at position 5 is in batch 2 of 5
    broken = tmp_path / "train" / f"class{target}" / "image.png"
    broken.write_bytes(broken.read_bytes()[:30])
    pipe = InputPipeline(ImageFolderData(train, train), prep, batch_size=2, seed=0, cache=False, shuffle_buffer=4)
    assert epoch_labels(pipe, epoch=3, skip_steps=step + 1) == order[2 * (step + 1) :]
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"could not read or decode .*class{target}/image\.png"):
        epoch_labels(pipe, epoch=3, skip_steps=step)


def test_a_truncated_shard_is_still_reported_when_its_records_are_shuffled(tmp_path):
    pattern = write_jpeg_shards(tmp_path)
    shard = tmp_path / "train-00002-of-00003"
    shard.write_bytes(shard.read_bytes()[:-30])
    pipe = InputPipeline(
        TFRecordData(pattern, pattern, num_classes=24),
        Preprocessing(**IMAGENET),
        batch_size=4,
        cache=False,
        shuffle_buffer=24,
    )
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"could not read .*train-00002-of-00003 \(record 7\) or any"
    ):
        batches(pipe.train(epoch=0))


# Order and reproducibility ----------------------------------------------------------------------


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "uncached"])
def test_the_order_of_an_epoch_is_a_permutation_fixed_by_seed_and_epoch(cache):
    def order(seed, epoch, **kwargs):
        kwargs = {"cache": cache, "shuffle_buffer": 30, **kwargs}
        pipe = InputPipeline(Numbered(), Preprocessing(**PLAIN), batch_size=5, seed=seed, **kwargs)
        return epoch_labels(pipe, epoch=epoch)

    first = order(3, 0)
    assert sorted(first) == list(range(30)) and first != list(range(30))
    assert order(3, 0) == first  # a new pipeline, as after a restart
    assert len({tuple(first), tuple(order(3, 1)), tuple(order(4, 0))}) == 3
    assert order(3, 0, shuffle_buffer=1) == order(4, 2, shuffle_buffer=1) == list(range(30))
    second = order(3, 1)
    try:
        for global_seed in (0, 12):  # TensorFlow's global seed (the trainer sets it) changes nothing
            tf.random.set_seed(global_seed)
            assert order(3, 0) == first and order(3, 1) == second
    finally:
        tf.random.set_seed(None)


def test_cached_and_uncached_epochs_have_the_same_order_and_images():
    def pipeline(cache):
        prep = Preprocessing("cifar", image_size=8, pad=2)
        return InputPipeline(Numbered(), prep, batch_size=5, seed=9, cache=cache, shuffle_buffer=12)

    cached, uncached = pipeline(True), pipeline(False)
    for epoch in (0, 1):
        assert_same(batches(cached.train(epoch)), batches(uncached.train(epoch)))
        assert_same(batches(cached.train(epoch, skip_steps=2)), batches(uncached.train(epoch))[2:])


def test_same_seed_gives_the_same_batches_and_another_seed_or_epoch_other_ones(tmp_path):
    def pipeline(seed, **kwargs):
        return InputPipeline(array_source(tmp_path), Preprocessing(**CIFAR), batch_size=5, seed=seed, **kwargs)

    first, second = pipeline(7), pipeline(7)
    for epoch in (0, 1):
        assert_same(batches(first.train(epoch)), batches(second.train(epoch)))
    epoch0 = batches(first.train(0))
    for other in (batches(first.train(1)), batches(pipeline(8).train(0))):
        assert not np.array_equal(np.concatenate([i for i, _ in other]), np.concatenate([i for i, _ in epoch0]))
    # Without shuffling the order is the same; the augmentations still differ by epoch and seed.
    unshuffled = [pipeline(seed, shuffle_buffer=1) for seed in (7, 8)]
    images = {(s, e): np.concatenate([i for i, _ in batches(unshuffled[s].train(e))]) for s in (0, 1) for e in (0, 1)}
    labels = [np.concatenate([labels for _, labels in batches(p.train(0))]) for p in unshuffled]
    np.testing.assert_array_equal(labels[0], labels[1])
    for a, b in (((0, 0), (0, 1)), ((0, 0), (1, 0))):
        changed = [not np.array_equal(x, y) for x, y in zip(images[a], images[b], strict=True)]
        assert sum(changed) > len(changed) // 2


def test_image_n_of_an_epoch_is_augmented_with_a_seed_of_the_pipeline_seed_epoch_and_n():
    source, prep = synthetic_source(), Preprocessing(**IMAGENET)
    pipe = InputPipeline(source, prep, batch_size=6, seed=11, shuffle_buffer=1)
    delivered = np.concatenate([images for images, _ in batches(pipe.train(epoch=4))])
    for n, (image, _) in enumerate(source.examples("train")):
        seed = tf.random.experimental.stateless_fold_in(tf.constant([11, 4], tf.int64), tf.constant(n, tf.int64))
        np.testing.assert_array_equal(delivered[n], prep.train(image, seed=seed).numpy())


# Batching, repetition, evaluation, arguments ----------------------------------------------------


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "uncached"])
def test_training_batches_are_full_and_the_rest_of_an_epoch_is_dropped(cache):
    def pipeline(batch_size, source=None):
        return InputPipeline(source or Numbered(), Preprocessing(**PLAIN), batch_size=batch_size, seed=2, cache=cache)

    pipe = pipeline(4)
    delivered = batches(pipe.train(epoch=0))
    assert [labels.shape for _, labels in delivered] == [(4,)] * 7 == [(4,)] * pipe.steps_per_epoch()
    assert {images.shape for images, _ in delivered} == {(4, 8, 8, 3)}
    order = epoch_labels(pipeline(1), epoch=0)  # the order does not depend on the batch size
    assert epoch_labels(pipe, epoch=0) == order[:28]  # the last 2 of the epoch's 30 are left out
    for images, labels in delivered:
        np.testing.assert_array_equal(images, np.broadcast_to(labels[:, None, None, None], images.shape))
    assert pipeline(31).steps_per_epoch() == 0 and batches(pipeline(31).train(epoch=0)) == []
    assert pipeline(4, Numbered(counted=False)).steps_per_epoch() is None


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "uncached"])
def test_steps_repeat_the_split_and_resume_within_them(cache):
    pipe = InputPipeline(synthetic_source(), Preprocessing(**CIFAR), batch_size=4, cache=cache, shuffle_buffer=8)
    full = batches(pipe.train(epoch=0, steps=12))  # 48 images from 30: the split repeats
    assert len(full) == 12
    assert_same(batches(pipe.train(epoch=0, skip_steps=9, steps=12)), full[9:])
    assert batches(pipe.train(epoch=0, skip_steps=12, steps=12)) == []
    assert batches(pipe.train(epoch=0, skip_steps=20, steps=12)) == []
    assert len(batches(pipe.train(epoch=0, steps=3))) == 3


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "uncached"])
def test_short_epochs_go_on_through_the_split_instead_of_rereading_its_head(cache):
    # 5 steps of 10 from 1000 examples through a buffer of 50: each epoch used to start a new
    # pass, and 10 epochs saw 93 distinct examples.
    pipe = InputPipeline(
        Numbered(train_examples=1000), Preprocessing(**PLAIN), batch_size=10, seed=4, cache=cache, shuffle_buffer=50
    )
    seen = [epoch_labels(pipe, epoch=epoch, steps=5) for epoch in range(20)]
    assert len(set(sum(seen[:10], []))) == 500
    assert sorted(sum(seen, [])) == list(range(1000))  # 20 epochs: every example exactly once
    assert sorted(epoch_labels(pipe, epoch=20, steps=100)) == list(range(1000))  # the next pass
    assert epoch_labels(pipe, epoch=20, steps=100) != sum(seen, [])  # in another order


@pytest.mark.parametrize("counted", [True, False], ids=["sized", "unsized"])
@pytest.mark.parametrize("cache", [True, False], ids=["cached", "uncached"])
def test_epochs_are_consecutive_stretches_of_one_stream_and_resume_anywhere_in_it(cache, counted):
    # 30 examples, epochs of 3 batches of 4: epochs cross the ends of passes.
    def pipeline():  # a new source and pipeline for each call, as in a restarted process
        return InputPipeline(
            Numbered(counted=counted),
            Preprocessing("cifar", image_size=8, pad=2),
            batch_size=4,
            seed=3,
            cache=cache,
            shuffle_buffer=7,
        )

    stream = batches(pipeline().train(epoch=0, steps=3, epochs=6))
    assert len(stream) == 18
    labels = np.concatenate([labels for _, labels in stream]).tolist()
    assert sorted(labels[:60]) == sorted(2 * list(range(30)))  # two whole passes, then the third
    assert labels[:30] != labels[30:60]
    for epoch in range(6):
        assert_same(batches(pipeline().train(epoch=epoch, steps=3)), stream[3 * epoch : 3 * epoch + 3])
    for epoch, skip in ((0, 2), (2, 1), (4, 2), (5, 3)):
        assert_same(
            batches(pipeline().train(epoch=epoch, skip_steps=skip, steps=3, epochs=6 - epoch)),
            stream[3 * epoch + skip :],
        )


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "uncached"])
def test_several_epochs_of_one_pass_each_are_the_epochs_one_after_another(cache):
    pipe = InputPipeline(
        Numbered(), Preprocessing("cifar", image_size=8, pad=2), batch_size=4, seed=6, cache=cache, shuffle_buffer=9
    )
    each = [batches(pipe.train(epoch=epoch)) for epoch in (2, 3, 4)]
    assert_same(batches(pipe.train(epoch=2, epochs=3)), sum(each, []))
    assert_same(batches(pipe.train(epoch=2, skip_steps=5, epochs=3)), sum(each, [])[5:])
    unsized = InputPipeline(
        Numbered(counted=False),
        Preprocessing("cifar", image_size=8, pad=2),
        batch_size=4,
        seed=6,
        cache=cache,
        shuffle_buffer=9,
    )
    assert_same(batches(unsized.train(epoch=2, skip_steps=5, epochs=3)), sum(each, [])[5:])


def test_a_split_of_unknown_size_is_counted_once_and_only_when_needed(capsys):
    source = Numbered(counted=False)
    pipe = InputPipeline(source, Preprocessing(**PLAIN), batch_size=4, seed=1, cache=False)
    assert len(batches(pipe.train(epoch=0, steps=3))) == 3 and len(batches(pipe.train(epoch=0))) == 7
    assert "Counting" not in capsys.readouterr().out  # the start of the stream, or one pass
    pipe.train(epoch=1, steps=3)
    pipe.train(epoch=0, skip_steps=1, steps=3)
    assert capsys.readouterr().out.count("Counting the training records of 'numbered'") == 1
    empty = InputPipeline(Numbered(train_examples=0, counted=False), Preprocessing(**PLAIN), batch_size=4)
    assert batches(empty.train(epoch=0, steps=3)) == batches(empty.train(epoch=2, steps=3)) == []


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "uncached"])
def test_eval_is_every_example_in_order(tmp_path, cache):
    source = tfrecord_source(tmp_path)
    prep = Preprocessing(**IMAGENET)
    pipe = InputPipeline(source, prep, batch_size=4, eval_batch_size=5, cache=cache)
    evaluated = batches(pipe.eval())
    assert [len(labels) for _, labels in evaluated] == [5, 5, 5, 5, 4]
    expected = [(prep.eval(image).numpy(), int(label)) for image, label in source.examples("eval")]
    np.testing.assert_array_equal(
        np.concatenate([images for images, _ in evaluated]), np.stack([e[0] for e in expected])
    )
    np.testing.assert_array_equal(np.concatenate([labels for _, labels in evaluated]), [e[1] for e in expected])
    assert_same(batches(pipe.eval()), evaluated)


def test_eval_is_not_shuffled_nor_augmented_and_keeps_the_last_partial_batch():
    def evaluated(**kwargs):
        pipe = InputPipeline(Numbered(), Preprocessing("cifar", image_size=8, pad=2), **{"batch_size": 4, **kwargs})
        return batches(pipe.eval())

    default = evaluated()
    assert [labels.tolist() for _, labels in default] == [[100, 101, 102, 103], [104, 105, 106, 107], [108, 109]]
    for images, labels in default:  # only normalized: each image still holds its label's value
        expected = (labels[:, None, None, None] - np.array(CIFAR10_MEAN)) / np.array(CIFAR10_STD)
        np.testing.assert_allclose(images, np.broadcast_to(expected, images.shape), rtol=1e-6)
    for kwargs in ({"seed": 8}, {"shuffle_buffer": 1}, {"cache": False}):
        assert_same(evaluated(**kwargs), default)
    assert [len(labels) for _, labels in evaluated(eval_batch_size=3)] == [3, 3, 3, 1]


def test_constructor_arguments_are_checked():
    for kwargs, message in [
        ({"batch_size": 0}, r"^`batch_size` must be an integer >= 1; received 0"),
        ({"batch_size": 4.0}, r"^`batch_size` must be an integer >= 1; received 4.0"),
        ({"seed": -3}, r"^`seed` must be an integer >= 0; received -3"),
        ({"eval_batch_size": 0}, r"`InputPipeline.eval_batch_size` must be an integer >= 1; received 0"),
        ({"shuffle_buffer": 0}, r"`InputPipeline.shuffle_buffer` must be an integer >= 1; received 0"),
        ({"cache": "no"}, r"`InputPipeline.cache` must be True or False; received 'no'"),
        ({"source": "digits"}, r"`source` must be a DataSource such as DigitsData\(\); received 'digits'"),
        ({"preprocessing": "cifar"}, r"`preprocessing` must be a Preprocessing; received 'cifar'"),
    ]:
        arguments = {"source": Numbered(), "preprocessing": Preprocessing(**PLAIN), "batch_size": 4, **kwargs}
        with pytest.raises(ValueError, match=message):
            InputPipeline(**arguments)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epoch": -1}, r"`epoch` must be an integer >= 0; received -1"),
        ({"epoch": 0, "skip_steps": -2}, r"`skip_steps` must be an integer >= 0; received -2"),
        ({"epoch": 0, "steps": 0}, r"`steps` must be an integer >= 1; received 0"),
        ({"epoch": 0, "epochs": 0}, r"`epochs` must be an integer >= 1; received 0"),
    ],
)
def test_train_arguments_are_checked(kwargs, message):
    pipe = InputPipeline(synthetic_source(), Preprocessing(**CIFAR), batch_size=4)
    with pytest.raises(ValueError, match=message):
        pipe.train(**kwargs)
    with pytest.raises(ValueError, match=r"^`seed` must be an integer >= 0; received -3"):
        InputPipeline(synthetic_source(), Preprocessing(**CIFAR), batch_size=4, seed=-3)


class Recorded(Numbered):
    """`Numbered`, noting which splits were asked for (records or examples)."""

    def __init__(self):
        super().__init__()
        self.asked: list[str] = []

    def _records(self, split):
        self.asked.append(split)
        return super()._records(split)


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "uncached"])
def test_each_split_is_prepared_only_when_used(cache):
    """Evaluating (resnet-eval, resnet-export) never prepares the training split: CIFAR would
    load it whole, TFRecord stat every shard."""
    source = Recorded()
    pipe = InputPipeline(source, Preprocessing(**PLAIN), batch_size=4, cache=cache)
    assert source.asked == []
    assert sum(len(labels) for _, labels in batches(pipe.eval())) == 10
    assert set(source.asked) == {"eval"}
    assert len(batches(pipe.train(epoch=0))) == 7
    assert set(source.asked) == {"eval", "train"}


def contexts(workers: int, replicas_per_worker: int) -> list[tf.distribute.InputContext]:
    """The input contexts `distribute_datasets_from_function` gives the workers of a cluster."""
    return [tf.distribute.InputContext(workers, index, workers * replicas_per_worker) for index in range(workers)]


def global_batches(pipe_for, workers: int, replicas_per_worker: int, **train) -> list[tuple[np.ndarray, np.ndarray]]:
    """The global batches a cluster trains on: each worker's per-replica batches of a step, in
    replica order, worker after worker (as the replicas of the cluster are numbered)."""
    per_worker = [
        batches(pipe_for().train(context=context, **train)) for context in contexts(workers, replicas_per_worker)
    ]
    steps = {len(parts) // replicas_per_worker for parts in per_worker}
    assert len(steps) == 1, "the workers deliver different numbers of steps"
    stream = []
    for step in range(steps.pop()):
        parts = [
            part
            for worker in per_worker
            for part in worker[step * replicas_per_worker : (step + 1) * replicas_per_worker]
        ]
        stream.append(tuple(np.concatenate(pieces) for pieces in zip(*parts, strict=True)))
    return stream


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "uncached"])
@pytest.mark.parametrize(
    "workers, replicas",
    [(2, 2), *(pytest.param(*layout, marks=pytest.mark.slow) for layout in [(1, 2), (2, 1), (4, 1)])],
)
def test_every_number_of_workers_trains_on_the_same_global_batches(cache, workers, replicas):
    """The images of global step k and their augmentation are those of one process, whatever the
    workers and replicas; each worker decodes only its part (the source counts what it decodes)."""

    def pipe_for(source=None):
        return InputPipeline(
            source or Numbered(train_examples=40),
            Preprocessing("cifar", image_size=8, pad=2),
            batch_size=8,
            seed=4,
            cache=cache,
            shuffle_buffer=11,
        )

    for train in (dict(epoch=0, steps=3, epochs=4), dict(epoch=1, skip_steps=2, steps=3, epochs=2), dict(epoch=2)):
        assert_same(global_batches(pipe_for, workers, replicas, **train), batches(pipe_for().train(**train)))
    decoded = [CountingNumbered() for _ in range(workers)]
    for context, source in zip(contexts(workers, replicas), decoded, strict=True):
        batches(pipe_for(source).train(epoch=0, context=context))
    if cache:  # each worker fills its cache with the whole split once, then augments its part
        assert all(sorted(source.decoded) == list(range(40)) for source in decoded)
    else:  # each worker decodes its part only: an epoch of 40 (five batches of 8) split W ways
        assert all(len(source.decoded) == 40 // workers for source in decoded)
        assert sorted(label for source in decoded for label in source.decoded) == list(range(40))


class CountingNumbered(Numbered):
    """`Numbered`, noting the labels (the indices) of the examples it decodes."""

    def __init__(self):
        super().__init__(train_examples=40)
        self.decoded: list[int] = []

    def _decode(self, records, split):
        def note(label):
            self.decoded.append(int(label))
            return label

        return (
            super()._decode(records, split).map(lambda image, label: (image, tf.py_function(note, [label], tf.int32)))
        )


@pytest.mark.parametrize("workers, replicas", [(1, 2), (2, 1), (2, 2), (4, 1)])
def test_evaluation_is_split_between_workers_with_padding_labelled_minus_one(workers, replicas):
    pipe = InputPipeline(Numbered(eval_examples=10), Preprocessing(**PLAIN), batch_size=8, eval_batch_size=4)
    parts = [batches(pipe.eval(context)) for context in contexts(workers, replicas)]
    assert len({len(part) for part in parts}) == 1  # every replica gets a batch at every step
    labels = np.concatenate([labels for part in parts for _, labels in part])
    assert sorted(labels[labels >= 0].tolist()) == list(range(100, 110)) and set(labels[labels < 0]) <= {-1}
    assert len(labels) == 12  # three steps of four
    with pytest.raises(ValueError, match=r"`InputPipeline.eval_batch_size`=4 \(global\) must be a multiple of the 8"):
        pipe.eval(tf.distribute.InputContext(4, 0, 8))


@pytest.mark.slow  # many pipelines over JPEG shards; the quick loop has the test below
@pytest.mark.parametrize("replicas", [1, 2])
def test_with_shard_by_files_each_worker_reads_only_its_own_shards(tmp_path, replicas):
    """Worker i of 2 reads shards i and i + 2 (labels tell the shard), in batches of its share,
    every epoch `steps` batches long; resumes within its own stream."""
    source = tfrecord_source(tmp_path, shards=4, per_shard=6)  # labels 6 * shard + record
    pipe = InputPipeline(source, Preprocessing(image_size=12), batch_size=8, seed=3, shard_by="files")
    for context in contexts(2, replicas):
        own = batches(pipe.train(epoch=0, steps=3, epochs=2, context=context))
        assert len(own) == 6 * replicas and all(len(labels) == 8 // (2 * replicas) for _, labels in own)
        shards = {int(label) // 6 for _, labels in own for label in labels}
        assert shards == {context.input_pipeline_id, context.input_pipeline_id + 2}
        # Within a worker's 12 images per epoch, each of its 12 records once.
        first_epoch = np.concatenate([labels for _, labels in own[: 3 * replicas]])
        assert len(set(first_epoch.tolist())) == 12
        resumed = batches(pipe.train(epoch=0, skip_steps=2, steps=3, epochs=2, context=context))
        assert_same(resumed, own[2 * replicas :])
    # Without `steps`, an epoch is the split's 24 records over the global batch: 3 steps.
    assert len(batches(pipe.train(epoch=0, context=contexts(2, 1)[1]))) == 3
    # One worker (or no context) reads the whole split, as with shard_by="batches".
    whole = InputPipeline(source, Preprocessing(image_size=12), batch_size=8, seed=3)
    assert_same(batches(pipe.train(epoch=1, context=contexts(1, 1)[0])), batches(whole.train(epoch=1)))


def test_with_shard_by_files_a_worker_reads_only_its_shards(tmp_path):
    source = tfrecord_source(tmp_path, shards=4, per_shard=2)  # labels 2 * shard + record
    pipe = InputPipeline(source, Preprocessing(image_size=8), batch_size=4, shard_by="files")
    labels = np.concatenate([labels for _, labels in batches(pipe.train(epoch=0, context=contexts(2, 1)[1]))])
    assert sorted(labels.tolist()) == [2, 3, 6, 7]  # shards 1 and 3, in two batches of 2


def test_shard_by_files_is_refused_with_fewer_shards_than_workers_or_no_shards(tmp_path):
    source = tfrecord_source(tmp_path, shards=3, per_shard=4)
    pipe = InputPipeline(source, Preprocessing(image_size=12), batch_size=8, shard_by="files")
    with pytest.raises(
        ValueError,
        match=r"shard_by`='files' needs at least one training shard per worker: the split "
        r"has 3 and the run 4 workers",
    ):
        pipe.train(epoch=0, context=contexts(4, 1)[0])
    arrays = InputPipeline(synthetic_source(), Preprocessing(image_size=12), batch_size=8, shard_by="files")
    with pytest.raises(ValueError, match="divides the shard files of a TFRecordData source.*SyntheticData has none"):
        arrays.train(epoch=0, context=contexts(2, 1)[0])
    with pytest.raises(ValueError, match=r"`InputPipeline.shard_by` must be one of \('batches', 'files'\)"):
        InputPipeline(source, Preprocessing(image_size=12), batch_size=8, shard_by="records")
    with pytest.raises(ValueError, match="must be some of the training shards"):
        source.with_train_shards([str(tmp_path / "elsewhere")])


# Through a tf.data service ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_service():
    """A tf.data service dispatcher and two workers in this process, on 127.0.0.1 (the binary's
    servers in their own processes are tested in test_data_service.py); stopped at the end."""
    service = tf.data.experimental.service
    dispatcher = service.DispatchServer(service.DispatcherConfig(port=0))
    host = dispatcher.target.split("://")[1]
    # Frequent heartbeats: a worker's stop waits for its heartbeat thread.
    config = service.WorkerConfig(dispatcher_address=host, port=0, heartbeat_interval_ms=200)
    workers = [service.WorkerServer(config) for _ in range(2)]
    yield dispatcher.target
    gc.collect()  # the tests' readers end their jobs while the servers still answer (else each waits for them)
    for server in [*workers, dispatcher]:
        server._stop()  # pylint: disable=protected-access


def served_pipeline(service=None, lanes=2, source=None) -> InputPipeline:
    return InputPipeline(
        source or Numbered(train_examples=40, counted=False),
        Preprocessing("cifar", image_size=8, pad=2),
        batch_size=8,
        seed=4,
        cache=True,  # the service decodes from the records all the same
        shuffle_buffer=11,
        data_service=service,
        data_service_lanes=lanes,
    )


def test_the_data_service_makes_the_batches_the_training_hosts_would(data_service):
    """Through the service, global step k of two workers of two replicas holds the images,
    augmented the same way, that one process makes, also resumed mid-epoch, from a split whose
    size must be counted."""
    train = dict(epoch=1, skip_steps=2, steps=3, epochs=2)
    served = global_batches(lambda: served_pipeline(data_service, lanes=3), 2, 2, **train)
    assert_same(served, batches(served_pipeline().train(**train)))


@pytest.mark.slow  # the quick loop has the case above
@pytest.mark.parametrize("workers, replicas", [(1, 1), (2, 2)])
def test_the_data_service_makes_every_epoch_once_and_the_same_batches(tmp_path, data_service, workers, replicas):
    """Through the service, whatever the lanes, workers and replicas, and from TFRecord shards
    too: the batches of one process, every example once per pass."""
    for lanes, train in [(2, dict(epoch=0, epochs=3)), (1, dict(epoch=2)), (4, dict(epoch=0, steps=2))]:
        served = global_batches(lambda lanes=lanes: served_pipeline(data_service, lanes), workers, replicas, **train)
        assert_same(served, batches(served_pipeline().train(**train)))
        if train.get("epochs") == 3:  # three passes of five batches: each example once in each
            labels = [labels.tolist() for _, labels in served]
            assert [sorted(sum(labels[p * 5 : p * 5 + 5], [])) for p in range(3)] == [list(range(40))] * 3
    shards = tfrecord_source(tmp_path, shards=2, per_shard=12)
    train = dict(epoch=1, steps=2, epochs=2)
    served = global_batches(lambda: served_pipeline(data_service, 3, source=shards), workers, replicas, **train)
    assert_same(served, batches(served_pipeline(source=shards).train(**train)))


def test_the_data_service_settings_are_checked():
    for kwargs, message in [
        ({"data_service": "localhost"}, r"`InputPipeline.data_service` must be the address of a tf.data service"),
        ({"data_service": "http://host:5050"}, r"'grpc://host:port' .* received 'http://host:5050'"),
        ({"data_service": 5050}, r"received 5050"),
        ({"data_service": "host:99999"}, r"received 'host:99999'"),
        ({"data_service": "localhost:5050", "data_service_lanes": 0}, r"`InputPipeline.data_service_lanes` must"),
        ({"data_service": "localhost:5050", "data_service_timeout": 0}, r"`InputPipeline.data_service_timeout` m"),
        ({"data_service_timeout": True}, r"a number of seconds > 0; received True"),
        ({"data_service": "localhost:5050", "shard_by": "files"}, r"`InputPipeline.shard_by`='files' and `Inpu"),
    ]:
        arguments = {"source": Numbered(), "preprocessing": Preprocessing(**PLAIN), "batch_size": 4, **kwargs}
        with pytest.raises(ValueError, match=message):
            InputPipeline(**arguments)
    for address in ["localhost:5050", "grpc://localhost:5050", "grpc://10.0.0.2:80"]:
        pipe = InputPipeline(Numbered(), Preprocessing(**PLAIN), batch_size=4, data_service=address)
        assert pipe.data_service == "grpc://" + address.removeprefix("grpc://")


def test_the_data_service_refuses_a_source_that_drops_records(tmp_path):
    source = tfrecord_source(tmp_path, skip_corrupt=True)
    pipe = InputPipeline(source, Preprocessing(**IMAGENET), batch_size=4, data_service="localhost:5050")
    with pytest.raises(ValueError, match=r"TFRecordData.skip_corrupt drops unreadable records, which would shift"):
        pipe.train(epoch=0)
