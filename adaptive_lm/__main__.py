"""`python -m adaptive_lm ...` is the same as `adaptive-lm ...`."""
import sys

from .cli import main

sys.exit(main())
