"""`python -m mtrec.serve --run RUN`: the HTTP API over a run folder (FastAPI + uvicorn).

`create_app(run, Settings(...))` builds the app for tests or another ASGI server; the command line
is in `mtrec.serve.__main__`.
"""

from mtrec.serve.app import Served, Settings, create_app

__all__ = ["Served", "Settings", "create_app"]
