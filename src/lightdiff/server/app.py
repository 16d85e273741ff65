"""The FastAPI application: native API, AUTOMATIC1111 and OpenAI compatibility, web UI, workers.

``create_app(config)`` builds it; its lifespan takes the data-dir lock, returns jobs left claimed
by a previous run to the queue, and starts the supervisor (one worker process per device).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from lightdiff import __version__
from lightdiff.server import errors
from lightdiff.server.config import ServerConfig
from lightdiff.server.jobs import ServerState
from lightdiff.server.security import SecurityMiddleware
from lightdiff.server.store import Store
from lightdiff.server.supervisor import Supervisor, lock_data_dir

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

DESCRIPTION = """Run text-to-image jobs on a persistent queue.

- **Native API** (`/api`): submit any workflow request, follow it with Server-Sent Events, fetch images.
- **AUTOMATIC1111** (`/sdapi/v1`) and **OpenAI Images** (`/v1/images`) compatible endpoints.

Errors of the native API have one shape: `{"error": {"code", "message", "hint"}}`.
When the server has a token, send `Authorization: Bearer TOKEN` or `X-API-Key: TOKEN`.
"""


def create_app(config: ServerConfig, start_workers: bool = True) -> FastAPI:
    Path(config.data_dir).mkdir(parents=True, exist_ok=True)
    store = Store(config.db_path)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        st: ServerState = app.state.lightdiff
        lock = None
        if start_workers:
            lock = lock_data_dir(Path(config.data_dir))
            st.store.release_all()  # we hold the lock: every claim left in the store is a dead worker's
            st.supervisor = Supervisor(config, st.store)
            st.supervisor.start()
        try:
            yield
        finally:
            if st.supervisor is not None:
                st.supervisor.stop()
            if lock is not None:
                lock.close()

    app = FastAPI(title="lightdiff", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.lightdiff = ServerState(config=config, store=store)
    errors.install(app)

    from lightdiff.server import api_a1111, api_native, api_openai

    app.include_router(api_native.router)
    app.include_router(api_a1111.router)
    app.include_router(api_openai.router)
    if config.eval_dir:  # blind human rating of an eval run, behind the same token and origin checks
        from lightdiff.evals import rate_app

        app.include_router(rate_app.router(rate_app.Rating(config.eval_dir)), prefix="/rate")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return Response(status_code=204)

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    app.add_middleware(SecurityMiddleware, config=config)
    return app
