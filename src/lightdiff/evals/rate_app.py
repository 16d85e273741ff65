"""Blind human rating of an eval folder: a small FastAPI app and one static page (web/rate.html).

Two modes, both blind:

* ``pair``: two images of the same prompt, language and seed from two models, left/right chosen
  at random; the rater picks left, right or tie. Every ``repeat_every``-th task (about 10%) shows
  again a pair the rater has already judged, sides re-drawn, to measure self-consistency.
* ``score``: one image, scored 1-10 as the article's raters did.

The browser only ever sees an opaque token per task and the prompt text. Images are re-encoded
without their PNG text chunks (which name the model) and served by token; model names and file
paths stay on the server. Answers land in ``<run>/ratings.sqlite`` (``evals.store``).
"""

from __future__ import annotations

import io
import random
import threading
from itertools import combinations
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from lightdiff.errors import InvalidRequest, LightdiffError
from lightdiff.evals.run import images_by_unit, load_manifest, load_records
from lightdiff.evals.store import RatingStore

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
DB_NAME = "ratings.sqlite"


class NextTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rater: str
    mode: str = "pair"


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str
    choice: str | None = None  # pair mode: left, right or tie
    score: float | None = None  # score mode: 1-10


class Rating:
    """Chooses what each rater sees next, and records answers."""

    def __init__(self, run_dir: str | Path, repeat_every: int = 10, seed: int | None = None):
        self.run_dir = Path(run_dir)
        manifest = load_manifest(self.run_dir)
        self.prompt_text = {p["id"]: p for p in manifest.get("prompts", [])}
        records = load_records(self.run_dir)
        if not records:
            raise InvalidRequest("run_dir", f"{run_dir} has no generated images to rate.",
                                 f"Run `lightdiff eval ... -o {run_dir}` first.")
        self.units = images_by_unit(records)
        self.store = RatingStore(self.run_dir / DB_NAME)
        self.repeat_every = max(2, int(repeat_every))
        self.rng = random.Random(seed)
        self.lock = threading.Lock()  # choosing a task reads then writes: one at a time

    def _pairs(self) -> list[tuple]:
        return [(unit, a, b) for unit, per in sorted(self.units.items()) for a, b in combinations(sorted(per), 2)]

    def _images(self) -> list[tuple]:
        return [(unit, m) for unit, per in sorted(self.units.items()) for m in sorted(per)]

    def _unit(self, unit: tuple, model: str) -> dict:
        rec = self.units[unit][model]
        return {"prompt": unit[0], "lang": unit[1], "seed": unit[2], "scenario": rec.get("scenario")}

    def _path(self, unit: tuple, model: str) -> str:
        return str(self.run_dir / self.units[unit][model]["path"])

    def next_task(self, rater: str, mode: str) -> dict:
        if mode not in ("pair", "score"):
            raise InvalidRequest("mode", f"unknown rating mode {mode!r}.", "Use 'pair' or 'score'.")
        with self.lock:
            pending = self.store.pending(rater.strip(), mode)
            if pending is None:
                pending = self._new_pair(rater, mode) if mode == "pair" else self._new_score(rater)
            if pending is None:
                return {"done": True, **self._progress(rater, mode)}
            token = pending if isinstance(pending, str) else pending["token"]
        task = self.store.task(token)
        prompt = self.prompt_text.get(task["prompt"], {})
        return {"done": False, "token": token, "mode": mode, "prompt": prompt.get(task["lang"], task["prompt"]),
                **self._progress(rater, mode)}

    def _progress(self, rater: str, mode: str) -> dict:
        answered = len(self.store.rows("comparisons" if mode == "pair" else "scores", rater.strip()))
        total = len(self._pairs()) if mode == "pair" else len(self._images())
        return {"answered": answered, "total": total}

    def _new_pair(self, rater: str, mode: str) -> str | None:
        done = self.store.rows("comparisons", rater.strip())
        seen = {(r["prompt"], r["lang"], r["seed"], *sorted((r["model_left"], r["model_right"]))) for r in done}
        if done and (len(done) + 1) % self.repeat_every == 0:
            repeated = {k for k in seen if sum(1 for r in done if (r["prompt"], r["lang"], r["seed"],
                                                                  *sorted((r["model_left"], r["model_right"]))) == k) > 1}
            candidates = sorted(seen - repeated)
            if candidates:
                p, lang, s, a, b = self.rng.choice(candidates)
                return self._pair_task(rater, (p, lang, s), a, b, is_repeat=True)
        fresh = [(u, a, b) for u, a, b in self._pairs() if (*u, a, b) not in seen]
        if not fresh:
            return None
        unit, a, b = self.rng.choice(fresh)
        return self._pair_task(rater, unit, a, b, is_repeat=False)

    def _pair_task(self, rater: str, unit: tuple, a: str, b: str, is_repeat: bool) -> str:
        left, right = (a, b) if self.rng.random() < 0.5 else (b, a)
        return self.store.new_task(rater, "pair", self._unit(unit, left), (left, self._path(unit, left)),
                                   (right, self._path(unit, right)), is_repeat)

    def _new_score(self, rater: str) -> str | None:
        done = {(r["prompt"], r["lang"], r["seed"], r["model"]) for r in self.store.rows("scores", rater.strip())}
        fresh = [(u, m) for u, m in self._images() if (*u, m) not in done]
        if not fresh:
            return None
        unit, model = self.rng.choice(fresh)
        return self.store.new_task(rater, "score", self._unit(unit, model), (model, self._path(unit, model)))

    def image_bytes(self, token: str, side: str) -> bytes:
        """The image re-encoded as a bare PNG: no text chunks, so nothing in the file names the model."""
        from PIL import Image

        task = self.store.task(token)
        path = {"left": task["path_left"], "right": task["path_right"]}.get(side)
        if path is None:
            raise InvalidRequest("side", f"side {side!r} is not shown in this task.", "Ask for 'left' or 'right'.")
        with Image.open(path) as im:
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="PNG")
        return buf.getvalue()

    def answer(self, body: Answer) -> dict:
        task = self.store.task(body.token)
        if task["mode"] == "pair":
            self.store.answer_pair(body.token, body.choice or "")
        else:
            self.store.answer_score(body.token, body.score if body.score is not None else float("nan"))
        return {"ok": True}


def router(rating: Rating) -> APIRouter:
    """The page and its API, relative to wherever it is mounted (the page uses relative URLs)."""
    r = APIRouter()

    @r.get("/", include_in_schema=False)
    def page():
        return FileResponse(WEB_DIR / "rate.html", media_type="text/html")

    @r.get("/rate.js", include_in_schema=False)
    def script():
        return FileResponse(WEB_DIR / "rate.js", media_type="text/javascript")

    @r.post("/api/next")
    def next_task(body: NextTask):
        return rating.next_task(body.rater, body.mode)

    @r.get("/api/image/{token}/{side}")
    def image(token: str, side: str):
        return Response(rating.image_bytes(token, side), media_type="image/png",
                        headers={"Cache-Control": "no-store"})

    @r.post("/api/answer")
    def answer(body: Answer):
        return rating.answer(body)

    return r


def create_rate_app(run_dir: str | Path, repeat_every: int = 10, seed: int | None = None) -> FastAPI:
    rating = Rating(run_dir, repeat_every=repeat_every, seed=seed)
    app = FastAPI(title="lightdiff rate", docs_url=None, redoc_url=None)
    app.state.rating = rating

    @app.exception_handler(LightdiffError)
    def _error(request: Request, exc: LightdiffError):
        return JSONResponse(status_code=exc.http_status, content={"error": exc.to_dict()})

    app.include_router(router(rating))
    return app
