import sys

from symbnmf.cli.main import main

sys.exit(main())
