"""Prompt suites: the built-in files, user suites found by name, and validation errors users can act on."""

from __future__ import annotations

import json

import pytest

from lightdiff.errors import InvalidRequest
from lightdiff.evals.suites import LANGUAGES, SCENARIOS, list_suites, load_suite, suite_from_dict


def _prompt(pid="cup-01", scenario="product", en="a white cup", zh="一只白色杯子"):
    return {"id": pid, "scenario": scenario, "en": en, "zh": zh}


def _suite(prompts, name="mine"):
    return {"name": name, "version": "1", "description": "test suite", "prompts": prompts}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTDIFF_HOME", str(tmp_path))
    return tmp_path


def test_article5_has_the_articles_five_scenarios_in_both_languages():
    suite = load_suite("article5")
    assert [p.scenario for p in suite.prompts] == list(SCENARIOS)
    keywords = {  # the article's keywords, checked in each language
        "portrait": ("long hair", "长发"),
        "cartoon": ("cyberpunk", "赛博朋克"),
        "product": ("ceramic coffee cup", "陶瓷咖啡杯"),
        "landscape": ("snowy mountain lake", "雪山湖泊"),
        "abstract": ("purple and gold", "紫色与金色"),
    }
    for scenario, (en, zh) in keywords.items():
        (prompt,) = suite.by_scenario(scenario)
        assert en in prompt.text("en")
        assert zh in prompt.text("zh")


def test_scenarios50_has_ten_distinct_prompts_per_scenario():
    suite = load_suite("scenarios50")
    assert suite.scenarios() == list(SCENARIOS)
    for scenario in SCENARIOS:
        prompts = suite.by_scenario(scenario)
        assert len(prompts) >= 10, scenario
        for lang in LANGUAGES:
            texts = [p.text(lang) for p in prompts]
            assert len(set(texts)) == len(texts), f"repeated {lang} prompt in {scenario}"
    assert len({p.id for p in suite.prompts}) == len(suite.prompts)


def test_list_suites_shows_builtins_and_user_suites(home):
    (home / "suites").mkdir()
    (home / "suites" / "mine.json").write_text(json.dumps(_suite([_prompt()])), encoding="utf-8")
    listed = {s["name"]: s for s in list_suites()}
    assert listed["article5"]["origin"] == "built-in" and listed["article5"]["prompts"] == 5
    assert listed["scenarios50"]["prompts"] >= 50
    assert listed["mine"]["origin"] == "user" and listed["mine"]["scenarios"] == ["product"]


def test_user_suite_loads_by_name_and_by_path(home, tmp_path):
    (home / "suites").mkdir()
    path = home / "suites" / "mine.json"
    path.write_text(json.dumps(_suite([_prompt(), _prompt("p-1", "portrait", "a face", "一张脸")])), encoding="utf-8")
    by_name = load_suite("mine")
    by_path = load_suite(path)
    assert by_name.prompts == by_path.prompts
    assert by_name.prompt("p-1").zh == "一张脸"
    assert str(path) == by_name.source


def test_user_suite_cannot_shadow_a_builtin(home):
    (home / "suites").mkdir()
    (home / "suites" / "article5.json").write_text(json.dumps(_suite([_prompt()], "article5")), encoding="utf-8")
    with pytest.raises(InvalidRequest, match="both built-in") as err:
        load_suite("article5")
    assert "Rename" in err.value.hint


def test_name_in_file_must_match_file_name(home):
    (home / "suites").mkdir()
    (home / "suites" / "mine.json").write_text(json.dumps(_suite([_prompt()], "other")), encoding="utf-8")
    with pytest.raises(InvalidRequest, match="'other'"):
        load_suite("mine")


def test_unknown_suite_name_suggests_close_one(home):
    with pytest.raises(InvalidRequest) as err:
        load_suite("article6")
    assert "article5" in err.value.hint and "suites" in err.value.hint


def test_missing_file_path_is_reported(tmp_path):
    with pytest.raises(InvalidRequest, match="does not exist"):
        load_suite(tmp_path / "nope.json")


@pytest.mark.parametrize(
    ("prompts", "field", "needle"),
    [
        ([_prompt(), _prompt()], "id", "repeated: 'cup-01'"),
        ([_prompt(scenario="products")], "scenario", "unknown scenario 'products'"),
        ([_prompt(zh="")], "zh", "no 'zh' text"),
        ([{k: v for k, v in _prompt().items() if k != "en"}], "en", "no 'en' text"),
        ([_prompt(pid="")], "id", "has no id"),
        ([], "prompts", "non-empty list"),
    ],
)
def test_validation_names_the_problem(prompts, field, needle):
    with pytest.raises(InvalidRequest) as err:
        suite_from_dict(_suite(prompts), "mine.json")
    assert err.value.field == field
    assert needle in err.value.message and "mine.json" in err.value.message
    assert err.value.hint


def test_unknown_scenario_hint_suggests_the_right_name():
    with pytest.raises(InvalidRequest) as err:
        suite_from_dict(_suite([_prompt(scenario="potrait")]))
    assert "'portrait'" in err.value.hint


def test_invalid_json_says_where(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"name": "broken", "prompts": [', encoding="utf-8")
    with pytest.raises(InvalidRequest, match="not valid JSON.*line 1"):
        load_suite(path)


def test_unknown_prompt_id_suggests_close_ids():
    with pytest.raises(InvalidRequest) as err:
        load_suite("scenarios50").prompt("portrait-1")
    assert "portrait-01" in err.value.hint
