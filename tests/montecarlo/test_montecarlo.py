"""Monte Carlo networks (symbnmf.montecarlo.networks) against independent numerics and published anchors.

Statistical tests are seeded (deterministic) and compare with |z| < 4, where the z-score uses
the jackknife/sample standard error; finite-width biases (O(1/N)) are removed by fitting the
measurements against 1/N and comparing the extrapolated intercept, not by widening tolerances.
Anchors (docs/theory.md, published): identity λ↓_G = (B-2)/(B-3); ReLU fixed point diag 1/2,
offdiag J1(-1/(B-1))/2.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import symbnmf
from symbnmf._errors import BatchSizeError, OutputExistsError, SymbnmfError
from symbnmf.montecarlo.networks import MonteCarloError, simulate
from symbnmf.montecarlo.stats import fit_rate, glm_pieces

Z_MAX = 4.0


def _extrapolate(ns, values, ses):
    """Weighted least squares of values against 1/N; intercept and its standard error."""
    X = np.c_[np.ones(len(ns)), 1.0 / np.asarray(ns, float)]
    w = 1.0 / np.asarray(ses, float) ** 2
    cov = np.linalg.inv(X.T @ (w[:, None] * X))
    beta = cov @ X.T @ (w * np.asarray(values, float))
    return float(beta[0]), float(math.sqrt(cov[0, 0]))


def _j1(c):
    return (math.sqrt(1 - c * c) + (math.pi - math.acos(c)) * c) / math.pi


# --------------------------------------------------------------------------- statistics (numpy)


def test_glm_pieces_matches_bruteforce_projection():
    rng = np.random.default_rng(0)
    B = 6
    G = np.eye(B) - 1 / B
    A = rng.normal(size=(B, B))
    sigma = A @ A.T + 3 * np.eye(B)
    out = glm_pieces(sigma)
    sg = G @ sigma @ G
    mu = np.trace(sg) / (B - 1)
    delta = sg / mu - G
    # brute force: least squares onto span{G E_i G} minus the G direction
    basis = np.stack([(G[:, [i]] @ G[[i], :]).ravel() for i in range(B)], 1)
    coef, *_ = np.linalg.lstsq(basis, delta.ravel(), rcond=None)
    p_gl = (basis @ coef).reshape(B, B)
    p_g = np.sum(delta * G) / np.sum(G * G) * G
    assert out["mu"] == pytest.approx(mu, rel=1e-12)
    assert out["L"] == pytest.approx(np.linalg.norm(p_gl - p_g), rel=1e-10)
    assert out["M"] == pytest.approx(np.linalg.norm(delta - p_gl), rel=1e-10)
    m_part = delta - p_gl
    assert np.allclose(np.diag(m_part), 0, atol=1e-12) and np.allclose(G @ m_part @ G, m_part, atol=1e-12)
    # a BSB1 matrix is at distance 0; batch-shift invariance (invisible part) is dropped
    bsb1 = 2.0 * ((1 - 0.3) * np.eye(B) + 0.3)
    assert glm_pieces(bsb1)["L"] < 1e-12 and glm_pieces(bsb1)["M"] < 1e-12
    v = rng.normal(size=B)
    shifted = sigma + np.outer(v, np.ones(B)) + np.outer(np.ones(B), v)
    assert glm_pieces(shifted)["M"] == pytest.approx(out["M"], rel=1e-10)


def test_fit_rate_recovers_known_rate_and_zero_case():
    rng = np.random.default_rng(1)
    L, K, r = 20, 4000, 1.3
    # mean over networks of exp(noise) r^(L-l): log-normal noise with the same law per layer
    samples = r ** (L - np.arange(L + 1))[None, :] * rng.lognormal(0.0, 0.5, size=(K, L + 1))
    fit = fit_rate(samples, 2, 18)
    assert abs(fit.rate - r) < Z_MAX * fit.stderr and fit.stderr < 0.01
    zero = np.zeros((10, 6))
    zero[:, -1] = 1.0
    assert fit_rate(zero, 1, 4).rate == 0.0


# --------------------------------------------------------------------------- JAX building blocks


def test_probes_equal_direct_jax_grad_norms():
    import jax
    import jax.numpy as jnp

    from symbnmf.montecarlo.layers import batch_norm, probe_sq, probe_weight_sq

    N, B, L = 16, 5, 3
    ks = jax.random.split(jax.random.key(0), L + 2)
    Ws = [jax.random.normal(k, (N, N)) / jnp.sqrt(N) for k in ks[:L]]
    x0 = jax.random.normal(ks[L], (N, B))
    R = jax.random.normal(ks[L + 1], (N, B))
    phi = jnp.tanh

    def direct(Ws, us):
        x = x0 + us[0]
        for l in range(L):
            x = phi(batch_norm(Ws[l] @ x, 1.0, 0.0, 0.0)) + us[l + 1]
        return jnp.sum(R * x)

    gW, gu = jax.jit(jax.grad(direct, argnums=(0, 1)))(Ws, [jnp.zeros((N, B))] * (L + 1))

    def probed(px, pw):
        x = x0
        for l in range(L):
            x = probe_sq(x, px[l])
            x = phi(batch_norm(probe_weight_sq(Ws[l] @ x, x, pw[l]), 1.0, 0.0, 0.0))
        return jnp.sum(R * probe_sq(x, px[L]))

    px, pw = jax.jit(jax.grad(probed, argnums=(0, 1)))(jnp.zeros(L + 1), jnp.zeros(L))
    assert np.allclose(px, [float(jnp.sum(g * g)) for g in gu], rtol=1e-5)
    assert np.allclose(pw, [float(jnp.sum(g * g)) for g in gW], rtol=1e-5)


def test_network_pass_dense_reproduces_hand_written_network():
    """The simulator's bookkeeping (keys, probes, layer indices) against a plain re-implementation."""
    import jax
    import jax.numpy as jnp

    from symbnmf.montecarlo.layers import FORWARD, INIT, READOUT, batch_norm, dense_weights, normal, stream

    N, B, L, seed, burn = 12, 4, 4, 7, 2
    res = simulate("tanh", B, N, L, 2, seed=seed, method="dense", init="iid", burn_in=burn, theory=False)
    key = jax.random.fold_in(jax.random.key(np.uint32(seed)), 1)  # network number 1
    x0 = normal(key, stream(INIT), (N, B), jnp.float32)
    for layer in range(burn):  # burn-in layers 0, 1: forward only
        x0 = jnp.tanh(
            batch_norm(dense_weights(key, stream(FORWARD, layer), N, "gaussian", jnp.float32) @ x0, 1.0, 0.0, 0.0)
        )
    R = normal(key, stream(READOUT), (N, B), jnp.float32)
    Ws = [dense_weights(key, stream(FORWARD, burn + l), N, "gaussian", jnp.float32) for l in range(L)]

    def loss(Ws, us):
        x = x0 + us[0]
        for l in range(L):
            x = jnp.tanh(batch_norm(Ws[l] @ x, 1.0, 0.0, 0.0)) + us[l + 1]
        return jnp.sum(R * x)

    gW, gu = jax.jit(jax.grad(loss, argnums=(0, 1)))(Ws, [jnp.zeros((N, B))] * (L + 1))
    assert np.allclose(res.grad_x[1], [float(jnp.sum(g * g)) for g in gu], rtol=1e-4)
    assert np.allclose(res.grad_w[1], [float(jnp.sum(g * g)) for g in gW], rtol=1e-4)


