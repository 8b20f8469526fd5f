"""k8s/: the kustomization builds, every manifest passes strict schemas, the rules hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.deploy.checks import (
    ROOT,
    check_k8s,
    edit_yaml,
    kustomize_build,
    pod_template,
    validate_k8s_schemas,
)


def test_kustomization_lists_exactly_the_manifests() -> None:
    resources, problems = kustomize_build(ROOT / "k8s")
    assert problems == []
    present = {p.name for p in (ROOT / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert {r.file for r in resources} == present


def test_built_manifests_validate_strictly() -> None:
    resources, _ = kustomize_build(ROOT / "k8s")
    kinds = {r.kind for r in resources}
    assert kinds >= {
        "Namespace", "ConfigMap", "Secret", "Deployment", "Service",
        "HorizontalPodAutoscaler", "PodDisruptionBudget", "Job", "NetworkPolicy",
    }  # fmt: skip
    assert validate_k8s_schemas(resources) == []


def test_kustomize_images_are_applied() -> None:
    resources, _ = kustomize_build(ROOT / "k8s")
    images = {
        c["image"]
        for r in resources
        if (t := pod_template(r))
        for key in ("initContainers", "containers")
        for c in t["spec"].get(key) or []
    }
    assert images == {"streamrec:0.1.0"}


def test_k8s_rules_hold() -> None:
    assert check_k8s(ROOT) == []


def test_copy_is_clean(deploy_copy: Path) -> None:
    """The break tests below start from this; any problem they find is the one they made.

    Round-tripped through edit_yaml like them, so rewriting the YAML breaks nothing.
    """
    for path in (deploy_copy / "k8s").glob("*.yaml"):
        edit_yaml(path, lambda doc: None)
    assert check_k8s(deploy_copy) == []


def _trainer_container(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]["containers"][0]


def _set(path: list[Any], value: Any):
    def mutate(doc: dict[str, Any]) -> None:
        node = doc
        for key in path[:-1]:
            node = node[key]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value

    return mutate


_DELETE = object()
_CONTAINER = ["spec", "template", "spec", "containers", 0]


@pytest.mark.parametrize(
    ("file", "mutate", "expected"),
    [
        # schema violations
        ("trainer.yaml", _set(["spec", "replicas"], "one"), "is not of type 'integer'"),
        ("scorer.yaml", _set([*_CONTAINER, "fooBar"], 1), "'fooBar' was unexpected"),
        ("scorer-hpa.yaml", _set(["apiVersion"], "autoscaling/v9"), "Couldn't find schema"),
        # rules the schema cannot express
        ("trainer.yaml", _set(["spec", "replicas"], 2), "replicas: 1"),
        ("trainer.yaml", _set(["spec", "strategy", "type"], "RollingUpdate"), "Recreate"),
        (
            "scorer.yaml",
            _set([*_CONTAINER, "securityContext", "readOnlyRootFilesystem"], False),
            "readOnlyRootFilesystem must be true",
        ),
        (
            "scorer.yaml",
            _set([*_CONTAINER, "securityContext", "capabilities"], _DELETE),
            "capabilities must drop ALL",
        ),
        (
            "bootstrap-job.yaml",
            _set(["spec", "template", "spec", "securityContext"], _DELETE),
            "runAsNonRoot must be true",
        ),
        (
            "scorer.yaml",
            _set([*_CONTAINER, "livenessProbe", "httpGet", "path"], "/healthz"),
            "must GET /health/",
        ),
        (
            "scorer.yaml",
            _set([*_CONTAINER, "resources", "limits"], _DELETE),
            "resources.limits.memory missing",
        ),
        (
            "scorer.yaml",
            _set(["spec", "template", "spec", "enableServiceLinks"], _DELETE),
            "enableServiceLinks must be false",
        ),
        (
            "scorer.yaml",
            _set(["spec", "template", "spec", "securityContext", "runAsUser"], 0),
            "differs from the image's USER",
        ),
        (
            "scorer.yaml",
            _set([*_CONTAINER, "volumeMounts"], [{"name": "tmp", "mountPath": "/tmp"}]),
            "STREAMREC_DATADIR '/var/lib/streamrec/faust' is not on an emptyDir",
        ),
        ("scorer-hpa.yaml", _set(["spec", "maxReplicas"], 8), "maxReplicas 8 > STREAMREC_TOPIC"),
        (
            "scorer-pdb.yaml",
            _set(["spec", "selector", "matchLabels"], {"app": "other"}),
            "no PodDisruptionBudget selects",
        ),
        (
            "networkpolicy.yaml",
            _set(["spec", "podSelector", "matchLabels"], {"app": "x"}),
            "does not select the pods",
        ),
        (
            "secret.yaml",
            _set(["stringData", "STREAMREC_S3_SECRET_KEY"], "hunter2-real"),
            "not a REPLACE_ME placeholder",
        ),
        ("configmap.yaml", _set(["metadata", "namespace"], "default"), "namespace 'default'"),
        ("kustomization.yaml", _set(["patches"], []), "'patches' is not supported"),
        (
            "secret.yaml",
            _set(["metadata", "labels", "streamrec/stage"], _DELETE),
            "Secret/streamrec-s3 is needed by the bootstrap stage",
        ),
        # the web views hold user histories and lineage: port 6066 from named clients only
        (
            "networkpolicy.yaml",
            _set(["spec", "ingress", 0, "from"], _DELETE),
            "admits the web port 6066 from every pod",
        ),
        (
            "networkpolicy.yaml",
            _set(["spec", "ingress", 0, "from", 1], {"podSelector": {}}),
            "admits the web port 6066 from every pod",
        ),
        (
            "networkpolicy.yaml",
            _set(["spec", "ingress", 0, "from", 2], {"namespaceSelector": {}}),
            "admits the web port 6066 from every pod",
        ),
        (
            "networkpolicy.yaml",
            _set(["spec", "ingress", 0, "from", 0], {"ipBlock": {"cidr": "0.0.0.0/0"}}),
            "admits the web port 6066 from every pod",
        ),
    ],
)
def test_k8s_checks_bite(deploy_copy: Path, file: str, mutate, expected: str) -> None:
    edit_yaml(deploy_copy / "k8s" / file, mutate)
    problems = check_k8s(deploy_copy)
    assert any(expected in p for p in problems), problems


def test_a_second_trainer_is_refused(deploy_copy: Path) -> None:
    k8s = deploy_copy / "k8s"
    text = (k8s / "trainer.yaml").read_text()
    (k8s / "trainer-2.yaml").write_text(text.replace("name: streamrec-trainer", "name: t2"))
    edit_yaml(k8s / "kustomization.yaml", lambda d: d["resources"].append("trainer-2.yaml"))
    assert any("want exactly one trainer" in p for p in check_k8s(deploy_copy))


def test_kustomization_must_list_every_file(deploy_copy: Path) -> None:
    k8s = deploy_copy / "k8s"
    (k8s / "extra.yaml").write_text((k8s / "scorer-pdb.yaml").read_text())
    edit_yaml(k8s / "kustomization.yaml", lambda d: d["resources"].append("gone.yaml"))
    _, problems = kustomize_build(k8s)
    assert "kustomization.yaml: k8s/extra.yaml exists but is not in resources" in problems
    assert "kustomization.yaml: gone.yaml is listed but not a file in k8s/" in problems
