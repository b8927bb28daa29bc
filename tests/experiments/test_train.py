"""Training loop, data loading and gradient-growth measurement of symbnmf.experiments.train (issue 6)."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("sklearn")

from symbnmf import SymbnmfError
from symbnmf.experiments.train import (
    TrainConfig,
    _batch_schedule,
    gradient_growth,
    load_digits,
    max_trainable_depth,
    train_network,
)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_digits_split_is_standardised_and_seeded(digits):
    assert digits.x_train.shape[1] == 64 and digits.n_classes == 10
    assert len(digits.y_train) + len(digits.y_test) == 1797
    assert digits.x_train.dtype == np.float32
    # standardised on the train split: mean 0, std 1 (or 0 for constant pixels)
    np.testing.assert_allclose(digits.x_train.mean(0), 0, atol=1e-5)
    sd = digits.x_train.std(0)
    assert np.all((np.abs(sd - 1) < 1e-4) | (sd < 1e-6))
    again = load_digits()
    np.testing.assert_array_equal(again.y_test, digits.y_test)
    assert 0.09 < digits.chance < 0.13  # ten balanced classes


def test_batch_schedule_has_no_repeats_within_a_batch():
    idx = _batch_schedule(100, 8, 40, np.random.default_rng(0))
    assert idx.shape == (40, 8)
    assert all(len(set(row)) == 8 for row in idx)
    assert idx.min() >= 0 and idx.max() < 100


def test_shallow_network_learns_well_above_chance(digits):
    r = train_network(digits, TrainConfig(depth=2, batch_size=16, width=32, steps=150, lr=0.05, seed=1))
    assert not r.diverged
    assert r.test_accuracy > 0.8 > 5 * digits.chance
    assert r.train_accuracy > 0.8
    assert math.isfinite(r.final_loss) and r.final_loss < 1.0


def test_rmsprop_and_bn_parameters_run(digits):
    r = train_network(
        digits,
        TrainConfig(
            depth=3,
            batch_size=8,
            width=32,
            steps=100,
            lr=1e-3,
            optimizer="rmsprop",
            activation="tanh",
            gamma=0.5,
            beta=0.1,
            eps=1e-3,
        ),
    )
    assert r.test_accuracy > 0.6


def test_training_is_deterministic(digits):
    cfg = TrainConfig(depth=2, batch_size=8, width=16, steps=30, seed=3)
    assert train_network(digits, cfg).test_accuracy == train_network(digits, cfg).test_accuracy


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(depth=0, batch_size=8),
        dict(depth=2, batch_size=1),
        dict(depth=2, batch_size=8, lr=-1.0),
        dict(depth=2, batch_size=8, optimizer="adam"),
        dict(depth=2, batch_size=8, eps=-1e-3),
        dict(depth=2.5, batch_size=8),
    ],
)
def test_bad_config_raises_symbnmf_error(digits, kwargs):
    with pytest.raises(SymbnmfError):
        train_network(digits, TrainConfig(**kwargs))


def test_batch_larger_than_dataset_is_rejected(digits):
    with pytest.raises(SymbnmfError, match="smaller"):
        train_network(digits, TrainConfig(depth=1, batch_size=5000, steps=1))


def test_max_trainable_depth_brackets():
    assert max_trainable_depth([2, 10, 40], [0.9, 0.8, 0.1], 0.5) == {
        "last_trainable": 10,
        "first_untrainable": 40,
        "estimate": 20.0,
    }
    # unsorted input, whole grid trains: open bracket
    assert max_trainable_depth([10, 2], [0.9, 0.95], 0.5)["first_untrainable"] is None
    # a failure at small depth ends the sweep even if a deeper run happens to be lucky
    assert max_trainable_depth([2, 10, 40], [0.9, 0.1, 0.6], 0.5)["last_trainable"] == 2
    assert max_trainable_depth([2, 10], [0.1, 0.1], 0.5)["estimate"] is None


def test_gradient_growth_identity_matches_published_rate():
    """Identity + BN: lambda_down_G = (B-2)/(B-3) (docs/theory.md anchor, Thm 3.9 equality case).

    Measured at width 64 in the training network at initialisation; tolerance: 4 bootstrap
    standard errors plus 2% for the O(1/N) finite-width bias.
    """
    B = 8
    g = gradient_growth(B, activation="identity", width=64, depth=16, n_networks=16, seed=2)
    exact = (B - 2) / (B - 3)
    assert abs(g.rate - exact) < 4 * g.rate_se + 0.02 * exact
    assert g.rate_se < 0.05


def test_gradient_growth_relu_explodes_faster_than_identity():
    """Thm 3.9: any non-linear phi has lambda_down_G > (B-2)/(B-3); ReLU at B=8 is about 1.79."""
    B = 8
    g = gradient_growth(B, activation="relu", width=64, depth=16, n_networks=16, seed=4)
    assert g.rate - 4 * g.rate_se > (B - 2) / (B - 3) + 0.3


def test_gradient_growth_bad_window():
    with pytest.raises(SymbnmfError, match="fit window"):
        gradient_growth(8, depth=4, fit_layers=(3, 9), n_networks=2)
