"""Fault tests: real broker, real S3, real worker processes, bounded in count and time.

Each test has a short variant (run by default and in CI) and, where the issue asks for more
volume, a ``long`` variant (``pytest -m long tests/faults``). The shared :func:`cluster` is
one trainer and two scorers on the dev broker and S3; tests that stop a service start a
broker or S3 server of their own (``devtools``) so nothing else ever sees the outage.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.harness import Cluster

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.e2e]


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster.run(tmp_path_factory.mktemp("cluster")) as running:
        yield running
