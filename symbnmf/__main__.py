import os
import sys

try:
    from symbnmf.cli.main import main
except KeyboardInterrupt:  # Ctrl-C while the command line is still loading
    print("symbnmf: interrupted", file=sys.stderr)
    os._exit(130)

sys.exit(main())
