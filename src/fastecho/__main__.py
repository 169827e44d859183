"""`python -m fastecho`: the `fastecho` command (its Ctrl-C guard is in fastecho/__init__.py)."""
import sys

from fastecho.cli import main

sys.exit(main())
