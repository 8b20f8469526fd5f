"""What the agents and web views of one worker share (:class:`Runtime`), attached to the
Faust app and read back from it (:meth:`Runtime.of`); and the worker's model key."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from faust.types import AppT

from agents.health import ReaderHealth
from agents.ingest import Ingest
from agents.scorer import NO_CATALOG, Catalog
from agents.state import ModelHolder
from agents.trainer import Trainer
from app.dashboard import Series
from app.faust_adapters import FaustSeenTable
from app.settings import Role, Settings, model_keys
from models.signing import DEV_KEY, Keyring

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What the agents and views of one worker share."""

    settings: Settings
    role: Role
    holder: ModelHolder = field(default_factory=ModelHolder)
    trainer: Trainer | None = None
    seen: FaustSeenTable | None = None  # the seen-items table (scorer/all roles)
    ingest: Ingest | None = None  # the ingest agent (scorer/all roles)
    catalog: Any = None  # the catalog GlobalTable (every role)
    series: Series | None = None  # the dashboard's sampled time series
    health: ReaderHealth = field(default_factory=ReaderHealth)  # readers failing: /health/ 503
    topics: dict[str, Any] = field(default_factory=dict)
    experiments: Any = None  # app.wiring.experiments.Experiments (every role)

    @property
    def catalog_rows(self) -> Catalog:
        """The catalog's rows as a Mapping: the table's store, which holds the same rows
        without the Table's per-read hooks (measured 0.3-0.7 us a title instead of 2.4-3.3;
        a reply reads ten)."""
        return NO_CATALOG if self.catalog is None else self.catalog.data

    def attach(self, app: AppT) -> None:
        """Make this the runtime of ``app`` (as ``app.streamrec``), for the web views."""
        app.streamrec = self  # type: ignore[attr-defined]

    @staticmethod
    def of(app: AppT) -> Runtime:
        """The runtime :meth:`attach` gave ``app``."""
        runtime = getattr(app, "streamrec", None)
        if not isinstance(runtime, Runtime):
            raise RuntimeError(f"the Faust app {app.conf.id!r} has no streamrec runtime")
        return runtime


_dev_key_said = False


def worker_model_keys(settings: Settings) -> Keyring:
    """:func:`app.settings.model_keys`; with no key set, the warning that the dev key is
    used goes to the log once per process."""
    global _dev_key_said
    keys = model_keys(settings)
    if keys.signing == DEV_KEY and not _dev_key_said:
        _dev_key_said = True
        log.warning(
            "No STREAMREC_MODEL_KEY or STREAMREC_MODEL_KEY_FILE: model deltas, announcements "
            "and snapshots are signed with the fixed dev key, which anyone can forge; set a "
            "secret key outside development (docs/deploy.md, 'Model key')"
        )
    return keys
