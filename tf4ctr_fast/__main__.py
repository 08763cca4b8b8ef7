"""`python -m tf4ctr_fast ...` == `tf4ctr-fast ...` (what `torchrun -m tf4ctr_fast train ...` runs)."""
import sys

from .cli import main

sys.exit(main())
