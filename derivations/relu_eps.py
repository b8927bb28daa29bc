"""Derive the mean field theory of BN with eps > 0 for relu in closed form in (B, eps, sigma_w^2,
gamma) at beta = 0 (fixed point equation, collapse boundary, forward and backward G/L/M
eigenvalues, the collapsed-phase limits; symbnmf.derive_eps) and write relu_eps.tex /
relu_eps.json next to this script. Run: `python derivations/relu_eps.py [--force]`."""

import sys

from symbnmf.cli.scripts import derivation_script

if __name__ == "__main__":
    sys.exit(derivation_script("relu", __file__, eps=True))
