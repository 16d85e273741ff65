"""Human ratings in SQLite (``evalrun/ratings.sqlite``): tasks handed to raters, and their answers.

A *task* is what one rater is shown: a pair of images (same prompt, language and seed; two models,
sides randomised) or one image to score 1-10. It is known to the browser only by a random token;
the store keeps which model sits on which side, so answers are saved de-randomised (model names)
along with the side each was shown on, the rater, the time shown and the time answered.
Read back with ``comparisons()`` / ``scores()`` as records for ``lightdiff.evals.ratings``.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from lightdiff.errors import InvalidRequest

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    token TEXT PRIMARY KEY,
    rater TEXT NOT NULL,
    mode TEXT NOT NULL CHECK (mode IN ('pair', 'score')),
    prompt TEXT NOT NULL, lang TEXT NOT NULL, seed INTEGER NOT NULL, scenario TEXT,
    model_left TEXT NOT NULL,            -- the scored model in 'score' mode
    model_right TEXT,
    path_left TEXT NOT NULL, path_right TEXT,
    is_repeat INTEGER NOT NULL DEFAULT 0,
    shown_at REAL NOT NULL,
    answered_at REAL
);
CREATE TABLE IF NOT EXISTS comparisons (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token TEXT NOT NULL UNIQUE REFERENCES tasks(token),
    rater TEXT NOT NULL, prompt TEXT NOT NULL, lang TEXT NOT NULL, seed INTEGER NOT NULL, scenario TEXT,
    model_left TEXT NOT NULL, model_right TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'tie')),
    preferred TEXT,                      -- the chosen model's name; NULL for a tie
    is_repeat INTEGER NOT NULL,
    shown_at REAL NOT NULL, answered_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS scores (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token TEXT NOT NULL UNIQUE REFERENCES tasks(token),
    rater TEXT NOT NULL, prompt TEXT NOT NULL, lang TEXT NOT NULL, seed INTEGER NOT NULL, scenario TEXT,
    model TEXT NOT NULL,
    score REAL NOT NULL CHECK (score BETWEEN 1 AND 10),
    shown_at REAL NOT NULL, answered_at REAL NOT NULL
);
"""


def _check_rater(rater: str) -> str:
    rater = (rater or "").strip()
    if not rater or len(rater) > 64:
        raise InvalidRequest("rater", f"rater id {rater!r} must be 1-64 characters.",
                             "Type a short name or code for yourself (the same one every session).")
    return rater


class RatingStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # One connection per call: FastAPI runs sync routes on a thread pool.
        db = sqlite3.connect(self.path, timeout=10)
        db.row_factory = sqlite3.Row
        return db

    # --- tasks ------------------------------------------------------------------------------

    def new_task(self, rater: str, mode: str, unit: dict, left: tuple[str, str],
                 right: tuple[str, str] | None = None, is_repeat: bool = False) -> str:
        """Record what a rater is about to see; return its opaque token. left/right: (model, path)."""
        token = secrets.token_urlsafe(18)
        with closing(self._connect()) as db, db:
            db.execute("INSERT INTO tasks (token, rater, mode, prompt, lang, seed, scenario, model_left, model_right,"
                       " path_left, path_right, is_repeat, shown_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                       (token, _check_rater(rater), mode, unit["prompt"], unit["lang"], int(unit["seed"]),
                        unit.get("scenario"), left[0], right[0] if right else None, left[1],
                        right[1] if right else None, int(is_repeat), time.time()))
        return token

    def task(self, token: str) -> dict:
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM tasks WHERE token = ?", (token,)).fetchone()
        if row is None:
            raise InvalidRequest("token", f"no rating task {token[:12]!r}.", "Reload the page to get a new pair.")
        return dict(row)

    def pending(self, rater: str, mode: str) -> dict | None:
        """The rater's task shown but not answered (a reloaded page gets it again)."""
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM tasks WHERE rater = ? AND mode = ? AND answered_at IS NULL "
                             "ORDER BY shown_at DESC LIMIT 1", (rater, mode)).fetchone()
        return dict(row) if row else None

    # --- answers ----------------------------------------------------------------------------

    def _claim(self, db: sqlite3.Connection, token: str, mode: str) -> dict:
        row = db.execute("SELECT * FROM tasks WHERE token = ?", (token,)).fetchone()
        if row is None:
            raise InvalidRequest("token", f"no rating task {token[:12]!r}.", "Reload the page to get a new pair.")
        if row["mode"] != mode:
            raise InvalidRequest("token", f"task {token[:12]!r} is a {row['mode']} task, not {mode}.",
                                 "Answer a pair with a choice and a single image with a score.")
        if row["answered_at"] is not None:
            raise InvalidRequest("token", f"task {token[:12]!r} was already answered.",
                                 "Each task is answered once; ask for the next one.")
        now = time.time()
        db.execute("UPDATE tasks SET answered_at = ? WHERE token = ?", (now, token))
        return {**dict(row), "answered_at": now}

    def answer_pair(self, token: str, choice: str) -> dict:
        if choice not in ("left", "right", "tie"):
            raise InvalidRequest("choice", f"choice {choice!r} is not left, right or tie.",
                                 "Send choice 'left', 'right' or 'tie'.")
        with closing(self._connect()) as db, db:
            t = self._claim(db, token, "pair")
            preferred = {"left": t["model_left"], "right": t["model_right"], "tie": None}[choice]
            db.execute("INSERT INTO comparisons (token, rater, prompt, lang, seed, scenario, model_left, model_right,"
                       " choice, preferred, is_repeat, shown_at, answered_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                       (token, t["rater"], t["prompt"], t["lang"], t["seed"], t["scenario"], t["model_left"],
                        t["model_right"], choice, preferred, t["is_repeat"], t["shown_at"], t["answered_at"]))
        return {"preferred": preferred}

    def answer_score(self, token: str, score: float) -> None:
        try:
            value = float(score)
        except (TypeError, ValueError):
            value = float("nan")
        if not 1 <= value <= 10:
            raise InvalidRequest("score", f"score {score!r} is not on the 1-10 scale.", "Send a score from 1 to 10.")
        with closing(self._connect()) as db, db:
            t = self._claim(db, token, "score")
            db.execute("INSERT INTO scores (token, rater, prompt, lang, seed, scenario, model, score, shown_at,"
                       " answered_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                       (token, t["rater"], t["prompt"], t["lang"], t["seed"], t["scenario"], t["model_left"],
                        value, t["shown_at"], t["answered_at"]))

    # --- reading ----------------------------------------------------------------------------

    def rows(self, table: str, rater: str | None = None) -> list[dict]:
        if table not in ("comparisons", "scores", "tasks"):
            raise ValueError(table)
        with closing(self._connect()) as db:
            sql = f"SELECT * FROM {table}" + (" WHERE rater = ?" if rater else "") + " ORDER BY rowid"
            return [dict(r) for r in db.execute(sql, (rater,) if rater else ())]

    def comparisons(self) -> list[dict[str, Any]]:
        """As ``ratings.Comparison`` records: model_a = the left image's model. Prompt ids carry the
        language when it is not English, so an English and a Chinese pair are different units."""
        out = []
        for r in self.rows("comparisons"):
            out.append({"rater": r["rater"], "prompt": _unit_prompt(r), "seed": r["seed"],
                        "scenario": r["scenario"], "model_a": r["model_left"], "model_b": r["model_right"],
                        "choice": {"left": "a", "right": "b", "tie": "tie"}[r["choice"]]})
        return out

    def scores(self) -> list[dict[str, Any]]:
        return [{"rater": r["rater"], "prompt": _unit_prompt(r), "seed": r["seed"], "scenario": r["scenario"],
                 "model": r["model"], "score": r["score"]} for r in self.rows("scores")]

    def export(self, path: str | Path) -> Path:
        """Both tables as JSONL (one object a line, with a 'kind'), for sharing or archiving."""
        path = Path(path)
        with open(path, "w", encoding="utf-8") as f:
            for kind in ("comparisons", "scores"):
                for r in self.rows(kind):
                    f.write(json.dumps({"kind": kind, **r}, ensure_ascii=False) + "\n")
        return path


def _unit_prompt(row: dict) -> str:
    return row["prompt"] if row["lang"] == "en" else f"{row['prompt']}-{row['lang']}"
