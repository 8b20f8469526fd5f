"""The dev broker's SASL_SSL listener: each SASL mechanism, mutual TLS, refusals, status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from app.dev import KafkaBroker, metadata_ready
from app.kafka import kafka_client_options
from app.settings import PROJECT_ROOT, SASL_MECHANISMS

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("mechanism", SASL_MECHANISMS)
def test_each_mechanism_logs_in_and_a_wrong_password_does_not(
    secure_broker: KafkaBroker, mechanism: str
):
    assert secure_broker.secure_probe(mechanism=mechanism)
    assert not secure_broker.secure_probe(mechanism=mechanism, password="not-the-password")


def test_a_client_certificate_signed_by_the_dev_ca_is_accepted(secure_broker: KafkaBroker):
    tls = secure_broker.tls
    settings = secure_broker.client_settings().model_copy(
        update={
            "kafka_ssl_cert_file": tls.client_cert,
            "kafka_ssl_key_file": tls.client_key,
            "kafka_ssl_key_password": SecretStr(tls.client_key_password()),
        }
    )
    assert metadata_ready(kafka_client_options(settings))


def test_the_secure_port_speaks_no_plaintext(secure_broker: KafkaBroker):
    assert not metadata_ready({"bootstrap_servers": secure_broker.secure_bootstrap}, timeout=2)


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
    assert secure_broker.secure_port in kafka["ports"]
    assert f"127.0.0.1:{secure_broker.secure_port}" in kafka["listening"]
    assert Path(secure["ca_file"]).is_file()
    assert secure["password_env"] == "STREAMREC_KAFKA_SASL_PASSWORD"
    assert secure_broker.client_settings().kafka_sasl_password.get_secret_value() not in done.stdout
    assert secure_broker.tls.keystore_password() not in done.stdout