def test_fast_layer_matches_dense_conditional_law():
    """h = Z1 (x^T x/N)^(1/2), W^T g from the conditional law: same moments as a dense W.

    x has a null direction (rows sum to zero, as for the identity activation), and the
    cotangent g depends on h, so both terms of the backward rule matter.
    """
    import jax
    import jax.numpy as jnp

    from symbnmf.montecarlo.layers import FORWARD, dense_weights, gaussian_layer, stream

    N, B, M = 10, 4, 20000
    kx, kr, ku = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, (N, B))
    x = x - x.mean(1, keepdims=True)
    R = jax.random.normal(kr, (N, B))
    U = jax.random.normal(ku, (N, B))

    def stats(layer):
        def one(k):
            gx = jax.grad(lambda xx: jnp.sum(R * jnp.tanh(layer(xx, k))))(x)
            return jnp.stack([jnp.sum(gx * gx), jnp.sum(gx * x), jnp.sum(gx * U) ** 2, jnp.sum(gx * U)])

        return jax.vmap(one)(jax.random.split(jax.random.key(4), M))

    fast = np.asarray(stats(lambda xx, k: gaussian_layer(xx, k, jnp.uint32(6))))
    dense = np.asarray(stats(lambda xx, k: dense_weights(k, stream(FORWARD, 6), N, "gaussian", jnp.float32) @ xx))
    diff = fast.mean(0) - dense.mean(0)
    se = np.sqrt(fast.var(0, ddof=1) / M + dense.var(0, ddof=1) / M)
    assert np.all(np.abs(diff / se) < Z_MAX), diff / se


