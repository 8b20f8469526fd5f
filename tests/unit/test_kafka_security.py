"""Kafka security settings -> client options, without a broker (the e2e test uses a real one).

Also checks, by parsing the sources, that every aiokafka client and the Faust app get their
connection from ``app.kafka`` (so no client can silently speak plaintext), and that secrets
stay out of errors, reprs and dumps.
"""

from __future__ import annotations

import ast
import logging
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import ValidationError

from app.kafka import (
    CONNECTION_FIELDS,
    connection_errors_explained,
    faust_broker_options,
    kafka_client_options,
    kafka_unavailable,
)
from app.settings import (
    PROJECT_ROOT,
    SASL_MECHANISMS,
    SECRET_FIELDS,
    SECURITY_PROTOCOLS,
    Settings,
    SettingsError,
    load_settings,
)
from devtools import KafkaBroker, SeaweedServer, port_clash
from devtools.kafka import DEV_SASL_PASSWORD, SECURE_LISTENERS
from devtools.settings import DevSettings
from devtools.tls import DevCertificates
from devtools.workers import isolated_env, settings_for
from tests.unit.test_no_unsafe_loading import project_sources

PASSWORD = "pw-unit-7c1e55"
LOGIN = {"kafka_sasl_username": "alice", "kafka_sasl_password": PASSWORD}


def secure(protocol: str, **more: object) -> Settings:
    sasl = LOGIN if protocol.startswith("SASL_") else {}
    return Settings(
        kafka_security_protocol=protocol, kafka_bootstrap="b1:9094, b2:9094", **sasl, **more
    )


@pytest.mark.parametrize("protocol", SECURITY_PROTOCOLS)
def test_client_options_follow_the_protocol(protocol: str):
    options = kafka_client_options(secure(protocol))
    assert options["bootstrap_servers"] == ["b1:9094", "b2:9094"]
    assert options["security_protocol"] == protocol
    context = options.get("ssl_context")
    assert (context is not None) == protocol.endswith("SSL")
    if context is not None:  # brokers are verified, host names checked
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    if protocol.startswith("SASL_"):
        assert options["sasl_mechanism"] == "SCRAM-SHA-512"
        assert (options["sasl_plain_username"], options["sasl_plain_password"]) == (
            "alice",
            PASSWORD,
        )
        assert PASSWORD not in repr(options) and PASSWORD not in str(options)
        assert options["sasl_plain_password"].encode() == PASSWORD.encode()  # as aiokafka uses it
    else:
        assert not any(key.startswith("sasl_") for key in options)


@pytest.mark.parametrize("protocol", SECURITY_PROTOCOLS)
@pytest.mark.parametrize("mechanism", SASL_MECHANISMS)
def test_faust_connects_exactly_as_the_aiokafka_clients(protocol: str, mechanism: str):
    settings = secure(protocol, kafka_sasl_mechanism=mechanism)
    faust_options = faust_broker_options(settings)
    assert faust_options["broker"] == ["kafka://b1:9094", "kafka://b2:9094"]
    faust_auth = dict(credentials_to_aiokafka_auth(faust_options.get("broker_credentials")))
    client = kafka_client_options(settings)
    for key in (
        "security_protocol",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
    ):
        assert faust_auth.get(key) == client.get(key), key
    assert (faust_auth.get("ssl_context") is None) == (client.get("ssl_context") is None)
    assert PASSWORD not in repr(faust_options)


def test_protocol_and_mechanism_accept_any_case_and_refuse_others():
    settings = Settings(
        kafka_security_protocol="sasl_ssl", kafka_sasl_mechanism="scram-sha-256", **LOGIN
    )
    assert (settings.kafka_security_protocol, settings.kafka_sasl_mechanism) == (
        "SASL_SSL",
        "SCRAM-SHA-256",
    )
    with pytest.raises(SettingsError, match="STREAMREC_KAFKA_SECURITY_PROTOCOL='TLS'"):
        load_settings(kafka_security_protocol="TLS")
    with pytest.raises(SettingsError, match="STREAMREC_KAFKA_SASL_MECHANISM='GSSAPI'"):
        load_settings(kafka_sasl_mechanism="GSSAPI")


