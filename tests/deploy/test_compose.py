"""docker-compose.yml: Compose Specification schema (vendored, offline) and the startup story."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.deploy.checks import (
    ROOT,
    check_compose,
    check_compose_override,
    edit_yaml,
    load_yaml,
    validate_compose_schema,
)


def test_compose_matches_the_compose_spec() -> None:
    assert validate_compose_schema(ROOT) == []


def test_compose_rules_hold() -> None:
    assert check_compose(ROOT) == []


def test_copy_is_clean(deploy_copy: Path) -> None:
    """The break tests below start from this; any problem they find is the one they made.

    Round-tripped through edit_yaml like them, so resolving the anchors breaks nothing.
    """
    edit_yaml(deploy_copy / "docker-compose.yml", lambda doc: None)
    assert validate_compose_schema(deploy_copy) == []
    assert check_compose(deploy_copy) == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["services"]["trainer"].update(restart_policy="always"),
            "'restart_policy' does not match any of the regexes",
        ),
        (
            lambda d: d["services"]["bootstrap"]["depends_on"]["generate"].update(condition="done"),
            "done",
        ),
        (lambda d: d["services"]["scorer-1"].update(ports="6067:6066"), "is not of type 'array'"),
    ],
)
def test_compose_schema_bites(deploy_copy: Path, mutate, expected: str) -> None:
    edit_yaml(deploy_copy / "docker-compose.yml", mutate)
    problems = validate_compose_schema(deploy_copy)
    assert any(expected in p for p in problems), problems


def _second_trainer(doc: dict[str, Any]) -> None:
    doc["services"]["scorer-2"]["command"] = ["worker", "--role", "all"]


def _rename_bucket(doc: dict[str, Any]) -> None:
    for service in doc["services"].values():
        env = service.get("environment") or {}
        if "STREAMREC_MODEL_STORE" in env:
            env["STREAMREC_MODEL_STORE"] = "s3://other-bucket/models"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_second_trainer, "want exactly one trainer service"),
        (
            lambda d: d["services"]["scorer-2"].update(ports=["127.0.0.1:6067:6066"]),
            "host port 6067 used by scorer-1 and scorer-2",
        ),
        (
            lambda d: d["services"]["bootstrap"]["depends_on"]["generate"].update(
                condition="service_started"
            ),
            "should use service_completed_successfully",
        ),
        (
            lambda d: d["services"]["trainer"]["depends_on"]["kafka"].update(
                condition="service_completed_successfully"
            ),
            "should use service_healthy",
        ),
        (
            lambda d: d["services"]["trainer"].update(volumes=["./state:/var/lib/streamrec"]),
            "bind mount ./state",
        ),
        (
            lambda d: d["services"]["scorer-1"].update(volumes=["nowhere:/var/lib/streamrec"]),
            "volume 'nowhere' is not declared",
        ),
        (_rename_bucket, "no minio/mc service creates bucket 'other-bucket'"),
        (
            lambda d: d["services"]["trainer"]["build"].update(target="builder"),
            "build target 'builder'",
        ),
    ],
)
def test_compose_rules_bite(deploy_copy: Path, mutate, expected: str) -> None:
    edit_yaml(deploy_copy / "docker-compose.yml", mutate)
    problems = check_compose(deploy_copy)
    assert any(expected in p for p in problems), problems


def test_local_override_changes_only_images_and_the_s3_server() -> None:
    assert check_compose_override(ROOT) == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["services"].setdefault("trainer", {}).update(image="x"),
            "trainer may not change ['image']",
        ),
        (lambda d: d["services"]["kafka"].update(ports=["9095:9094"]), "kafka may not change"),
        (lambda d: d["services"].update(extra={"image": "x"}), "extra is not a service"),
        (lambda d: d.update(volumes={"v": {}}), "only services may change"),
        (lambda d: d["services"]["minio"].update(environment=5), "compose schema"),
    ],
)
def test_local_override_rules_bite(deploy_copy: Path, mutate, expected: str) -> None:
    edit_yaml(deploy_copy / "docker-compose.local.yml", mutate)
    problems = check_compose_override(deploy_copy)
    assert any(expected in p for p in problems), problems


def test_local_override_runs_the_images_dev_images_builds() -> None:
    """docker-compose.local.yml names exactly the tags `streamrec dev images` builds."""
    from devtools.images import image_tags
    from devtools.settings import DevSettings

    override = load_yaml(ROOT / "docker-compose.local.yml")
    tags = image_tags(DevSettings())
    named = {svc: spec["image"] for svc, spec in override["services"].items() if "image" in spec}
    assert named == {
        "kafka": tags["kafka"],
        "minio": tags["s3"],
        "create-bucket": tags["streamrec"],
    }
    default = load_yaml(ROOT / "docker-compose.yml")
    assert tags["streamrec"].removeprefix("localhost/") == default["services"]["trainer"]["image"]
