"""Who may change what scorers serve: HMAC-SHA256 signatures on model messages.

A checksum proves a message was not damaged; only a signature proves the trainer (or an
operator holding the same secret) wrote it. Three things are signed with the model key:

* deltas (``model-deltas``): the delta's bytes inside an envelope, :func:`seal` /
  :func:`verify`: ``MAGIC | key id (8 ASCII hex) | HMAC (32 bytes) | payload``;
* announcements (``model-updates``, :class:`models.wire.ModelUpdate`) and snapshot
  manifests: a ``signature`` field, ``"<key id>:<hex HMAC>"``, over the canonical JSON of
  the other fields (:func:`sign_fields` / :func:`check_fields`); a manifest's fields
  include the payload's sha256, so the signature covers the payload too.

Every MAC also covers a *purpose* (``"delta"``, ``"model-update"``, ``"snapshot"``, ...),
so a message signed for one use is never accepted as another.

Keys: a :class:`Keyring` holds the one key that signs and the further keys that only
verify (rotation). A signature names its key by :func:`key_id` (the first 8 hex digits of
the key's sha256), so a verifier picks the key without trying each. Pure functions: the
keys are passed in (``app/`` reads them from the environment or files).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from models.errors import ModelError

MAGIC = b"SRSIGN1\0"
"""The first bytes of a sealed message."""
KEY_ID_CHARS = 8
_MAC = hashlib.sha256().digest_size
_PREFIX = len(MAGIC) + KEY_ID_CHARS + _MAC
SIGNATURE_FIELD = "signature"
DEV_KEY = b"streamrec-dev-model-key: not a secret, never use in production"
"""The key of a worker started with no key configured (dev, tests); ``app/`` warns."""

RefusalKind = Literal["unsigned", "unknown_key", "bad_signature"]
REFUSAL_KINDS: tuple[str, ...] = ("unsigned", "unknown_key", "bad_signature")


class SignatureError(ModelError, ValueError):
    """A message or snapshot that is not signed by a key this worker trusts.

    ``kind`` is one of :data:`REFUSAL_KINDS` (a metric label); the message says why."""

    def __init__(self, kind: RefusalKind, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def key_id(key: bytes) -> str:
    """The public name of ``key``: the first 8 hex digits of its sha256."""
    return hashlib.sha256(key).hexdigest()[:KEY_ID_CHARS]


@dataclass(frozen=True)
class Keyring:
    """The key that signs, plus keys that only verify (during a rotation)."""

    signing: bytes = field(repr=False)
    verifying: tuple[bytes, ...] = field(default=(), repr=False)
    allow_unsigned_snapshots: bool = False
    """Accept snapshots with no signature at all (stores written before signing existed);
    a snapshot with a wrong signature is refused regardless."""

    def __post_init__(self) -> None:
        if not self.signing or not all(self.verifying):
            raise ValueError("model keys must not be empty")

    @classmethod
    def dev(cls) -> Keyring:
        return cls(DEV_KEY)

    @property
    def signing_id(self) -> str:
        return key_id(self.signing)

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The ids of every key that verifies (the signing key's first)."""
        return tuple(dict.fromkeys(key_id(k) for k in (self.signing, *self.verifying)))

    def key(self, kid: str) -> bytes | None:
        for candidate in (self.signing, *self.verifying):
            if key_id(candidate) == kid:  # ids are public: no need for a constant time
                return candidate
        return None


def _mac(key: bytes, purpose: str, data: bytes | memoryview) -> bytes:
    mac = hmac.new(key, purpose.encode() + b"\0", hashlib.sha256)
    mac.update(data)
    return mac.digest()


def _key_for(keys: Keyring, kid: str, what: str) -> bytes:
    key = keys.key(kid)
    if key is None:
        raise SignatureError(
            "unknown_key",
            f"{what} is signed with key {kid!r}, not one of this worker's {list(keys.key_ids)}",
        )
    return key


# --- binary envelope (deltas, control messages) ------------------------------------------
def seal(payload: bytes, keys: Keyring, *, purpose: str) -> bytes:
    """``payload`` signed with the signing key, for ``purpose``."""
    kid = keys.signing_id
    return MAGIC + kid.encode() + _mac(keys.signing, purpose, payload) + payload


def verify(message: bytes | None, keys: Keyring, *, purpose: str) -> bytes:
    """The payload of a sealed ``message``, or :class:`SignatureError` saying why not."""
    what = f"{purpose} message"
    if message is None or not message.startswith(MAGIC) or len(message) < _PREFIX:
        raise SignatureError("unsigned", f"{what} is not signed")
    try:
        kid = message[len(MAGIC) : len(MAGIC) + KEY_ID_CHARS].decode("ascii")
    except UnicodeDecodeError:
        raise SignatureError("unsigned", f"{what} has a malformed key id") from None
    key = _key_for(keys, kid, what)
    mac = message[len(MAGIC) + KEY_ID_CHARS : _PREFIX]
    payload = memoryview(message)[_PREFIX:]
    if not hmac.compare_digest(_mac(key, purpose, payload), mac):
        raise SignatureError("bad_signature", f"{what}: signature does not match (key {kid})")
    return bytes(payload)


# --- JSON objects (announcements, snapshot manifests) ------------------------------------
def canonical(fields: Mapping[str, Any]) -> bytes:
    """The bytes a JSON object's signature covers: every field but the signature, sorted
    keys, compact, ASCII (the same bytes whatever encoder later writes the object)."""
    body = {k: v for k, v in fields.items() if k != SIGNATURE_FIELD}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:  # NaN, non-string keys, huge ints
        raise SignatureError("bad_signature", f"fields cannot be signed: {exc}") from None
    return text.encode()


def sign_fields(fields: Mapping[str, Any], keys: Keyring, *, purpose: str) -> str:
    """The ``signature`` value for a JSON object with these fields."""
    mac = _mac(keys.signing, purpose, canonical(fields))
    return f"{keys.signing_id}:{mac.hex()}"


def check_fields(fields: Mapping[str, Any], keys: Keyring, *, purpose: str) -> str:
    """Raise :class:`SignatureError` unless ``fields[SIGNATURE_FIELD]`` signs the other
    fields with a key of ``keys``; returns the key id."""
    what = f"{purpose}"
    signature = fields.get(SIGNATURE_FIELD)
    if signature is None:
        raise SignatureError("unsigned", f"{what} is not signed")
    if not isinstance(signature, str) or len(signature) != KEY_ID_CHARS + 1 + 2 * _MAC:
        raise SignatureError("unsigned", f"{what} has a malformed signature")
    kid, _, mac_hex = signature.partition(":")
    if not _LOWER_HEX.fullmatch(mac_hex):  # one spelling per signature: lowercase hex
        raise SignatureError("unsigned", f"{what} has a malformed signature")
    mac = bytes.fromhex(mac_hex)
    key = _key_for(keys, kid, what)
    if not hmac.compare_digest(_mac(key, purpose, canonical(fields)), mac):
        raise SignatureError("bad_signature", f"{what}: signature does not match (key {kid})")
    return kid


_LOWER_HEX = re.compile(r"[0-9a-f]+")


def parse_keys(lines: Iterable[str]) -> tuple[bytes, ...]:
    """Keys listed one per line (a verify-keys file); blank lines and ``#`` comments skipped."""
    keys = []
    for line in lines:
        text = line.strip()
        if text and not text.startswith("#"):
            keys.append(text.encode())
    return tuple(keys)