# --------------------------------------------------------------------------- theory agreement


@pytest.fixture(scope="module")
def identity_width_sweep():
    ns = (128, 512)
    return ns, [simulate("identity", 8, n, 16, 300, seed=11, theory=False).summary for n in ns]


def test_identity_gradient_rate_extrapolates_to_published_value(identity_width_sweep):
    ns, runs = identity_width_sweep
    rates = [s["gradient_rate"]["measured"] for s in runs]
    ses = [s["gradient_rate"]["stderr"] for s in runs]
    target = (8 - 2) / (8 - 3)
    # finite-width bias is negative and shrinks with N; the 1/N fit removes it
    assert rates[0] < rates[1] < target + Z_MAX * ses[1]
    r_inf, se_inf = _extrapolate(ns, rates, ses)
    assert abs(r_inf - target) < Z_MAX * se_inf, (r_inf, se_inf)
    # weight gradients grow at the same rate (App. L)
    w = [s["weight_gradient_rate"] for s in runs]
    w_inf, wse = _extrapolate(ns, [e["measured"] for e in w], [e["stderr"] for e in w])
    assert abs(w_inf - target) < Z_MAX * wse


def test_relu_fixed_point_extrapolates_to_published_values():
    B, ns = 8, (256, 1024)
    runs = [simulate("relu", B, n, 8, 60, seed=5, backward=False, theory=False).summary["fixed_point"] for n in ns]
    for key, target in (("diag", 0.5), ("offdiag", 0.5 * _j1(-1 / (B - 1)))):
        v, se = _extrapolate(ns, [r[key]["measured"] for r in runs], [r[key]["stderr"] for r in runs])
        assert abs(v - target) < Z_MAX * se, (key, v, se, target)


def _evaluate_or_skip(act, B):
    rec, reason = symbnmf.montecarlo.networks.theory_values(symbnmf.get_activation(act), B)
    if rec is None:
        pytest.skip(f"no theory value: {reason}")
    return rec


def test_relu_gradient_rate_against_evaluate():
    rec = _evaluate_or_skip("relu", 8)
    ns = (128, 512)
    runs = [simulate("relu", 8, n, 12, 200, seed=2).summary["gradient_rate"] for n in ns]
    assert runs[-1]["theory"] == pytest.approx(float(rec["backward"]["G"]))
    r_inf, se_inf = _extrapolate(ns, [r["measured"] for r in runs], [r["stderr"] for r in runs])
    assert abs(r_inf - float(rec["backward"]["G"])) < Z_MAX * se_inf


# --------------------------------------------------------------------------- implementations agree


@pytest.fixture(scope="module")
def relu_small():
    return simulate("relu", 8, 64, 12, 200, seed=1, theory=False)


def test_fast_and_dense_simulators_agree(relu_small):
    dense = simulate("relu", 8, 64, 12, 200, seed=21, method="dense", theory=False)
    a, b = relu_small.summary["gradient_rate"], dense.summary["gradient_rate"]
    assert abs(a["measured"] - b["measured"]) < Z_MAX * math.hypot(a["stderr"], b["stderr"])
    for key in ("diag", "offdiag"):
        a, b = relu_small.summary["fixed_point"][key], dense.summary["fixed_point"][key]
        assert abs(a["measured"] - b["measured"]) < Z_MAX * math.hypot(a["stderr"], b["stderr"])


def test_float32_and_float64_agree(relu_small):
    r64 = simulate("relu", 8, 64, 12, 200, seed=1, dtype="float64", theory=False)
    assert r64.grad_x.dtype == np.float64 and relu_small.grad_x.dtype == np.float32
    a, b = relu_small.summary["gradient_rate"], r64.summary["gradient_rate"]
    assert abs(a["measured"] - b["measured"]) < Z_MAX * math.hypot(a["stderr"], b["stderr"])


