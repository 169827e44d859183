import sys

from fastecho.bench.cli import main

sys.exit(main())
