"""``python -m lightning_viz summary LOGDIR``."""

import sys

from lightning_viz.summary import main

sys.exit(main())
