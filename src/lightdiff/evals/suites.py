"""Prompt suites: versioned JSON files of prompts, each in English and Chinese, tagged by scenario.

A suite file looks like::

    {"name": "my-suite", "version": "1.0", "description": "...",
     "prompts": [{"id": "cup-01", "scenario": "product", "en": "...", "zh": "..."}]}

Built-in suites ship in ``lightdiff/evals/suites/``. Users add their own by passing a path to
``load_suite`` or by dropping ``<name>.json`` into ``~/.lightdiff/suites/`` (``LIGHTDIFF_HOME``
moves it); such a file is found by its name like a built-in one.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from lightdiff import settings
from lightdiff.errors import InvalidRequest

# The article's five quality scenarios; every prompt belongs to one, so results group the same way.
SCENARIOS: dict[str, str] = {
    "portrait": "realistic portrait",
    "cartoon": "cartoon character",
    "product": "product render",
    "landscape": "landscape illustration",
    "abstract": "abstract art",
}
LANGUAGES: tuple[str, ...] = ("en", "zh")

Language = Literal["en", "zh"]


class Prompt(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    scenario: str
    en: str
    zh: str

    def text(self, language: Language = "en") -> str:
        return getattr(self, language)


class Suite(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    description: str
    prompts: tuple[Prompt, ...]
    source: str = ""  # the file it was read from, for error messages and reports

    def scenarios(self) -> list[str]:
        """Scenarios present, in the order of SCENARIOS."""
        present = {p.scenario for p in self.prompts}
        return [s for s in SCENARIOS if s in present]

    def by_scenario(self, scenario: str) -> list[Prompt]:
        if scenario not in SCENARIOS:
            raise InvalidRequest("scenario", f"unknown scenario {scenario!r}.",
                                 f"Use one of: {', '.join(SCENARIOS)}.")
        return [p for p in self.prompts if p.scenario == scenario]

    def prompt(self, prompt_id: str) -> Prompt:
        for p in self.prompts:
            if p.id == prompt_id:
                return p
        close = difflib.get_close_matches(prompt_id, [p.id for p in self.prompts], n=3)
        raise InvalidRequest("prompt", f"suite {self.name!r} has no prompt {prompt_id!r}.",
                             f"Did you mean {', '.join(close)}?" if close
                             else f"Its prompt ids start with {', '.join(p.id for p in self.prompts[:5])}.")


def user_suites_dir() -> Path:
    return settings.home() / "suites"


def _builtin_files() -> dict[str, object]:
    folder = resources.files("lightdiff.evals").joinpath("suites")
    return {f.name[:-5]: f for f in folder.iterdir() if f.name.endswith(".json")}


def _user_files() -> dict[str, Path]:
    folder = user_suites_dir()
    return {p.stem: p for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def _field_error(origin: str, field: str, message: str, hint: str) -> InvalidRequest:
    return InvalidRequest(field, f"suite {origin}: {message}", hint)


def suite_from_dict(data: object, origin: str = "<dict>") -> Suite:
    """Validate a parsed suite file. Every error names the file, the prompt and the fix."""
    if not isinstance(data, dict):
        raise _field_error(origin, "suite", f"the top level is a {type(data).__name__}, not an object.",
                           'Write {"name", "version", "description", "prompts": [...]}.')
    for key in ("name", "version", "prompts"):
        if key not in data:
            raise _field_error(origin, key, f"lacks the key {key!r}.",
                               'A suite needs "name", "version", "description" and "prompts".')
    prompts = data["prompts"]
    if not isinstance(prompts, list) or not prompts:
        raise _field_error(origin, "prompts", "'prompts' must be a non-empty list.",
                           'Add entries like {"id": "cup-01", "scenario": "product", "en": "...", "zh": "..."}.')
    for i, entry in enumerate(prompts):
        if not isinstance(entry, dict):
            raise _field_error(origin, "prompts", f"prompt #{i} is a {type(entry).__name__}, not an object.",
                               'Each prompt is {"id", "scenario", "en", "zh"}.')
        pid = entry.get("id")
        if not isinstance(pid, str) or not pid.strip():
            raise _field_error(origin, "id", f"prompt #{i} has no id.", "Give every prompt a unique string id.")
        scenario = entry.get("scenario")
        if scenario not in SCENARIOS:
            close = difflib.get_close_matches(str(scenario), SCENARIOS, n=1)
            raise _field_error(origin, "scenario", f"prompt {pid!r} has unknown scenario {scenario!r}.",
                               (f"Did you mean {close[0]!r}? " if close else "")
                               + f"Use one of: {', '.join(SCENARIOS)}.")
        for lang in LANGUAGES:
            text = entry.get(lang)
            if not isinstance(text, str) or not text.strip():
                raise _field_error(origin, lang, f"prompt {pid!r} has no {lang!r} text.",
                                   f"Every prompt needs both languages: {', '.join(LANGUAGES)}.")
    duplicates = sorted(k for k, n in Counter(p["id"] for p in prompts).items() if n > 1)
    if duplicates:
        raise _field_error(origin, "id", f"prompt ids are repeated: {', '.join(map(repr, duplicates))}.",
                           "Make every id unique within the suite.")
    return Suite(
        name=str(data["name"]),
        version=str(data["version"]),
        description=str(data.get("description", "")),
        prompts=tuple(Prompt(**{k: p[k] for k in ("id", "scenario", *LANGUAGES)}) for p in prompts),
        source=origin,
    )


def _parse(text: str, origin: str) -> Suite:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _field_error(origin, "suite", f"is not valid JSON ({exc.msg} at line {exc.lineno}, "
                           f"column {exc.colno}).", "Fix the JSON syntax at that position.") from exc
    return suite_from_dict(data, origin)


def _looks_like_path(name_or_path: str | Path) -> bool:
    text = str(name_or_path)
    return isinstance(name_or_path, Path) or text.endswith(".json") or "/" in text or "\\" in text


def load_suite(name_or_path: str | Path) -> Suite:
    """Load a suite by name (built-in or ~/.lightdiff/suites/<name>.json) or from a JSON file path."""
    if _looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise InvalidRequest("suite", f"suite file {str(path)!r} does not exist.",
                                 "Check the path, or give a suite name from `list_suites()`.")
        return _parse(path.read_text(encoding="utf-8"), str(path))

    name = str(name_or_path)
    builtin, user = _builtin_files(), _user_files()
    if name in builtin and name in user:
        # A user file silently replacing a built-in would make two reports disagree on "article5".
        raise InvalidRequest("suite", f"suite name {name!r} is both built-in and in {user[name]}.",
                             f"Rename {user[name].name} so its name differs from the built-in suite.")
    if name in builtin:
        suite = _parse(builtin[name].read_text(encoding="utf-8"), f"built-in {name}.json")
    elif name in user:
        suite = _parse(user[name].read_text(encoding="utf-8"), str(user[name]))
    else:
        known = sorted({*builtin, *user})
        close = difflib.get_close_matches(name, known, n=1)
        raise InvalidRequest("suite", f"no suite named {name!r}.",
                             (f"Did you mean {close[0]!r}? " if close else "")
                             + f"Known suites: {', '.join(known)}; or pass a path to a .json file "
                             f"or add {name}.json to {user_suites_dir()}.")
    if suite.name != name:
        raise InvalidRequest("name", f"suite file {suite.source} says its name is {suite.name!r}, "
                             f"but it is found as {name!r}.",
                             f'Set "name": "{name}" in the file, or rename the file to {suite.name}.json.')
    return suite


def list_suites() -> list[dict]:
    """Every suite findable by name: built-ins first, then the user's, with size and origin."""
    out = []
    for origin, files in (("built-in", _builtin_files()), ("user", _user_files())):
        for name in sorted(files):
            suite = load_suite(name)
            out.append({"name": name, "version": suite.version, "origin": origin,
                        "prompts": len(suite.prompts), "scenarios": suite.scenarios(),
                        "description": suite.description, "source": suite.source})
    return out
