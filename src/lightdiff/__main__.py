import sys

from lightdiff.cli import main

sys.exit(main())
