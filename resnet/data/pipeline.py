"""The tf.data input of training and evaluation: order, skip, decode, cache, augment, batch, prefetch."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import gin
import tensorflow as tf

from resnet.data.base import DataSource
from resnet.data.preprocessing import Preprocessing
from resnet.validation import check_int, is_host_port

SHARD_BY = ("batches", "files")
"""How the workers of a multi-worker run divide the training input (`InputPipeline.shard_by`)."""
AUTOTUNE = tf.data.AUTOTUNE
DEFAULT_SERVICE_TIMEOUT = 600.0
"""Seconds a training host waits for a batch from the tf.data service (`InputPipeline.data_service_timeout`)."""


@gin.configurable(module="resnet", denylist=["source", "preprocessing", "batch_size", "seed"])
class InputPipeline:
    """Batches of preprocessed images from a `DataSource`.

    Training reads one stream of passes over the training split, pass `p` in an order fixed by
    `(seed, p)` alone, and the n-th image of epoch `e` is augmented with random numbers fixed by
    `(seed, e, n)` (stateless random ops, see `Preprocessing.train`): two pipelines with the same
    seed give the same batches bit for bit, and a run resumed in the middle of an epoch
    (`train(epoch, skip_steps)`) gets exactly the batches it had not yet seen. An epoch is one
    pass, or, with `steps`, that many batches, each epoch going on where the last one stopped
    (see `train`).

    Without `cache` (for datasets larger than memory, e.g. ImageNet), a pass shuffles the
    source's undecoded records (`DataSource.records`: image paths, serialized Examples), skips
    those of the batches already seen, and only then reads and decodes images, in parallel: a
    resumed epoch does not decode what it skips (TFRecord shards are still read up to the
    resume point, as the shuffle needs their records; `TfdsData`, whose records are decoded
    examples, still decodes them). With `cache` on (the default), decoded images are kept in
    memory after the first pass and every pass shuffles them; skipping is then a pass over
    memory, and a process that resumes before its cache is filled decodes the images it skips
    once, to fill it. Both give the same batches (unless a source with `skip_corrupt` drops
    records). Images are then augmented in parallel, batched and prefetched.

    Args:
        source: Where the examples come from (set by the trainer).
        preprocessing: Augmentation and normalization (set by the trainer).
        batch_size: Global training batch size (set by the trainer).
        seed: Seed of the per-epoch order and augmentation (set by the trainer).
        cache: Keep decoded images in memory after the first pass.
        shuffle_buffer: Size of the shuffle buffer, in records (images when cached).
        eval_batch_size: Evaluation batch size (defaults to `batch_size`).
        shard_by: How the workers of a multi-worker run divide the training input (see `train`):
            "batches" (the default: each keeps its part of every global batch, which is the same
            for any number of workers) or "files" (each reads only its share of the shards of a
            `TFRecordData` source: about 1/N of the bytes, but the batches then depend on the
            number of workers, and a run resumes only on the same number).
        data_service: The dispatcher of a tf.data service (`grpc://host:port`, as
            `resnet-data-service --dispatcher` prints it; None: decode on the training hosts).
            Training images are then read, decoded and augmented by the service's workers, and
            the training hosts only receive the finished batches, the same batches as without
            the service (see `train`). Evaluation still runs on the training hosts.
        data_service_lanes: Streams each training host reads from the service: step `k` comes
            from stream `k % lanes`, and each stream is produced, in order, by one service worker
            at a time. The lanes of all training hosts together should be at least as many as
            the service workers, for all of them to have work.
        data_service_timeout: Seconds a training host waits for a batch from the service before
            it gives up (a service worker that dies mid-epoch leaves its stream unfinished; see
            `resnet.training.epochs`).

    Example:

    >>> from resnet.data import SyntheticData
    >>> pipe = InputPipeline(SyntheticData(train_examples=64, image_size=32, num_classes=10),
    ...                      Preprocessing(image_size=32), batch_size=16)
    >>> images, labels = next(iter(pipe.train(epoch=0)))
    >>> tuple(images.shape), images.dtype.name, tuple(labels.shape)
    ((16, 32, 32, 3), 'float32', (16,))
    >>> resumed, _ = next(iter(pipe.train(epoch=0, skip_steps=3)))   # the epoch's last batch
    >>> bool(tf.reduce_all(resumed == list(pipe.train(epoch=0))[3][0]))
    True
    """

    def __init__(
        self,
        source: DataSource,
        preprocessing: Preprocessing,
        batch_size: int,
        seed: int = 0,
        cache: bool = True,
        shuffle_buffer: int = 10_000,
        eval_batch_size: int | None = None,
        shard_by: str = "batches",
        data_service: str | None = None,
        data_service_lanes: int = 2,
        data_service_timeout: float = DEFAULT_SERVICE_TIMEOUT,
    ):
        if not isinstance(source, DataSource):
            raise ValueError(f"`source` must be a DataSource such as DigitsData(); received {source!r}.")
        if not isinstance(preprocessing, Preprocessing):
            raise ValueError(f"`preprocessing` must be a Preprocessing; received {preprocessing!r}.")
        if not isinstance(cache, bool):
            raise ValueError(f"`InputPipeline.cache` must be True or False; received {cache!r}.")
        self.source = source
        self.preprocessing = preprocessing
        self.batch_size = check_int("batch_size", batch_size)
        self.eval_batch_size = check_int(
            "InputPipeline.eval_batch_size", batch_size if eval_batch_size is None else eval_batch_size
        )
        self.seed = check_int("seed", seed, minimum=0)
        self.shuffle_buffer = check_int("InputPipeline.shuffle_buffer", shuffle_buffer)
        self.cache = cache
        if shard_by not in SHARD_BY:
            raise ValueError(f"`InputPipeline.shard_by` must be one of {SHARD_BY}; received {shard_by!r}.")
        self.shard_by = shard_by
        self.data_service = _check_service_address(data_service)
        self.data_service_lanes = check_int("InputPipeline.data_service_lanes", data_service_lanes)
        if (
            isinstance(data_service_timeout, bool)
            or not isinstance(data_service_timeout, (int, float))
            or not data_service_timeout > 0
        ):
            raise ValueError(
                "`InputPipeline.data_service_timeout` must be a number of seconds > 0; "
                f"received {data_service_timeout!r}."
            )
        self.data_service_timeout = float(data_service_timeout)
        if self.data_service is not None and shard_by == "files":
            raise ValueError(
                "`InputPipeline.shard_by`='files' and `InputPipeline.data_service` do not go together: with the "
                "service, the service's workers read the records, and the training hosts none. Use one or the other."
            )
        # Each split is prepared when first used: evaluating (resnet-eval, resnet-export) never
        # touches the training split, which may be large (CIFAR loads it whole, TFRecord stats
        # every shard).
        self._train: tf.data.Dataset | None = None
        self._eval: tf.data.Dataset | None = None
        self._split_count: int | None = None  # the split's size, once known (see `_split_size`)
        self._eval_count: int | None = None  # the evaluation split's size, once known (see `_eval_size`)

    def steps_per_epoch(self) -> int | None:
        """Full training batches in one pass over the training split (None if unknown)."""
        count = self.source.num_examples("train")
        return None if count is None else count // self.batch_size

    def train(
        self,
        epoch: int,
        skip_steps: int = 0,
        steps: int | None = None,
        epochs: int = 1,
        context: tf.distribute.InputContext | None = None,
    ) -> tf.data.Dataset:
        """The batches of training epochs `epoch` to `epoch + epochs - 1`, after the first
        `skip_steps` batches of the first: global batches, or with `context` one input
        pipeline's part of them (see "Workers" below).

        Training reads one stream: passes over the training split, pass `p` shuffled in an order
        fixed by `(seed, p)`. Without `steps` an epoch is one pass (epoch `e` is pass `e`), less
        the records that do not fill a batch. With `steps` an epoch is `steps` batches and the
        next epoch goes on where it stopped, so epochs shorter than the split see all of it in
        turn (ten epochs of a tenth of it see every example once) and longer ones repeat it.
        Calls for consecutive epochs give the same batches as one call for all of them.

        Args:
            epoch: First epoch index; with the seed it fixes the order and the augmentation.
            skip_steps: Batches of the first epoch already trained on (resuming mid-epoch).
                Without `cache` they are skipped before decoding, so a record that a source with
                `skip_corrupt` would have dropped among them shifts the rest of the stream by
                one image.
            steps: Batches per epoch, when an epoch is not one pass over the data.
            epochs: Consecutive epochs to deliver.
            context: The input pipeline this dataset feeds, as
                `tf.distribute.Strategy.distribute_datasets_from_function` gives it; None for
                one pipeline feeding one replica.

        Where an epoch starts inside the stream depends on the size of the split; a source that
        cannot tell it (`TFRecordData`) has its records counted once (a read of every record,
        without decoding when not cached; cached, the count fills the cache) when that is
        needed: to resume, or to start at a later epoch, with `steps`, or for several epochs
        without `steps`.

        Workers: the stream of global batches is the same whatever reads it. With `context`,
        pipeline `i` of `W` (one per worker) keeps, of each global batch of `batch_size` records,
        the `i`-th stretch of `batch_size / W` before decoding anything, decodes and augments
        only those (each with the random numbers of its place in the global stream), and
        delivers them as the per-replica batches of its worker's replicas, in order. So every
        worker decodes `1/W` of the images (cached: the cache is filled with the whole split
        once, then augments `1/W`), yet global step `k` trains on the same images, augmented
        the same way, whatever the number of workers and replicas: a run may resume on another
        number of workers. Every worker still reads every undecoded record to find its own.
        With several pipelines, a source that drops unreadable records (`skip_corrupt`) is
        refused unless `cache` is on: a dropped record would leave the workers' parts of a batch
        unequal.

        With `shard_by="files"` and several pipelines, pipeline `i` of `W` instead reads only
        the shards `i`, `i + W`, ... of the training split (a `TFRecordData` with at least `W`
        shards) and makes its own stream of them as a one-pipeline run would, seeded by `seed`
        and `i`, in batches of `batch_size / W`: each worker reads about `1/W` of the record
        bytes, but which images meet in a global batch depends on `W`. Every pipeline gives
        `steps` batches per epoch (by default the split's records over `batch_size`), passing
        over its own shards as often as that takes.

        With `data_service`, the records are read, decoded and augmented by the workers of a
        tf.data service, and this process only receives the batches. Its part of the global
        batches is cut into `data_service_lanes` lanes, lane `j` holding its steps `j`,
        `j + lanes`, ...; each lane is one job of the service with a single split, so one service
        worker makes it, in order: it reads the undecoded stream above, keeps the records of
        the lane's steps, and decodes and augments only those, each with the random numbers of
        its place in the global stream. This process reads the lanes in turn, a step from each.
        So the batches are the same as without the service, to the bit, for any number of
        workers, resumed anywhere; the cache is not used (the service decodes from the records)
        and a source that drops records (`skip_corrupt`) is refused. A lane goes to the first
        service worker that asks for it (one worker may make several, side by side); a service
        worker that dies leaves its lanes unfinished, and reading them then waits without end
        (the trainer gives up after `data_service_timeout`).
        """
        check_int("epoch", epoch, minimum=0)
        check_int("skip_steps", skip_steps, minimum=0)
        check_int("epochs", epochs)
        split = _Split.of(context, self.batch_size, "batch_size")
        if self.shard_by == "files" and split.pipelines > 1:
            return self._train_on_own_files(split, epoch, skip_steps, steps, epochs)
        service = self.data_service is not None
        self._training_records()
        if steps is not None:
            check_int("steps", steps)
        batch = self.batch_size
        if steps is None and epochs == 1 and not service:
            # One pass; its size need not be known, the last partial batch is dropped.
            epoch_length, pass_length, first_pass, offset, passes = None, None, epoch, skip_steps * batch, 1
        else:
            start = (epoch * (steps or 0) + skip_steps) * batch
            size = self._split_size(count=bool(start) or steps is None)
            if steps is None:
                pass_length = epoch_length = size // batch * batch
                first_pass, offset, passes = epoch, skip_steps * batch, epochs
            else:
                epoch_length, pass_length = steps * batch, None
                first_pass, offset = divmod(start, size) if size else (0, 0)
                # Each pass holds a record at least (an empty split gives none), which bounds
                # the passes the epochs need, also when `skip_corrupt` drops some.
                passes = 0 if size == 0 else offset + (epochs * steps - skip_steps) * batch
        total = None if epoch_length is None else epochs * epoch_length - skip_steps * batch
        start = skip_steps * batch

        def ordered() -> tf.data.Dataset:
            records = (
                tf.data.Dataset.range(first_pass, first_pass + passes)
                .flat_map(lambda index: self._pass(index, pass_length))
                .skip(offset)
            )
            if split.pipelines > 1 or service:
                if total is not None:
                    records = records.take(total)  # in undecoded records: none is dropped (checked)
                records = split.keep(records)
            return records

        def batches(records: tf.data.Dataset, lane: _Split) -> tf.data.Dataset:
            examples = records if self.cache and not service else self.source.decode(records, "train")
            if total is not None and split.pipelines == 1 and not service:
                examples = examples.take(total)  # after decoding: a dropped record's place is taken by the next
            augmented = examples.enumerate().map(
                lambda n, example: self._augment(
                    epoch, epoch_length, start + split.position(lane.position(n)), example
                ),
                num_parallel_calls=AUTOTUNE,
                deterministic=True,
            )
            return augmented.batch(split.per_replica, drop_remainder=True)

        if split.pipelines > 1 or service:
            self._check_no_drops(service)
        if not service:
            return batches(ordered(), _Split(1, 1, 0, 1)).prefetch(AUTOTUNE)
        return self._through_service(split, total // batch, ordered, batches)

    def _through_service(self, split: _Split, steps: int, ordered, batches) -> tf.data.Dataset:
        """`steps` global steps of this pipeline's batches, read from the tf.data service in
        `data_service_lanes` streams: stream `j` holds steps `j`, `j + lanes`, ..., is one job
        of the service with a single split (so one service worker makes it, in order: the
        records of its steps are cut out of the undecoded stream before anything is decoded),
        and the streams are read in turn, step by step."""
        lanes = self.data_service_lanes
        service = tf.data.experimental.service

        def lane(j: int) -> tf.data.Dataset:
            # Stretches of `per_pipeline` records (one step's part each) of every `lanes` steps.
            cut = _Split(split.per_pipeline * lanes, lanes, j, 1)
            made = tf.data.Dataset.range(1).flat_map(lambda _: batches(cut.keep(ordered()), cut))
            return made.apply(
                service.distribute(
                    processing_mode=service.ShardingPolicy.DYNAMIC,
                    service=self.data_service,
                    compression=None,  # float images barely compress; decompressing would cost the training host
                )
            )

        per_step = split.per_pipeline // split.per_replica  # this pipeline's replicas: batches per step
        choice = tf.data.Dataset.range(steps * per_step).map(lambda n: n // per_step % lanes)
        streams = [lane(j) for j in range(lanes)]
        return tf.data.Dataset.choose_from_datasets(streams, choice, stop_on_empty_dataset=True).prefetch(AUTOTUNE)

    def _train_on_own_files(self, split: _Split, epoch: int, skip_steps: int, steps: int | None, epochs: int):
        """The batches of `train` for pipeline `split.index` with `shard_by="files"`: the stream
        of its own shards, as one pipeline over them would make it."""
        shards = getattr(self.source, "train_shards", None)
        if shards is None:
            raise ValueError(
                f"`InputPipeline.shard_by`='files' divides the shard files of a TFRecordData source between the "
                f"workers; {type(self.source).__name__} has none. Use shard_by='batches', or prepare TFRecord "
                "shards with resnet-prepare."
            )
        files = shards()
        if len(files) < split.pipelines:
            raise ValueError(
                f"`InputPipeline.shard_by`='files' needs at least one training shard per worker: the split has "
                f"{len(files)} and the run {split.pipelines} workers. Use shard_by='batches', or write more shards "
                f"(resnet-prepare --shards={split.pipelines * 8}, say)."
            )
        if steps is None:
            steps = self._steps_of_whole_split()
        own = InputPipeline(
            self.source.with_train_shards(files[split.index :: split.pipelines]),
            self.preprocessing,
            batch_size=split.per_pipeline,
            seed=self.seed * 1_009 + split.index,
            cache=self.cache,
            shuffle_buffer=self.shuffle_buffer,
        )
        batches = own.train(epoch, skip_steps=skip_steps, steps=steps, epochs=epochs)
        if split.per_replica == split.per_pipeline:
            return batches
        return batches.unbatch().batch(split.per_replica, drop_remainder=True).prefetch(AUTOTUNE)

    def _steps_of_whole_split(self) -> int:
        """Full global batches in the training split (its records counted once if need be)."""
        count = self.source.num_examples("train")
        if count is None:
            count = _count(self.source.records("train"))
        if count < self.batch_size:
            raise ValueError(f"The training split has {count} records, fewer than one batch of {self.batch_size}.")
        return count // self.batch_size

    def _check_no_drops(self, service: bool = False) -> None:
        if getattr(self.source, "skip_corrupt", False) and service:
            raise ValueError(
                f"{type(self.source).__name__}.skip_corrupt drops unreadable records, which would shift the batches "
                "the tf.data service makes (`InputPipeline.data_service`): prepare shards without them "
                "(resnet-prepare --skip_corrupt), or train without the service."
            )
        if getattr(self.source, "skip_corrupt", False) and not self.cache:
            raise ValueError(
                f"{type(self.source).__name__}.skip_corrupt drops unreadable records, which would leave the "
                "workers' parts of a global batch unequal: with several workers, bind `InputPipeline.cache = True` "
                "(the cache is filled, and corrupt records dropped, the same way on every worker), or prepare "
                "shards without them (resnet-prepare --skip_corrupt)."
            )

    def _training_records(self) -> tf.data.Dataset:
        """The training split as training reads it: cached decoded images, or the undecoded
        records it decodes after skipping."""
        if self._train is None:
            source = self.source
            cached = self.cache and self.data_service is None  # the service's workers decode from the records
            self._train = source.examples("train").cache() if cached else source.records("train")
        return self._train

    def _pass(self, index: tf.Tensor, length: int | None) -> tf.data.Dataset:
        """Pass `index` over the training records (decoded images when cached), in the order
        fixed by `(seed, index)`, cut to its first `length` records (None: all)."""
        with _without_graph_seed():  # traced by `flat_map`; `train` made `_train` before, outside the trace
            records = self._train.shuffle(
                self.shuffle_buffer, seed=self.seed * 100_003 + index, reshuffle_each_iteration=False
            )
        return records if length is None else records.take(length)

    def _augment(self, epoch: int, epoch_length: int | None, position: tf.Tensor, example):
        """Augments the image at `position` of the stream from the start of epoch `epoch` with
        random numbers fixed by the seed, its epoch and its place in that epoch."""
        image, label = example
        if epoch_length is None:
            key, place = tf.constant([self.seed, epoch], tf.int64), position
        else:
            key = tf.stack([tf.constant(self.seed, tf.int64), epoch + position // epoch_length])
            place = position % epoch_length
        seed = tf.random.experimental.stateless_fold_in(key, place)
        return self.preprocessing.train(image, seed=seed), label

    def _split_size(self, count: bool = True) -> int | None:
        """The number of training records (images when cached). A source that cannot tell it
        has them counted once if `count`; else the answer is None (or 0 for a split without a
        record, which would give no batch)."""
        if self._split_count is None:
            self._split_count = self.source.num_examples("train")
        if self._split_count is None:
            if not count:
                return None if any(True for _ in self.source.records("train").take(1)) else 0
            print(
                f"Counting the training records of {self.source.name!r}, whose number it cannot tell, to find "
                "where the epoch starts in the stream of passes over them (once per process)...",
                flush=True,
            )
            self._split_count = _count(self._training_records())
        return self._split_count

    def eval(self, context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
        """Every example of the evaluation split once, in order, in batches of `eval_batch_size`,
        or with `context` one input pipeline's part of them.

        With several pipelines or replicas, pipeline `i` of `W` decodes only the `i`-th stretch
        of each batch (as `train` does) and every replica gets a batch at every step: the last,
        partial batch is filled up with padding examples, whose label is -1 (the evaluation step
        leaves them out of every sum), so the sums over all replicas are those of one device.
        The size of the split is then needed (counted once if the source cannot tell it).
        """
        split = _Split.of(context, self.eval_batch_size, "InputPipeline.eval_batch_size")
        if split.replicas == 1:
            if self._eval is None:
                evaluation = self.source.examples("eval")
                self._eval = evaluation.cache() if self.cache else evaluation
            return (
                self._eval.map(self._eval_map, num_parallel_calls=AUTOTUNE).batch(split.per_replica).prefetch(AUTOTUNE)
            )
        steps = -(-self._eval_size() // self.eval_batch_size)
        examples = self.source.decode(split.keep(self.source.records("eval")), "eval")
        examples = (examples.cache() if self.cache else examples).map(self._eval_map, num_parallel_calls=AUTOTUNE)
        size = self.preprocessing.image_size
        padding = tf.data.Dataset.from_tensors((tf.zeros([size, size, 3], tf.float32), tf.constant(-1, tf.int32)))
        padded = examples.concatenate(padding.repeat()).take(steps * split.per_pipeline)
        return padded.batch(split.per_replica).prefetch(AUTOTUNE)

    def _eval_size(self) -> int:
        """The number of evaluation examples (counted once, undecoded, if the source cannot tell it)."""
        if self._eval_count is None:
            self._eval_count = self.source.num_examples("eval")
        if self._eval_count is None:
            self._eval_count = _count(self.source.records("eval"))
        return self._eval_count

    def _eval_map(self, image, label):
        return self.preprocessing.eval(image), label


@contextlib.contextmanager
def _without_graph_seed() -> Iterator[None]:
    """Clears the graph-level seed of the graph being built (the function `flat_map` traces a
    pass in) for the block, and puts it back after.

    A shuffle's order depends on the graph-level seed as well as on its own; without one it
    depends on its own seed alone, so the order of a pass does not change with TensorFlow's
    global seed (`keras.utils.set_random_seed`), and a global seed of 0 with a tensor seed does
    not trip `tf.random.get_seed`.
    """
    graph = tf.compat.v1.get_default_graph()
    previous, graph.seed = graph.seed, None
    try:
        yield
    finally:
        graph.seed = previous


def _check_service_address(address: str | None) -> str | None:
    """`address` as `grpc://host:port` (`host:port` is taken as gRPC), or None; else `ValueError`."""
    if address is None:
        return None
    if isinstance(address, str):
        protocol, _, rest = address.rpartition("://")
        if protocol in ("", "grpc") and is_host_port(rest):
            return f"grpc://{rest}"
    raise ValueError(
        "`InputPipeline.data_service` must be the address of a tf.data service dispatcher, 'grpc://host:port' "
        f"(as `resnet-data-service --dispatcher` prints it), or None; received {address!r}."
    )


def _count(dataset: tf.data.Dataset) -> int:
    """The number of elements of `dataset`, by a pass over it."""
    return int(dataset.reduce(tf.constant(0, tf.int64), lambda total, _: total + 1))


class _Split:
    """How one input pipeline's part of a stream of global batches is cut out of it.

    Of each global batch of `batch` elements, pipeline `index` of `pipelines` keeps the
    `index`-th consecutive stretch of `per_pipeline = batch / pipelines` elements, and its
    worker's `replicas` take consecutive `per_replica` parts of that stretch.
    """

    def __init__(self, batch: int, pipelines: int, index: int, replicas: int):
        self.batch, self.pipelines, self.index, self.replicas = batch, pipelines, index, replicas
        self.per_pipeline = batch // pipelines
        self.per_replica = batch // replicas

    @classmethod
    def of(cls, context: tf.distribute.InputContext | None, batch: int, argument: str) -> _Split:
        """The split for `context` (None: one pipeline, one replica) of global batches of `batch`."""
        if context is None:
            return cls(batch, 1, 0, 1)
        replicas = context.num_replicas_in_sync
        if batch % replicas:
            raise ValueError(f"`{argument}`={batch} (global) must be a multiple of the {replicas} replicas.")
        return cls(batch, context.num_input_pipelines, context.input_pipeline_id, replicas)

    def keep(self, elements: tf.data.Dataset) -> tf.data.Dataset:
        """This pipeline's stretches of `elements` (counted from the start of a global batch)."""
        if self.pipelines == 1:
            return elements
        batch, per_pipeline, index = self.batch, self.per_pipeline, self.index
        kept = elements.enumerate().filter(lambda n, element: (n % batch) // per_pipeline == index)
        return kept.map(lambda n, element: element)

    def position(self, n: tf.Tensor) -> tf.Tensor:
        """The place in the global stream of this pipeline's `n`-th element."""
        if self.pipelines == 1:
            return n
        return (n // self.per_pipeline) * self.batch + self.index * self.per_pipeline + n % self.per_pipeline
