"""`python -m tests.support.command_provider ENGINE_ADDRESS`: what the engine runs."""

import sys

from tests.support.command_provider.provider import serve

serve(sys.argv[1:])
