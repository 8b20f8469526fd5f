"""The dev broker's secure listeners: each protocol and SASL mechanism, mutual TLS, refusals,
and what ``dev status`` says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from app.kafka import kafka_client_options
from app.settings import PROJECT_ROOT, SASL_MECHANISMS
from devtools import KafkaBroker, metadata_ready
from devtools.kafka import SECURE_LISTENERS

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
@pytest.mark.parametrize("mechanism", SASL_MECHANISMS)
def test_each_mechanism_logs_in_and_a_wrong_password_does_not(
    secure_broker: KafkaBroker, protocol: str, mechanism: str
):
    assert secure_broker.secure_probe(protocol=protocol, mechanism=mechanism)
    wrong = {"protocol": protocol, "mechanism": mechanism, "password": "not-the-password"}
    assert not secure_broker.secure_probe(**wrong)


def test_mutual_tls_logs_in_by_client_certificate_only(secure_broker: KafkaBroker):
    settings = secure_broker.client_settings(protocol="SSL")  # the dev CA's client certificate
    assert settings.kafka_ssl_cert_file and settings.kafka_ssl_key_password
    assert metadata_ready(kafka_client_options(settings))
    anonymous = settings.model_copy(
        update={"kafka_ssl_cert_file": None, "kafka_ssl_key_file": None}
    )
    assert not metadata_ready(kafka_client_options(anonymous), timeout=3)


def test_sasl_ssl_verifies_a_client_certificate_when_one_is_given(secure_broker: KafkaBroker):
    tls = secure_broker.tls
    settings = secure_broker.client_settings().model_copy(
        update={
            "kafka_ssl_cert_file": tls.client_cert,
            "kafka_ssl_key_file": tls.client_key,
            "kafka_ssl_key_password": SecretStr(tls.client_key_password()),
        }
    )
    assert metadata_ready(kafka_client_options(settings))


@pytest.mark.parametrize("protocol", list(SECURE_LISTENERS))
def test_no_secure_port_speaks_plaintext(secure_broker: KafkaBroker, protocol: str):
    where = f"127.0.0.1:{secure_broker.listener_ports[protocol]}"
    assert not metadata_ready({"bootstrap_servers": where}, timeout=2)


def test_dev_status_says_how_to_connect_but_not_the_password(secure_broker: KafkaBroker):
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "dev", "status", "--json", "--only", "kafka"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    kafka = json.loads(done.stdout)["kafka"]
    secure = kafka["secure"]
    assert secure["bootstrap"] == secure_broker.secure_bootstrap and secure["ready"] is True
    for name, port in secure_broker.listener_ports.items():
        assert port in kafka["ports"] and f"127.0.0.1:{port}" in kafka["listening"]
        assert secure["listeners"][name] == f"127.0.0.1:{port}"
    assert Path(secure["ca_file"]).is_file()
    assert secure["password_env"] == "STREAMREC_KAFKA_SASL_PASSWORD"
    assert secure_broker.client_settings().kafka_sasl_password.get_secret_value() not in done.stdout
    assert secure_broker.tls.keystore_password() not in done.stdout
    assert secure_broker.tls.client_key_password() not in done.stdout
