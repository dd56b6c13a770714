"""Settings from BIZOS_* variables and the TOML config file."""

from __future__ import annotations

import pytest

from bizosctl.config import Settings, get_settings, reset_settings
from bizosctl.errors import ConfigError


@pytest.fixture
def clean(monkeypatch, tmp_path):
    monkeypatch.setenv("BIZOS_HOME", str(tmp_path))
    reset_settings()
    yield tmp_path
    monkeypatch.undo()
    reset_settings()


def test_env_overrides_file_overrides_default(clean, monkeypatch):
    (clean / "config.toml").write_text('home_region = "id"\npool_size = 7\nlog_level = "info"\n')
    s = Settings()
    assert (s.home_region, s.pool_size, s.log_level) == ("id", 7, "info")
    monkeypatch.setenv("BIZOS_POOL_SIZE", "3")
    assert Settings().pool_size == 3


def test_config_file_from_bizos_config(clean, monkeypatch, tmp_path_factory):
    other = tmp_path_factory.mktemp("cfg") / "bizos.toml"
    other.write_text('home_region = "eu-west"\n')
    monkeypatch.setenv("BIZOS_CONFIG", str(other))
    assert Settings().home_region == "eu-west"


def test_invalid_toml_is_a_config_error(clean):
    (clean / "config.toml").write_text("home_region = \n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        get_settings()


def test_invalid_value_is_a_config_error(clean, monkeypatch):
    monkeypatch.setenv("BIZOS_POOL_SIZE", "0")
    with pytest.raises(ConfigError, match="setting 'pool_size'"):
        get_settings()


def test_bad_home_region_name(clean, monkeypatch):
    monkeypatch.setenv("BIZOS_HOME_REGION", "Not A Region")
    with pytest.raises(ConfigError, match="setting 'home_region'"):
        get_settings()


def test_master_key_is_secret(clean, monkeypatch):
    monkeypatch.setenv("BIZOS_MASTER_KEY", "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ")
    s = Settings()
    assert "c2VjcmV0" not in repr(s) and "c2VjcmV0" not in str(s.model_dump())


def test_cli_reports_config_error_on_one_line(cli, monkeypatch, tmp_path):
    r = cli("tenant", "list", env={"BIZOS_POOL_SIZE": "abc"})
    assert r.exit_code == 2
    assert r.stderr.startswith("error: setting 'pool_size'")
    assert len(r.stderr.strip().splitlines()) == 1
