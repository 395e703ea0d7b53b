"""The training and evaluation steps of an image classifier, for any `tf.distribute` strategy.

The steps are plain functions of a model, an optimizer and a strategy, so a benchmark, a test
or another training loop can use them without a `Trainer`:

>>> import keras, resnet
>>> model = resnet.build("cifar/resnet20")
>>> optimizer = keras.optimizers.SGD(0.1)
>>> step = make_train_step(model, optimizer, num_classes=10, global_batch_size=8)
>>> images, labels = tf.zeros([8, 32, 32, 3]), tf.zeros([8], tf.int32)
>>> loss, correct = step((images, labels))
>>> loss.dtype.name, float(correct) <= 8
('float32', True)

**Normalization statistics agree over replicas.** With more than one replica, each replica
updates batch-norm moving statistics from its own part of the batch (Keras 3 creates them as
mirrored variables that every replica writes on its own). After every step the train step
replaces each replica's copy of every non-trainable floating-point model variable (the moving
means and variances) by the mean over replicas, in one packed all-reduce. The moving
averages are linear in the batch statistics, so this equals an exponential moving average of
the replica-averaged batch statistics: what tf.keras' ON_READ / MEAN aggregation reported when
read, but held by every replica, so the evaluation that follows each epoch, the checkpoint and
any later single-device evaluation all see the same numbers. The statistics of one replica's
batch are still used to normalize that batch; bind `ResNet.norm = 'sync_batch'` to normalize
with the global batch's statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import tensorflow as tf

Batch = tuple[tf.Tensor, tf.Tensor]


def classification_loss(
    model: keras.Model,
    images: tf.Tensor,
    labels: tf.Tensor,
    *,
    num_classes: int,
    from_logits: bool = True,
    label_smoothing: float = 0.0,
    training: bool,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Runs `model` and returns its float32 outputs and the per-example cross-entropy.

    Label smoothing applies in training only.
    """
    logits = tf.cast(model(images, training=training), tf.float32)
    one_hot = tf.one_hot(labels, num_classes)
    per_example = keras.losses.categorical_crossentropy(
        one_hot, logits, from_logits=from_logits, label_smoothing=label_smoothing if training else 0.0
    )
    return logits, per_example


def decayed_kernels(model: keras.Model) -> list:
    """The variables weight decay applies to: convolution and dense kernels (not norms, biases)."""
    return [v for v in model.trainable_variables if v.path.endswith("kernel")]


def replica_local_state(model: keras.Model) -> list:
    """The non-trainable floating-point variables (normalization statistics) that each replica
    updates on its own, and that the train step averages over replicas."""
    return [v for v in model.non_trainable_variables if keras.backend.is_float_dtype(v.dtype)]


def check_no_model_losses(model: keras.Model) -> None:
    """Raises `ValueError` if `model` carries losses of its own (layer regularizers): the train
    step's only regularization is its weight decay, so they would be a second one."""
    if model.losses:
        raise ValueError(
            f"The model carries {len(model.losses)} regularization loss(es) of its own (e.g. from "
            "`ResNet.kernel_regularizer`); the train step's only regularization is weight decay "
            "(`Trainer.weight_decay`). Remove the layer regularizers and set the weight decay instead."
        )


