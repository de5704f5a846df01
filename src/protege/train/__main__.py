"""`python -m protege.train -c FILE [--set k=v] [--resume]`: the entry `accelerate launch` starts."""

import sys

from protege.train.stage import main

sys.exit(main())
