import sys

from mltrain.cli.main import main

sys.exit(main())
