"""`python -m tests.support.docker_provider ENGINE_ADDRESS`: what the engine runs."""

import sys

from tests.support.docker_provider.provider import serve

serve(sys.argv[1:])
