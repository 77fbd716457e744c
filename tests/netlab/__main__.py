import sys

from tests.netlab.cli import main

sys.exit(main())
