"""Learning-rate schedules: the paper's step recipes, cosine, warm-up, linear scaling."""

import numpy as np
import pytest

from resnet.training.schedules import learning_rate_schedule


def rates(schedule, steps):
    return [float(schedule(s)) for s in steps]


def test_paper_cifar_recipe_in_steps():
    s = learning_rate_schedule(390, 64000, 128, schedule="piecewise", unit="steps", boundaries=(32000, 48000))
    np.testing.assert_allclose(
        rates(s, [0, 31999, 32001, 47999, 48001, 63999]), [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6
    )


def test_imagenet_recipe_in_epochs_with_linear_scaling():
    s = learning_rate_schedule(100, 9000, 512, reference_batch_size=256, boundaries=(30, 60, 80))
    np.testing.assert_allclose(rates(s, [0, 2999, 3001, 6001, 8001]), [0.2, 0.2, 0.02, 0.002, 0.0002], rtol=1e-5)


def test_cosine_with_warmup():
    s = learning_rate_schedule(10, 100, 64, schedule="cosine", warmup_epochs=1)
    values = rates(s, [0, 4, 9, 10, 55, 100])
    np.testing.assert_allclose(values[:3], [0.01, 0.05, 0.1], rtol=1e-5)  # the ramp reaches the peak
    # Then a cosine over the 90 steps after the warm-up: peak at 10, half at 55, zero at 100.
    np.testing.assert_allclose(values[3:], [0.1, 0.05, 0.0], rtol=1e-5, atol=1e-7)


def test_warmup_longer_than_the_run_still_trains():
    s = learning_rate_schedule(2, 2, 8, schedule="cosine", warmup_epochs=1)
    assert rates(s, [0, 1]) == pytest.approx([0.05, 0.1], rel=1e-5)


def test_constant():
    s = learning_rate_schedule(10, 100, 64, schedule="constant", base_learning_rate=0.3)
    np.testing.assert_allclose(rates(s, [0, 50, 100]), [0.3] * 3, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"schedule": "step"}, r"schedule.*'piecewise', 'cosine', 'constant'.*'step'"),
        ({"unit": "iterations"}, r"unit.*'epochs', 'steps'.*'iterations'"),
        ({"boundaries": (60, 30)}, r"boundaries.*increase strictly.*\(60, 30\)"),
        ({"base_learning_rate": 0}, r"base_learning_rate.*> 0"),
    ],
)
def test_bad_schedule_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        learning_rate_schedule(10, 100, 64, **kwargs)
