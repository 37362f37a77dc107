"""A stand-in for vLLM's OpenAI-compatible server.

Why it exists: the load balancer and the deployment have to be tested and
benchmarked on machines without a GPU and without network access to the model
hub. The stand-in accepts vLLM's command line, behaves like vLLM where the
deployment can observe it (downloads into the shared HuggingFace cache, only
listens once "loaded", the Uvicorn log line, /health, API-key scope, streaming
shape) and makes generation time and replica identity controllable, so a test
can tell which replica answered and how long a token took.

It must run on PyPI's Starlette/uvicorn on the host and on Debian 12's much older
python3-starlette (0.26) / python3-uvicorn (0.17) inside the image, so it uses only
APIs both have: ``Starlette(routes=...)``, ``Route``, ``JSONResponse``,
``StreamingResponse``, ``Response`` and ``uvicorn.run``.
"""

__version__ = "0.1.0"
