"""Derive the mean field theory of BN for leaky_relu in closed form in B (fixed point, forward and
backward G/L/M eigenvalues, depth scale, B -> infinity limits) and write leaky_relu.tex / leaky_relu.json
next to this script. Run: `python derivations/leaky_relu.py [--force]`."""

import sys

from symbnmf.cli.scripts import derivation_script

if __name__ == "__main__":
    sys.exit(derivation_script("leaky_relu", __file__))
