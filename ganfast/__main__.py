"""`python -m ganfast ...`: the same as the `ganfast` command."""
import sys

from .cli import main

sys.exit(main())