def test_sasl_without_credentials_is_one_line_naming_the_variables():
    with pytest.raises(SettingsError) as caught:
        load_settings(kafka_security_protocol="SASL_SSL", kafka_sasl_password=PASSWORD)
    message = caught.value.message
    assert "STREAMREC_KAFKA_SASL_USERNAME" in message and "\n" not in message
    assert PASSWORD not in message  # a cross-field rule's input is every setting


def test_a_raw_validation_error_shows_no_input():  # e.g. Settings() in a traceback
    with pytest.raises(ValidationError) as caught:
        Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_password=PASSWORD)
    assert PASSWORD not in str(caught.value) and PASSWORD not in repr(caught.value)


def test_invalid_secret_values_are_never_echoed():
    with pytest.raises(SettingsError) as caught:
        load_settings(s3_secret_key=["s3-secret-in-a-list"], kafka_sasl_password=12345)
    message = caught.value.message
    assert "STREAMREC_S3_SECRET_KEY='***'" in message
    assert "s3-secret-in-a-list" not in message and "12345" not in message


def test_secret_settings_are_hidden_in_reprs_and_dumps():
    web, model = "web-token-0c1d2e3f4a5b", "model-key-9a8b7c6d5e4f"
    settings = secure(
        "SASL_SSL",
        kafka_ssl_key_password="key-pw-3f9",
        s3_secret_key="s3-pw-88a",
        web_token=web,
        model_key=model,
    )
    assert {
        "kafka_sasl_password", "kafka_ssl_key_password", "s3_secret_key", "web_token", "model_key"
    } == SECRET_FIELDS  # fmt: skip
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        for secret in (PASSWORD, "key-pw-3f9", "s3-pw-88a", web, model):
            assert secret not in shown


def test_empty_credentials_mean_unset():  # e.g. an empty key in a ConfigMap
    settings = Settings(kafka_ssl_ca_file="", kafka_sasl_username="", kafka_sasl_password="")
    assert settings.kafka_ssl_ca_file is None and settings.kafka_sasl_password is None


def test_mutual_tls_files_load_and_a_wrong_key_password_is_one_line(tmp_path: Path):
    tls = DevCertificates(tmp_path / "tls")
    assert tls.ensure() is True and tls.ensure() is False  # made once
    files = {
        "kafka_ssl_ca_file": tls.ca_file,
        "kafka_ssl_cert_file": tls.client_cert,
        "kafka_ssl_key_file": tls.client_key,
    }
    good = secure("SSL", **files, kafka_ssl_key_password=tls.client_key_password())
    assert isinstance(kafka_client_options(good)["ssl_context"], ssl.SSLContext)
    with pytest.raises(SettingsError) as caught:
        kafka_client_options(secure("SSL", **files, kafka_ssl_key_password="not-the-key-pw"))
    assert "STREAMREC_KAFKA_SSL_KEY_FILE" in caught.value.message
    assert "not-the-key-pw" not in caught.value.message
    with pytest.raises(SettingsError, match="No such file"):
        kafka_client_options(secure("SSL", kafka_ssl_ca_file=tmp_path / "missing.pem"))
    assert all(oct(p.stat().st_mode)[-3:] == "600" for p in (tls.client_key, tls.keystore))


def test_child_processes_get_the_same_connection():
    base = secure("SASL_SSL", kafka_ssl_ca_file="/etc/ca.pem", kafka_sasl_mechanism="PLAIN")
    child = settings_for(isolated_env("x", base, model_store="file://m", datadir=Path("d")))
    for name in CONNECTION_FIELDS:
        assert getattr(child, name) == getattr(base, name), name


def test_a_refused_login_is_named_without_the_password():
    settings = secure("SASL_SSL")
    with connection_errors_explained() as failures:
        logging.getLogger("aiokafka.client").error(
            'Unable connect to "%s:%s": %s',
            "b1",
            9094,
            RuntimeError("SaslAuthenticationFailed: bad"),
        )
    line = kafka_unavailable(settings, OSError("Unable to bootstrap"), failures)
    assert line.startswith("Kafka at b1:9094, b2:9094 refused the login of 'alice' (SCRAM-SHA-512)")
    assert "STREAMREC_KAFKA_SASL_PASSWORD" in line and PASSWORD not in line
    assert logging.getLogger("aiokafka").propagate  # restored on exit


