"""Allow ``python -m dispatch_cli``."""

import sys

from dispatch_cli.main import main

sys.exit(main())