def _correct(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    predicted = tf.argmax(logits, -1, output_type=tf.int32)
    return tf.reduce_sum(tf.cast(tf.equal(predicted, tf.cast(labels, tf.int32)), tf.float32))


def make_train_step(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    strategy: tf.distribute.Strategy | None = None,
    *,
    num_classes: int,
    global_batch_size: int,
    from_logits: bool = True,
    weight_decay: float = 0.0,
    label_smoothing: float = 0.0,
    jit_compile: bool = False,
) -> Callable[[Batch], tuple[tf.Tensor, tf.Tensor]]:
    """Builds one synchronous SGD step over all replicas of `strategy`.

    The loss of each replica is its examples' summed cross-entropy divided by
    `global_batch_size`, plus `weight_decay / 2 * sum(kernel ** 2)` over `decayed_kernels` (so
    the gradient gets `weight_decay * kernel`, as in the paper and torchvision) divided by the
    replica count. A `LossScaleOptimizer` scales the loss.

    `weight_decay` is the only regularization the step applies. A model that carries its own
    regularization losses (`model.losses`, e.g. from `ResNet.kernel_regularizer`, which is there
    for Keras' own `fit`) is refused rather than decayed twice.

    Args:
        model: The model; its variables must have been created under `strategy`'s scope.
        optimizer: A built optimizer, created under the same scope.
        strategy: The distribution strategy; None for the current (default) one.
        num_classes: Number of classes (labels are integer indices).
        global_batch_size: Images of one step over all replicas.
        from_logits: Whether the model returns logits (else probabilities).
        weight_decay: L2 coefficient on kernels.
        label_smoothing: Label smoothing of the cross-entropy.
        jit_compile: Compile each replica's step with XLA.

    Returns:
        `step((images, labels))` (a distributed batch under a multi-replica strategy) returning
        the data loss summed over replicas (the mean over the global batch) and the number of
        correctly classified images.
    """
    check_no_model_losses(model)
    strategy = strategy or tf.distribute.get_strategy()
    variables = model.trainable_variables
    decayed = decayed_kernels(model)
    averaged = replica_local_state(model) if strategy.num_replicas_in_sync > 1 else []
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            logits, per_example = classification_loss(
                model,
                images,
                labels,
                num_classes=num_classes,
                from_logits=from_logits,
                label_smoothing=label_smoothing,
                training=True,
            )
            data_loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
            loss = data_loss
            if weight_decay:
                # l2_loss(v) = sum(v ** 2) / 2 in one kernel, without a squared copy of v.
                l2 = tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in decayed])
                loss += tf.nn.scale_regularization_loss(weight_decay * l2)
            to_differentiate = optimizer.scale_loss(loss) if scaled else loss
        grads = tape.gradient(to_differentiate, variables)
        optimizer.apply(grads, variables)
        if averaged:
            _average_over_replicas(averaged)
        return data_loss, _correct(logits, labels)

    replica_step = tf.function(replica_step, jit_compile=jit_compile)

    @tf.function
    def train_step(batch):
        loss, correct = strategy.run(replica_step, args=batch)
        return (
            strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
            strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None),
        )

    return train_step


def _average_over_replicas(variables: Sequence) -> None:
    """Sets each replica's copy of `variables` to their mean over replicas (one all-reduce)."""
    context = tf.distribute.get_replica_context()
    # The identities put the values on the replica's device, where collectives need them.
    means = context.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in variables])
    for variable, mean in zip(variables, means, strict=True):
        variable.assign(mean)


def make_eval_step(
    model: keras.Model,
    strategy: tf.distribute.Strategy | None = None,
    *,
    num_classes: int,
    from_logits: bool = True,
    jit_compile: bool = False,
) -> Callable[[Batch], list[tf.Tensor]]:
    """Builds an evaluation step over all replicas of `strategy` (None: the current one).

    Returns:
        `step((images, labels))` returning `[loss_sum, top1, top5, count]`, each summed over
        replicas: the summed cross-entropy, the numbers of top-1 and top-5 hits (top-k with k =
        min(5, num_classes)), and the number of images. Examples labelled -1 are padding (so
        that every replica gets a batch at every step, see `InputPipeline.eval`) and count in
        none of the sums.
    """
    strategy = strategy or tf.distribute.get_strategy()
    k = min(5, num_classes)

    def replica_step(images, labels):
        labels = tf.cast(labels, tf.int32)
        real = tf.cast(labels >= 0, tf.float32)
        logits, per_example = classification_loss(
            model, images, tf.maximum(labels, 0), num_classes=num_classes, from_logits=from_logits, training=False
        )
        hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
        in_top5 = tf.cast(tf.math.in_top_k(tf.maximum(labels, 0), logits, k), tf.float32)
        return (
            tf.reduce_sum(per_example * real),
            tf.reduce_sum(hits * real),
            tf.reduce_sum(in_top5 * real),
            tf.reduce_sum(real),
        )

    replica_step = tf.function(replica_step, jit_compile=jit_compile)

    @tf.function
    def eval_step(batch):
        results = strategy.run(replica_step, args=batch)
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, r, axis=None) for r in results]

    return eval_step
