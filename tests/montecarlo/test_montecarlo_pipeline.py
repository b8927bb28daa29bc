"""Issue 14: what ``symbnmf run`` relies on to simulate beside the derivations.

``attach_theory`` turns a ``theory=False`` result into exactly what ``theory=True`` returns;
simulations run in a thread while another compiles give the results they give in turn; the XLA
options of the Monte Carlo programs drop an option this XLA does not know instead of failing.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from symbnmf.montecarlo import run as mc_run
from symbnmf.montecarlo.networks import attach_theory, precompile_simulation, simulate


def _without_time(summary: dict) -> str:
    return json.dumps({k: v for k, v in summary.items() if k != "time_s"})


def test_attach_theory_equals_simulating_with_theory():
    for act, B in (("relu", 8), ("tanh", 5)):  # closed form; fast JAX quadrature
        full = simulate(act, B, 32, 6, 5, seed=7)
        bare = simulate(act, B, 32, 6, 5, seed=7, theory=False)
        assert bare.theory is None and bare.summary["gradient_rate"]["theory"] is None
        got = attach_theory(bare, act)
        assert got.theory == full.theory and got.theory_reason == full.theory_reason
        assert list(got.summary) == list(full.summary)
        assert _without_time(got.summary) == _without_time(full.summary)
        assert got.summary["gradient_rate"]["theory"] is not None
    # no theory below B = 4: the reason is kept, as simulate gives it
    got = attach_theory(simulate("relu", 3, 16, 4, 3, seed=1, theory=False), "relu")
    assert _without_time(got.summary) == _without_time(simulate("relu", 3, 16, 4, 3, seed=1).summary)


def test_simulations_in_a_thread_beside_the_compiler_give_the_sequential_results():
    cases = [("relu", 4, 24), ("identity", 5, 32), ("relu", 6, 16)]
    seq = [simulate(a, B, N, 5, 10, seed=B + N, theory=False) for a, B, N in cases]
    mc_run._EXECUTABLES.clear()  # compile again, in a background thread, while the others run
    with ThreadPoolExecutor(1) as comp, ThreadPoolExecutor(1) as pool:  # as symbnmf run does
        for a, B, N in cases:
            comp.submit(precompile_simulation, a, B, N, 5, 10)
        futs = [pool.submit(simulate, a, B, N, 5, 10, seed=B + N, theory=False) for a, B, N in cases]
        par = [f.result() for f in futs]
    for s, p in zip(seq, par):
        for k in ("grad_x", "grad_w", "stats"):
            assert np.array_equal(getattr(s, k), getattr(p, k))


def test_unknown_compiler_option_is_dropped(monkeypatch):
    calls = []

    class Lowered:
        def compile(self, compiler_options):
            calls.append(dict(compiler_options))
            for k in compiler_options:
                if k.startswith("xla_no_such"):
                    raise RuntimeError(f"INVALID_ARGUMENT: No such compile option: '{k}'")
            return "compiled"

    monkeypatch.setattr(mc_run, "COMPILER_OPTIONS", {"xla_backend_optimization_level": 1, "xla_no_such_flag": True})
    assert mc_run._compile(Lowered()) == "compiled"
    assert calls == [
        {"xla_backend_optimization_level": 1, "xla_no_such_flag": True},
        {"xla_backend_optimization_level": 1},
    ]

    class Broken:
        def compile(self, compiler_options):
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")

    try:
        mc_run._compile(Broken())
    except RuntimeError as exc:
        assert "RESOURCE_EXHAUSTED" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("a real compile error must propagate")
