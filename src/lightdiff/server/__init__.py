"""`lightdiff serve`: FastAPI routes, a SQLite job queue, worker processes, events and the web UI.

Layout: config (settings), store (SQLite job queue), validation and uploads (checks before
queuing), worker and supervisor (one process per device, restarted on death), security
(token, Origin, Host, body size), errors (one error shape per API), api_native, api_a1111,
api_openai (routes), app (create_app). The server holds no model logic: workflows run in the
worker through the Engine.
"""
