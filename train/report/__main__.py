"""python -m train.report <dir> (train/report/command.py)."""

import sys

from train.report.command import main

sys.exit(main())
