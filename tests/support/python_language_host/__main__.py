"""`python -m tests.support.python_language_host [flags] [ENGINE_ADDRESS]` (what bin/ runs)."""

import sys

from tests.support.python_language_host.server import main

raise SystemExit(main(sys.argv[1:]))
