"""Allow ``python -m segkit`` (and ``torchrun -m segkit``)."""

import sys

from segkit.cli import main

sys.exit(main())
