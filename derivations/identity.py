"""Derive the mean field theory of BN for identity in closed form in B (fixed point, forward and
backward G/L/M eigenvalues, depth scale, B -> infinity limits) and write identity.tex / identity.json
next to this script. Run: `python derivations/identity.py [--force]`."""

import sys

from symbnmf.cli.scripts import derivation_script

if __name__ == "__main__":
    sys.exit(derivation_script("identity", __file__))
