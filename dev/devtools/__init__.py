"""The dev tools (outside the streamrec wheel): launchers for the real dev services, Apache
Kafka (KRaft) and SeaweedFS S3, with their own settings (:class:`DevSettings`).

Used by ``streamrec dev up|down|status`` and by tests that need their own instance
(e.g. to stop S3 in the middle of an upload)::

    from devtools import DevSettings, KafkaBroker, SeaweedServer
    s3 = SeaweedServer(DevSettings(dev_dir=tmp_path, s3_port=21333))
    s3.start()          # waits until a signed ListBuckets answers
    ...
    s3.stop()           # SIGTERM, SIGKILL after the timeout; idempotent
"""

from collections.abc import Iterable

from devtools.kafka import KafkaBroker, metadata_ready
from devtools.process import DevServiceError, ManagedProcess
from devtools.seaweed import SeaweedServer, s3_problem
from devtools.settings import DevSettings

__all__ = [
    "DevServiceError",
    "DevSettings",
    "KafkaBroker",
    "ManagedProcess",
    "SeaweedServer",
    "metadata_ready",
    "port_clash",
    "s3_problem",
    "services",
]


def port_clash(chosen: Iterable[ManagedProcess]) -> str | None:
    """One line naming a port two services (or two roles of one) would bind, or None."""
    owners: dict[int, str] = {}
    for svc in chosen:
        for port in svc.ports():
            if port in owners:
                return (
                    f"port {port} is wanted by {owners[port]} and {svc.name}; choose other ports "
                    f"({svc.port_env})"
                )
            owners[port] = svc.name
    return None


def services(settings: DevSettings) -> dict[str, ManagedProcess]:
    """Both dev services by name, in start order."""
    return {"kafka": KafkaBroker(settings), "s3": SeaweedServer(settings)}
