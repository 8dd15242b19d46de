import sys

from ploopfs.cli import main

sys.exit(main())
