"""Counter-based random streams of the Monte Carlo networks (``symbnmf.montecarlo.layers``, issue 14).

The streams must keep the law of ``jax.random.normal`` exactly: the same Threefry-2x32 blocks as
JAX's own hash (checked against ``jax.extend.random.threefry_2x32``), both words of each block,
and JAX's own uniform -> normal transform applied to them (checked by handing the very same bits
to ``jax.random.normal`` through a PRNG implementation that returns them).  Statistical checks are
seeded, with thresholds far from what a correct generator reaches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import define_prng_impl, threefry_2x32

from symbnmf.montecarlo import layers


def test_stream_numbers_are_distinct_per_purpose_and_layer():
    ids = {
        int(layers.stream(p, l))
        for p in (layers.INIT, layers.READOUT, layers.FORWARD, layers.BACKWARD, layers.BIAS)
        for l in (0, 1, 2, 77)
    }
    assert len(ids) == 20
    assert int(layers.stream(layers.FORWARD, layers.MAX_LAYERS - 1)) >> 24 == layers.FORWARD


@pytest.mark.parametrize("width", [32, 64])
def test_random_bits_are_threefry_blocks_of_stream_and_counter(width):
    with jax.enable_x64(width == 64):
        key = jax.random.key(11)
        sid = layers.stream(layers.BACKWARD, 5)
        n = 7
        bits = np.asarray(layers.random_bits(key, sid, n, width))
        kd = jax.random.key_data(key)
        blocks = (n + 1) // 2 if width == 32 else n
        # threefry_2x32 hashes the pairs (count[i], count[blocks + i]) and returns both halves
        words = np.asarray(
            threefry_2x32(
                kd, jnp.concatenate([jnp.full(blocks, sid, jnp.uint32), jnp.arange(blocks, dtype=jnp.uint32)])
            )
        )
        first, second = words[:blocks], words[blocks:]
        if width == 32:
            expect = np.concatenate([first, second])[:n]
        else:
            expect = (first.astype(np.uint64) << np.uint64(32)) | second.astype(np.uint64)
        np.testing.assert_array_equal(bits, expect)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_normal_is_jax_normal_of_the_same_bits(dtype):
    """jax.random.normal applied to the stream's bits (a PRNG implementation that returns them)
    gives layers.normal: the transform is JAX's, to the last bit up to XLA's choice of fused
    multiply-adds in its erf⁻¹ polynomials (a few ulp; they differ between vector lanes and loop
    tails even within JAX itself)."""
    with jax.enable_x64(dtype == "float64"):
        width = 64 if dtype == "float64" else 32
        key = jax.random.key(3)
        sid = layers.stream(layers.FORWARD, 9)
        shape = (33, 5)
        bits = layers.random_bits(key, sid, 33 * 5, width)

        impl = define_prng_impl(
            key_shape=(1,),
            seed=lambda s: jnp.zeros((1,), jnp.uint32),
            split=lambda k, shape: jnp.zeros((*shape, 1), jnp.uint32),
            random_bits=lambda k, bit_width, shape: bits.reshape(shape),
            fold_in=lambda k, d: k,
            name="replay",
        )
        replay = jax.random.wrap_key_data(jnp.zeros((1,), jnp.uint32), impl=impl)
        expect = jax.random.normal(replay, shape, dtype)
        got = layers.normal(key, sid, shape, dtype)
        assert got.dtype == jnp.dtype(dtype)
        eps = float(jnp.finfo(dtype).eps)
        np.testing.assert_allclose(np.asarray(got), np.asarray(expect), rtol=16 * eps, atol=16 * eps)


def test_normal_law_and_independence_of_streams():
    """Seeded: first four moments of 2e6 float32 normals, a Kolmogorov-Smirnov distance, and no
    correlation between streams, between the two words of a block, or between networks."""
    from scipy import stats

    n = 2_000_000
    key = jax.random.key(2024)
    z = np.asarray(layers.normal(key, layers.stream(layers.FORWARD, 3), (n,), jnp.float32), dtype=np.float64)
    se = 1 / np.sqrt(n)
    assert abs(z.mean()) < 5 * se and abs(z.var() - 1) < 5 * np.sqrt(2) * se
    assert abs(stats.skew(z)) < 5 * np.sqrt(6) * se and abs(stats.kurtosis(z)) < 5 * np.sqrt(24) * se
    assert stats.kstest(z, "norm").statistic < 1.63 / np.sqrt(n) * 1.5  # ~1e-3 level
    words = z.reshape(2, n // 2)  # first and second word of the same blocks
    other = np.asarray(layers.normal(key, layers.stream(layers.BACKWARD, 3), (n,), jnp.float32), dtype=np.float64)
    net2 = np.asarray(layers.normal(jax.random.fold_in(key, 1), layers.stream(layers.FORWARD, 3), (n,), jnp.float32))
    for a, b in ((words[0], words[1]), (z, other), (z, net2.astype(np.float64))):
        assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(len(a))


def test_rademacher_is_balanced_and_other_prngs_use_fold_in():
    key = jax.random.key(8)
    r = np.asarray(layers.rademacher(key, layers.stream(layers.FORWARD, 0), (400, 500), jnp.float32))
    assert set(np.unique(r)) == {-1.0, 1.0} and abs(r.mean()) < 5 / np.sqrt(r.size)
    rbg = jax.random.key(8, impl="rbg")
    sid = layers.stream(layers.INIT)
    np.testing.assert_array_equal(
        np.asarray(layers.normal(rbg, sid, (4, 3), jnp.float32)),
        np.asarray(jax.random.normal(jax.random.fold_in(rbg, sid), (4, 3), jnp.float32)),
    )
