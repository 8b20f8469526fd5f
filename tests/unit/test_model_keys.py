"""app.settings.model_keys: the model key from the environment or a secret file, the
verify-only keys of a rotation, and the dev key when none is set (said once in the log)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from app import runtime
from app.settings import SettingsError, load_settings, model_keys
from models.signing import DEV_KEY, Keyring, key_id

KEY = "a-model-key-for-these-tests"


def test_no_key_is_the_dev_key_said_once_by_a_worker(caplog, monkeypatch) -> None:
    settings = load_settings()
    assert model_keys(settings) == Keyring(DEV_KEY)
    monkeypatch.setattr(runtime, "_dev_key_said", False)
    with caplog.at_level(logging.WARNING, logger="app.runtime"):
        for _ in range(3):
            assert runtime.worker_model_keys(settings).signing == DEV_KEY
    said = [r for r in caplog.records if "dev key" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="app.runtime"):
        runtime.worker_model_keys(load_settings(model_key=KEY))
    assert not caplog.records  # a real key: nothing to say


def test_the_key_from_the_var_or_a_file(tmp_path: Path) -> None:
    assert model_keys(load_settings(model_key=KEY)).signing == KEY.encode()
    secret = tmp_path / "model-key"
    secret.write_text(KEY + "\n")  # a mounted secret ends with a newline, often
    keys = model_keys(load_settings(model_key_file=secret))
    assert keys.signing == KEY.encode() and keys.key_ids == (key_id(KEY.encode()),)
    assert KEY not in repr(keys) and KEY not in repr(load_settings(model_key=KEY))


def test_rotation_keys_verify_but_never_sign(tmp_path: Path) -> None:
    verify = tmp_path / "verify-keys"
    verify.write_text(
        "# the previous key, until every trainer signs with the new one\nthe-previous-model-key\n\n"
    )
    keys = model_keys(load_settings(model_key=KEY, model_verify_keys_file=verify))
    assert keys.signing == KEY.encode()
    assert keys.verifying == (b"the-previous-model-key",)
    assert keys.key(key_id(b"the-previous-model-key")) == b"the-previous-model-key"


def test_allow_unsigned_snapshots_reaches_the_keyring() -> None:
    assert not model_keys(load_settings()).allow_unsigned_snapshots
    assert model_keys(load_settings(allow_unsigned_snapshots=True)).allow_unsigned_snapshots


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(model_key="short"), "at least 16"),
        (dict(model_key=KEY, model_key_file="/k"), "not both"),
    ],
)
def test_bad_settings_are_one_clear_error(overrides, message) -> None:
    with pytest.raises(SettingsError, match=message) as err:
        load_settings(**overrides)
    assert KEY not in str(err.value) and "short" not in str(err.value)


def test_unreadable_or_short_key_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot be read"):
        model_keys(load_settings(model_key_file=tmp_path / "missing"))
    short = tmp_path / "short"
    short.write_text("tiny\n")
    with pytest.raises(SettingsError, match="at least 16"):
        model_keys(load_settings(model_key_file=short))
    with pytest.raises(SettingsError, match="16"):
        model_keys(load_settings(model_verify_keys_file=short))
