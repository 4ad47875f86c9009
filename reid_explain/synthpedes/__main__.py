"""``python -m reid_explain.synthpedes``: the ``reid-explain synth`` command."""

import sys

from .cli import synth_main

sys.exit(synth_main())
