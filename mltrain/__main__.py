import sys

from mltrain.cli import main

sys.exit(main())
