"""``python -m metalib.runner {run,list}``: see :mod:`metalib.runner.cli`."""
import sys

from .cli import main

sys.exit(main())
