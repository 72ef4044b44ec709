"""Settings: keyword options, SOFTFACTORY_OBS_* variables, and clear errors for bad values."""

from __future__ import annotations

from typing import Any

import pytest

from softfactory_obs import ObservabilityMiddleware, Settings, instrument
from softfactory_obs.settings import unknown_variables
from softfactory_obs.store.metrics import Registry


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b""]


def test_defaults() -> None:
    s = Settings()
    assert s.request_id_header == "X-Request-Id"
    assert s.trust_request_id == "always"
    assert s.access_log is True
    assert s.log_backup_count == 30 and s.log_rotation == "midnight"
    assert "password" in s.redact_query_params


def test_from_env_parses_every_kind() -> None:
    env = {
        "SOFTFACTORY_OBS_SERVICE_NAME": "shop",
        "SOFTFACTORY_OBS_ACCESS_LOG": "off",
        "SOFTFACTORY_OBS_LOG_BACKUP_COUNT": "7",
        "SOFTFACTORY_OBS_TRUST_REQUEST_ID": "trusted_proxies",
        "SOFTFACTORY_OBS_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.0.0/16",
        "SOFTFACTORY_OBS_REDACT_QUERY_PARAMS": "Ticket,pin",
        "SOFTFACTORY_OBS_LOG_LEVEL": "debug",
        "UNRELATED": "x",
    }
    s = Settings.from_env(env)
    assert s.service_name == "shop"
    assert s.access_log is False
    assert s.log_backup_count == 7
    assert s.trusted_proxies == ("10.0.0.0/8", "192.168.0.0/16")
    assert s.redact_query_params == ("ticket", "pin")
    assert s.log_level == "DEBUG"


def test_keywords_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOFTFACTORY_OBS_SERVICE_NAME", "from-env")
    monkeypatch.setenv("SOFTFACTORY_OBS_PROPAGATE_EXCEPTIONS", "true")
    mw = ObservabilityMiddleware(app, service_name="from-kwarg", auto_configure_logging=False)
    assert mw.settings.service_name == "from-kwarg"
    assert mw.settings.propagate_exceptions is True
    assert instrument(app, auto_configure_logging=False).settings.service_name == "from-env"


