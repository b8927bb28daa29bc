"""Seeds are sharded over all JAX devices: four host devices give the same numbers as one (issue 13).

Covers the dynamics measurement (:func:`measure_dynamics`) and batched training
(:func:`train_networks`, the building block of the trainability grid). XLA_FLAGS must be set
before JAX starts, so the four-device run happens in a subprocess; the one-device run happens here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")

from symbnmf.experiments.dynamics import DynamicsConfig, measure_dynamics
from symbnmf.experiments.train import TrainConfig, load_digits, train_network, train_networks

# a subprocess with 4 host devices compiles the dynamics and training programs anew: ~60 s on 2 cores
pytestmark = pytest.mark.slow

DYN = dict(depth=4, batch_size=8, width=16, steps=3, seeds=6, seed=5)
TRAIN = dict(depth=2, batch_size=8, width=16, steps=20)
SEEDS = [3, 4, 5, 6, 7]
GRID = dict(depths=[2, 3], batch_sizes=[8], width=16, steps=10, seeds=3, theory_method="closed-form", progress=False)

SCRIPT = """
import json, sys, jax
from symbnmf.experiments.dynamics import DynamicsConfig, measure_dynamics
from symbnmf.experiments.train import TrainConfig, load_digits, train_networks
from symbnmf.experiments.trainability import run_grid
dyn, train, seeds, grid = json.loads(sys.argv[1])
assert jax.device_count() == 4, jax.devices()
ds = load_digits()
r = measure_dynamics(DynamicsConfig(**dyn), ds, theory_method=None)
t = train_networks(ds, TrainConfig(**train), seeds)
g = run_grid(**grid)
print(json.dumps({"devices": r.devices, "records": {k: v.tolist() for k, v in r.records.items()},
                  "acc": [x.test_accuracy for x in t], "loss": [x.final_loss for x in t],
                  "grid": [g["accuracy"], g["accuracy_sd"], [x["final_loss"] for x in g["runs"]]]}))
"""


@pytest.fixture(scope="module")
def four_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps([DYN, TRAIN, SEEDS, GRID])],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_dynamics_four_devices_match_one_device(four_devices):
    import jax

    one = measure_dynamics(DynamicsConfig(**DYN), load_digits(), theory_method=None, devices=jax.devices()[:1])
    assert four_devices["devices"] == 4 and one.devices == 1
    # 6 networks are padded to 8 on 4 devices; network s depends only on (seed, s)
    for k, v in one.records.items():
        np.testing.assert_allclose(np.array(four_devices["records"][k]), v, rtol=1e-5, atol=1e-6, err_msg=k)


def test_train_networks_four_devices_match_one_device_and_train_network(four_devices):
    import jax

    ds = load_digits()
    one = train_networks(ds, TrainConfig(**TRAIN), SEEDS, devices=jax.devices()[:1])
    assert [r.config.seed for r in one] == SEEDS
    np.testing.assert_allclose(four_devices["loss"], [r.final_loss for r in one], rtol=1e-5)
    np.testing.assert_allclose(four_devices["acc"], [r.test_accuracy for r in one], atol=1.5 / len(ds.y_test))
    # the batched network s is the network train_network trains with seed s
    single = train_network(ds, TrainConfig(**TRAIN, seed=SEEDS[1]))
    assert abs(single.final_loss - one[1].final_loss) < 1e-4 * max(1.0, abs(single.final_loss))
    assert abs(single.test_accuracy - one[1].test_accuracy) <= 1.5 / len(ds.y_test)


def test_trainability_grid_four_devices_match_one_device(four_devices):
    """The trainability grid's seeds are sharded too: same per-network losses on 1 and 4 devices."""
    from symbnmf.experiments.trainability import run_grid

    g = run_grid(**GRID)
    acc, sd, losses = four_devices["grid"]
    np.testing.assert_allclose(losses, [x["final_loss"] for x in g["runs"]], rtol=1e-5)
    np.testing.assert_allclose(acc, g["accuracy"], atol=1.5 / g["n_test"])
    np.testing.assert_allclose(sd, g["accuracy_sd"], atol=1.5 / g["n_test"])