def test_secure_dev_port_is_derived_once_and_clashes_are_refused(tmp_path: Path):
    # Its own dev dir: a (plaintext) dev broker running in the default one must not count.
    settings = DevSettings(
        dev_dir=tmp_path, kafka_port=29092, kafka_controller_port=29093, dev_kafka_secure=True
    )
    broker = KafkaBroker(settings)
    assert broker.ports() == [29092, 29093, 29094, 29095, 29096]
    assert SECURE_LISTENERS == {"SASL_SSL": 2, "SSL": 3, "SASL_PLAINTEXT": 4}
    assert port_clash([broker, SeaweedServer(settings)]) is None
    clashing = KafkaBroker(settings.model_copy(update={"kafka_controller_port": 29094}))
    assert "port 29094 is wanted by kafka and kafka" in (port_clash([clashing]) or "")


def test_client_settings_point_at_the_secure_listener(tmp_path: Path):
    broker = KafkaBroker(DevSettings(dev_dir=tmp_path, kafka_port=29092, dev_kafka_secure=True))
    client = broker.client_settings()
    assert client.kafka_bootstrap == "127.0.0.1:29094"
    assert client.kafka_security_protocol == "SASL_SSL"
    assert client.kafka_ssl_ca_file == broker.tls.ca_file
    secure = broker.connection()["secure"]
    assert isinstance(secure, dict) and not any(k.endswith("password") for k in secure)
    assert DEV_SASL_PASSWORD not in str(secure)
    assert set(secure["listeners"]) == {"SASL_SSL", "SSL", "SASL_PLAINTEXT"}


# --- every Kafka client goes through app/kafka.py ---------------------------------------

KAFKA_CLIENTS = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient", "AIOKafkaClient"}


def _client_calls(path: Path) -> list[tuple[int, str, ast.Call]]:
    tree = ast.parse(path.read_text())
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            owner = getattr(getattr(func, "value", None), "id", "")
            if name in KAFKA_CLIENTS or (owner, name) == ("faust", "App"):
                calls.append((node.lineno, name, node))
    return calls


def test_every_kafka_client_takes_its_connection_from_app_kafka():
    problems, seen = [], 0
    for path in project_sources():
        for line, name, call in _client_calls(path):
            seen += 1
            where = f"{path.relative_to(PROJECT_ROOT)}:{line}: {name}"
            explicit = {kw.arg for kw in call.keywords if kw.arg}
            if not any(kw.arg is None for kw in call.keywords):
                problems.append(f"{where} gets no **options (app.kafka.kafka_client_options)")
            direct = explicit & {
                "bootstrap_servers",
                "security_protocol",
                "broker",
                "sasl_mechanism",
            }
            if direct:
                problems.append(f"{where} sets {sorted(direct)} itself")
    assert seen >= 10, "too few Kafka clients found; is the scan right?"
    assert not problems, "\n".join(problems)


# --- the CLI, misconfigured (no service needed: it stops before connecting) --------------

CLI_SECRET = "pw-cli-5d0b2e"


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (
            ["recommend", "u1"],
            {"STREAMREC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            "needs STREAMREC_KAFKA_SASL_USERNAME and STREAMREC_KAFKA_SASL_PASSWORD",
        ),
        (
            ["worker", "--role", "scorer"],
            {"STREAMREC_KAFKA_SECURITY_PROTOCOL": "TLS"},
            "STREAMREC_KAFKA_SECURITY_PROTOCOL='TLS'",
        ),
        (
            ["publish", "{csv}"],
            {
                "STREAMREC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "STREAMREC_KAFKA_SASL_USERNAME": "alice",
                "STREAMREC_KAFKA_SASL_PASSWORD": CLI_SECRET,
                "STREAMREC_KAFKA_SSL_CA_FILE": "/nonexistent/ca.pem",
            },
            "STREAMREC_KAFKA_SSL_CA_FILE=/nonexistent/ca.pem): No such file",
        ),
    ],
)
def test_cli_misconfigured_security_is_one_line(
    tmp_path: Path, argv: list[str], env: dict[str, str], expected: str
):
    csv = tmp_path / "r.csv"
    csv.write_text("user,item,rating,timestamp\n1,10,5,100\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_KAFKA_")}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *(a.format(csv=csv) for a in argv)],
        env={**clean, "STREAMREC_KAFKA_BOOTSTRAP": "127.0.0.1:1", **env},
        cwd=PROJECT_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert expected in done.stderr and CLI_SECRET not in done.stdout + done.stderr