def test_settings_object_plus_overrides() -> None:
    base = Settings(service_name="a")
    mw = ObservabilityMiddleware(app, base, access_log=False, auto_configure_logging=False)
    assert mw.settings.service_name == "a" and mw.settings.access_log is False


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"trust_request_id": "sometimes"}, r"trust_request_id: expected one of 'always', 'never', 'trusted_proxies'"),
        ({"trust_request_id": "trusted_proxies"}, r"needs trusted_proxies"),
        ({"trusted_proxies": ("10.0.0.0/33",)}, r"trusted_proxies: '10.0.0.0/33' is not an IP network"),
        ({"trusted_proxies": "10.0.0.0/8"}, r"trusted_proxies: expected a list of strings"),
        ({"request_id_header": "X Request\r\nId"}, r"request_id_header: expected an HTTP header name"),
        ({"access_log": "yes"}, r"access_log: expected bool"),
        ({"log_backup_count": -1}, r"log_backup_count: expected an integer >= 0"),
        ({"log_max_field_length": 10}, r"log_max_field_length: expected an integer from 64 to 65536"),
        ({"log_level": "LOUD"}, r"log_level: expected one of"),
        ({"log_file_mode": "rotating"}, r"log_file_mode: expected one of 'dated', 'watched'"),
        ({"log_rotation": "weekly"}, r"log_rotation: expected one of 'midnight'"),
        ({"user_id_getter": "REMOTE_USER"}, r"user_id_getter: expected a callable"),
        ({"service_name": ""}, r"service_name: expected a non-empty string"),
        ({"no_such_option": 1}, r"unknown option\(s\) no_such_option; valid options are: .*access_log"),
        ({"max_endpoint": 50}, r"unknown option\(s\) max_endpoint \(did you mean max_endpoints\?\)"),
        ({"routes": ("/u/{id",)}, r"routes: '/u/\{id' is not a route template \(braces only as placeholders"),
        ({"routes": ("/u/{id}}",)}, r"routes: '/u/\{id\}\}' is not a route template"),
        ({"routes": ("/files/{p:rest}",)}, r"unknown placeholder kind 'rest'"),
        ({"routes": ("u/{id}",)}, r"a template starts with '/'"),
        ({"telemetry_prefix": "_obs/"}, r"telemetry_prefix: expected empty, or a path such as '/_obs'"),
    ],
)
def test_invalid_options_name_the_field_and_the_accepted_values(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ObservabilityMiddleware(app, auto_configure_logging=False, **options)


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("SOFTFACTORY_OBS_ACCESS_LOG", "maybe", r"SOFTFACTORY_OBS_ACCESS_LOG: expected one of 1/true/yes/on"),
        ("SOFTFACTORY_OBS_LOG_BACKUP_COUNT", "many", r"SOFTFACTORY_OBS_LOG_BACKUP_COUNT: expected an integer"),
        (
            "SOFTFACTORY_OBS_TRUST_REQUEST_ID",
            "all",
            r"SOFTFACTORY_OBS_TRUST_REQUEST_ID='all': trust_request_id: expected",
        ),
        (
            "SOFTFACTORY_OBS_MAX_ENDPOINTS",
            "5",
            r"SOFTFACTORY_OBS_MAX_ENDPOINTS='5': max_endpoints: expected an integer",
        ),
        ("SOFTFACTORY_OBS_USER_ID_GETTER", "x", r"cannot be set from the environment"),
    ],
)
def test_invalid_environment_names_the_variable(var: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env({var: value})


def test_app_must_be_callable() -> None:
    with pytest.raises(TypeError, match="expected a WSGI callable"):
        ObservabilityMiddleware("not an app", auto_configure_logging=False)  # type: ignore[arg-type]


def test_empty_environment_values_mean_unset() -> None:
    """An empty Helm value (``SOFTFACTORY_OBS_ACCESS_LOG=``) turned the access log off."""
    defaults = Settings()
    assert defaults.access_log is True and defaults.metrics is True  # the control: both on by default
    empty = Settings.from_env(
        {"SOFTFACTORY_OBS_ACCESS_LOG": "", "SOFTFACTORY_OBS_METRICS": "  ", "SOFTFACTORY_OBS_MAX_ENDPOINTS": ""}
    )
    assert (empty.access_log, empty.metrics, empty.max_endpoints) == (True, True, defaults.max_endpoints)
    assert Settings.from_env({"SOFTFACTORY_OBS_ACCESS_LOG": "0"}).access_log is False


def test_a_mistyped_variable_is_named_with_the_one_meant(capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings.from_env({"SOFTFACTORY_OBS_MAX_ENDPOINT": "50", "SOFTFACTORY_OBS_REDIS_URL": "redis://x"})
    assert settings.max_endpoints == Settings().max_endpoints  # ignored, as before, but no longer silently
    err = capsys.readouterr().err
    assert (
        "SOFTFACTORY_OBS_MAX_ENDPOINT is not a setting and is ignored; did you mean SOFTFACTORY_OBS_MAX_ENDPOINTS?"
        in err
    )
    assert "REDIS_URL" not in err  # the app's own variable, like no setting: not a typo of one
    assert unknown_variables({"SOFTFACTORY_OBS_MAX_ENDPOINT": "", "SOFTFACTORY_OBS_REDIS_URL": "", "OTHER": ""}) == [
        ("SOFTFACTORY_OBS_MAX_ENDPOINT", "SOFTFACTORY_OBS_MAX_ENDPOINTS"),
        ("SOFTFACTORY_OBS_REDIS_URL", None),
    ]


def test_a_metrics_dir_that_cannot_be_a_directory_is_refused_at_start_up(tmp_path: Any) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"metrics_dir: '.*/file/store' cannot be a directory: .*/file is a file"):
        ObservabilityMiddleware(
            app, auto_configure_logging=False, registry=Registry(), metrics_dir=str(tmp_path / "file" / "store")
        )
    ObservabilityMiddleware(  # the control: a directory still to be made is fine
        app, auto_configure_logging=False, registry=Registry(), metrics_dir=str(tmp_path / "new" / "store")
    )
