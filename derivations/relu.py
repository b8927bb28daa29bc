"""Derive the mean field theory of BN for relu in closed form in B (fixed point, forward and
backward G/L/M eigenvalues, depth scale, B -> infinity limits) and write relu.tex / relu.json
next to this script. Run: `python derivations/relu.py [--force]`."""

import sys

from symbnmf.cli.scripts import derivation_script

if __name__ == "__main__":
    sys.exit(derivation_script("relu", __file__))