@pytest.mark.parametrize("law", ["orthogonal", "rademacher"])
def test_other_weight_laws_run_and_grow_like_gaussian(law, relu_small):
    r = simulate("relu", 8, 64, 12, 200, seed=4, weights=law, theory=False)
    assert r.summary["method"] == "dense"
    a, b = relu_small.summary["gradient_rate"], r.summary["gradient_rate"]
    # same N = infinity limit; at N = 64 the laws differ by O(1/N) only
    assert abs(a["measured"] - b["measured"]) < 0.05 * a["measured"]


# --------------------------------------------------------------------------- edge regimes


def test_batch_two_gradient_vanishes_and_batch_three_has_no_theory():
    r2 = simulate("relu", 2, 64, 6, 20, seed=0, dtype="float64")
    gx = r2.grad_x
    assert np.all(gx[:, :-1] <= 1e-12 * gx[:, -1:])  # exactly zero up to rounding
    json.dumps(r2.summary, allow_nan=False)  # log of 0 must not leak NaN/Infinity into JSON
    assert r2.summary["gradient_rate"]["theory"] is None and "B=2" in r2.summary["gradient_rate"]["reason"]
    r3 = simulate("identity", 3, 64, 6, 20, seed=0)
    assert r3.summary["gradient_rate"]["theory"] is None and np.all(np.isfinite(r3.grad_x))


@pytest.mark.parametrize(
    "kwargs, err",
    [
        (dict(batch_size=1), BatchSizeError),
        (dict(batch_size=2.5), BatchSizeError),
        (dict(width=0), MonteCarloError),
        (dict(depth=0), MonteCarloError),
        (dict(networks=0), MonteCarloError),
        (dict(weights="uniform"), MonteCarloError),
        (dict(dtype="float16"), MonteCarloError),
        (dict(method="fast", weights="orthogonal"), MonteCarloError),
        (dict(eps=-1.0), MonteCarloError),
        (dict(fit_window=(5, 3)), MonteCarloError),
        (dict(gamma=0.0), MonteCarloError),  # phi(0*x + beta) is constant: degenerate (issue 10)
        (dict(gamma=0.0, beta=1.0, backward=False), MonteCarloError),
        (dict(activation="step(x)"), MonteCarloError),  # phi' = 0: no gradient passes
    ],
)
def test_bad_input_raises_clear_error(kwargs, err):
    args = dict(activation="relu", batch_size=8, width=16, depth=4, networks=2)
    args.update(kwargs)
    with pytest.raises(err) as info:
        simulate(**args)
    assert isinstance(info.value, SymbnmfError) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- CLI


def _cli(argv):
    from symbnmf.cli import simulate as _cmd_simulate

    try:
        from symbnmf.cli.main import main

        return main(argv)
    except ModuleNotFoundError:  # other subcommands not merged yet: same dispatch by hand
        import argparse

        p = argparse.ArgumentParser()
        _cmd_simulate.add_arguments(p)
        args = p.parse_args(argv[1:])
        try:
            return _cmd_simulate.run(args)
        except SymbnmfError as exc:
            if args.json:
                print(json.dumps({"error": str(exc), "type": type(exc).__name__}))
            return 2


def test_cli_json_is_one_object_with_gradient_rate(capsys):
    rc = _cli(
        ["simulate", "identity", "--batch-size", "6", "--width", "32", "--depth", "6", "--networks", "8", "--json"]
    )
    out = capsys.readouterr()
    assert rc == 0
    obj = json.loads(out.out)  # exactly one JSON document
    gr = obj["gradient_rate"]
    assert set(gr) >= {"measured", "stderr", "theory", "z"}
    assert isinstance(gr["measured"], float) and gr["measured"] > 1
    assert "networks" not in out.err  # no progress bar with --json


def test_cli_bad_input_and_no_overwrite(capsys, tmp_path):
    rc = _cli(["simulate", "relu", "--batch-size", "1", "--json"])
    out = capsys.readouterr().out
    assert rc == 2 and "batch size" in json.loads(out)["error"]
    rc = _cli(["simulate", "relu", "-B", "4", "--weights", "cauchy", "--json"])
    assert rc == 2 and "weight law" in json.loads(capsys.readouterr().out)["error"]
    target = tmp_path / "raw.npz"
    target.write_bytes(b"keep")
    rc = _cli(["simulate", "relu", "-B", "4", "-N", "8", "-L", "3", "-K", "2", "--save", str(target), "--json"])
    assert rc == 2 and json.loads(capsys.readouterr().out)["type"] == OutputExistsError.__name__
    assert target.read_bytes() == b"keep"
