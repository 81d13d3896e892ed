"""``python -m tcppipe`` is the tcppipe client (keep_tcppipe_alive starts it this way)."""

import sys

from tcppipe.cli import client_main

sys.exit(client_main())
