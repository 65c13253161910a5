"""The README documents every collector setting and keeps the two set-up commands."""

from pathlib import Path

from collector_daemon.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table() -> None:
    missing = [f"TICKVAULT_{name.upper()}" for name in Settings.model_fields
               if f"`TICKVAULT_{name.upper()}`" not in README]
    assert not missing


def test_every_venue_setting_is_in_the_readme() -> None:
    from collector_daemon.settings import _venue_variables
    from collector_daemon.venues import venues
    missing = [_venue_variables(v, name) for v in venues().values()
               for name in v.settings_class.model_fields
               if f"`{_venue_variables(v, name).split(' ')[0]}`" not in README]
    assert not missing


def test_the_two_commands() -> None:
    assert "scripts/run " in README and "scripts/test " in README
    assert Path(__file__).resolve().parents[2].joinpath("scripts", "run").exists()
