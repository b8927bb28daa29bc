"""Progress of the mpmath eps tabulation (issue 12: minutes for a kinked phi with beta != 0): a bar
on stderr counting the tau nodes, shown by ``symbnmf eval``; library calls stay silent."""

from __future__ import annotations

import json

from symbnmf.numeric._epsilon import _PROGRESS, evaluate_eps, tau_progress


def test_the_bar_counts_every_new_tau_node(capsys):
    with tau_progress() as bar:
        evaluate_eps("identity", 4, eps=0.1, beta=0.35)
        n = bar.n
    assert n >= 9 and not _PROGRESS  # at least one degree-8 Chebyshev piece; the bar is gone after
    assert "tau nodes" in capsys.readouterr().err
    evaluate_eps("identity", 4, eps=0.2, beta=0.35)  # cached tables, no bar: silent
    assert "tau nodes" not in capsys.readouterr().err


def test_eval_shows_the_bar_on_stderr(capsys):
    from symbnmf.cli.main import main

    assert main(["eval", "identity", "-B", "4", "--eps", "0.1", "--beta", "0.45", "--json"]) == 0
    captured = capsys.readouterr()
    assert "eps integrals (mpmath): tau nodes" in captured.err
    assert json.loads(captured.out)["results"][0]["eps"] == 0.1  # stdout stays one JSON object
