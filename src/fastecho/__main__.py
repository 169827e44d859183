import sys

from fastecho.cli import main

sys.exit(main())
