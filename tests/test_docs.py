"""The README stays true: every setting is documented, and .ci/run runs the README's test command."""

from pathlib import Path

from lightdiff.settings import SETTINGS

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for s in SETTINGS.values():
        assert s.env in readme, f"setting {s.name} ({s.env}) is not in the README"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = [ln for ln in ci.splitlines() if "pytest" in ln][0].strip()
    assert test_cmd in readme
