"""Deployment env <-> app/settings.py: names, required settings, valid values, secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.deploy.checks import ROOT, check_env, edit_yaml


def test_every_env_name_is_a_setting_and_every_container_gets_what_it_needs() -> None:
    assert check_env(ROOT) == []


def test_copy_is_clean(deploy_copy: Path) -> None:
    """The break tests below start from this; any problem they find is the one they made."""
    for path in [deploy_copy / "docker-compose.yml", *(deploy_copy / "k8s").glob("*.yaml")]:
        edit_yaml(path, lambda doc: None)
    assert check_env(deploy_copy) == []


def _compose_env(key: str, value: str):
    def mutate(doc: dict[str, Any]) -> None:
        doc["services"]["scorer-1"]["environment"][key] = value

    return mutate


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]["containers"][0]


def _secret_in_configmap(doc: dict[str, Any]) -> None:
    doc["data"]["STREAMREC_S3_SECRET_KEY"] = "REPLACE_ME"


def _literal_secret_env(doc: dict[str, Any]) -> None:
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["env"].append({"name": "STREAMREC_S3_SECRET_KEY", "value": "REPLACE_ME"})


@pytest.mark.parametrize(
    ("file", "mutate", "expected"),
    [
        (
            "docker-compose.yml",
            _compose_env("STREAMREC_NOT_A_SETTING", "1"),
            "STREAMREC_NOT_A_SETTING is not a field of Settings",
        ),
        (
            "docker-compose.yml",
            _compose_env("STREAMREC_TOPIC_PARTITIONS", "four"),
            "compose:scorer-1: STREAMREC_TOPIC_PARTITIONS",
        ),
        (
            "k8s/configmap.yaml",
            lambda d: d["data"].pop("STREAMREC_MODEL_STORE"),
            "STREAMREC_MODEL_STORE is not set",
        ),
        (
            "k8s/configmap.yaml",
            lambda d: d["data"].update(STREAMREC_LOSS="hinge"),
            "STREAMREC_LOSS: String should match pattern",
        ),
        (
            "k8s/configmap.yaml",
            _secret_in_configmap,
            "ConfigMap/streamrec-config holds the secret STREAMREC_S3_SECRET_KEY",
        ),
        (
            "k8s/scorer.yaml",
            _literal_secret_env,
            "STREAMREC_S3_SECRET_KEY comes from env, not a Secret",
        ),
        (  # an optional secret (SecretStr | None) is a secret too
            "k8s/configmap.yaml",
            lambda d: d["data"].update(STREAMREC_KAFKA_SASL_PASSWORD="REPLACE_ME"),
            "ConfigMap/streamrec-config holds the secret STREAMREC_KAFKA_SASL_PASSWORD",
        ),
        (
            "k8s/configmap.yaml",
            lambda d: d["data"].update(STREAMREC_KAFKA_SECURITY_PROTOCOL="TLS"),
            "STREAMREC_KAFKA_SECURITY_PROTOCOL: Input should be",
        ),
        # the image binds 0.0.0.0: every worker needs the web token, the same one, from a Secret
        (
            "k8s/scorer.yaml",
            lambda d: _container(d)["env"].pop(1),
            "streamrec-scorer:scorer: the web views bind 0.0.0.0 without STREAMREC_WEB_TOKEN",
        ),
        (
            "docker-compose.yml",
            lambda d: d["services"]["scorer-1"]["environment"].pop("STREAMREC_WEB_TOKEN"),
            "compose:scorer-1: the web views bind 0.0.0.0 without STREAMREC_WEB_TOKEN",
        ),
        (
            "docker-compose.yml",
            _compose_env("STREAMREC_WEB_TOKEN", "another-token-of-scorer-1"),
            "compose: the workers' STREAMREC_WEB_TOKEN differ",
        ),
        (
            "k8s/scorer.yaml",
            lambda d: _container(d)["env"][1]["valueFrom"]["secretKeyRef"].update(
                name="streamrec-s3", key="STREAMREC_S3_SECRET_KEY"
            ),
            "k8s: the workers' STREAMREC_WEB_TOKEN differ",
        ),
        (
            "k8s/trainer.yaml",
            lambda d: _container(d)["env"].__setitem__(
                1, {"name": "STREAMREC_WEB_TOKEN", "value": "REPLACE_ME_WEB_TOKEN"}
            ),
            "STREAMREC_WEB_TOKEN comes from env, not a Secret",
        ),
        (
            "docker-compose.yml",
            _compose_env("STREAMREC_WEB_TOKEN", "short"),
            "must be 16 or more of",
        ),
    ],
)
def test_env_checks_bite(deploy_copy: Path, file: str, mutate, expected: str) -> None:
    edit_yaml(deploy_copy / file, mutate)
    problems = check_env(deploy_copy)
    assert any(expected in p for p in problems), problems


def test_unknown_names_in_docs_are_caught_too(deploy_copy: Path) -> None:
    docs = deploy_copy / "docs"
    docs.unlink()  # a symlink to the real docs/ in the copy
    docs.mkdir()
    (docs / "deploy.md").write_text("Set STREAMREC_KAFKA_BROKERS to your brokers.\n")
    problems = check_env(deploy_copy)
    assert "docs/deploy.md:1: STREAMREC_KAFKA_BROKERS is not a field of Settings" in problems
