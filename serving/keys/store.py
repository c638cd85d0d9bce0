"""API keys: created, listed, revoked and verified; stored hashed in SQL (SQLAlchemy 2).

A key looks like ``mlwp_<key id>_<secret>``. Only the key id and a SHA-256 digest of the
secret (an HMAC when a pepper is configured) are stored; the secret is shown once, at
creation.

Verification does the same work whatever the token: the service holds every active key (id
and digest) in memory, read whole from the table every ``cache_seconds``, and a token's id
is looked up there, never in the database. An unknown id gets a decoy digest, so both paths
compute one digest and make one constant-time comparison; which key ids exist is not told by
the timing (before, an id not read recently cost a database query: 0.8 against 0.43 ms), and
a flood of made-up ids costs the database nothing. A key created or revoked in another
process takes effect within ``cache_seconds``, in this process at once. When a re-read fails
the keys read last keep serving (a revocation cannot be written while the database is down)
and the failure is logged.

With ``background=True`` (the serving process) a re-read never runs on the caller's thread:
a thread of the store's own (``mlwp-keys``) reads the keys again every ``cache_seconds``,
whether or not requests come, and requests are answered from the keys read last. On the
event loop the re-read was a stall of every request in flight: a cold SQLAlchemy query took
10-25 ms of CPU every ``cache_seconds`` under load (0.3 ms when run twice in a row), and with
PostgreSQL it would add a network round trip. A key changed elsewhere then takes effect
within ``cache_seconds`` and one query, also on an idle service: before, the re-read was
started by the first request to find the keys stale and that request was answered from the
stale keys, so a key made with ``mlwp keys create`` was refused (401) on its first use
however long after its creation, and a revoked key accepted once (found by following
docs/monitoring.md on a fresh platform). Only when that thread has not read for twice
``cache_seconds`` (a process frozen between invocations, as on AWS Lambda) is a request's
verification made to read first, on its own thread. The first read (nothing to answer from)
and ``cache_seconds=0`` (read on every verification) stay on the caller's thread.

Scopes: ``admin`` (every route, including ``/admin/*``), ``model:<name>`` (predictions of
one model), ``model:*`` (predictions of every model), and ``feedback:<name>`` /
``feedback:*`` (sending labels of one or every model: the system that learns outcomes is
seldom the one that asks for predictions, so neither scope implies the other).

The schema is owned by Alembic migrations beside this module, with their own version table
(``mlwp_serving_alembic_version``) so the keys can share the platform database with Airflow.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy import JSON, DateTime, String
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from serving.core.errors import KeyStoreError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "mlwp_serving_alembic_version"
TOKEN_PREFIX = "mlwp"  # noqa: S105 - a prefix, not a secret
ADMIN_SCOPE = "admin"
_SCOPE = re.compile(r"^(admin|(model|feedback):(\*|[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}))$")
_TOKEN = re.compile(r"^mlwp_([0-9a-f]{16})_([A-Za-z0-9_\-]{32,128})$")
log = structlog.get_logger("mlwp.serving.keys")
_RATE = re.compile(r"^\s*\d+\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day|month|year)s?\s*$")


class Base(DeclarativeBase):
    pass


class ApiKeyRow(Base):
    """One API key (the table ``mlwp_api_keys``)."""

    __tablename__ = "mlwp_api_keys"

    key_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    secret_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    rate_limit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


@dataclass(frozen=True)
class ApiKey:
    """What the service knows about a key once verified (never the secret)."""

    key_id: str
    name: str
    scopes: tuple[str, ...]
    rate_limit: str | None
    created_at: datetime
    revoked_at: datetime | None

    @property
    def is_admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes

    def allows_model(self, model: str) -> bool:
        """Whether this key may ask ``model`` for predictions."""
        return self.is_admin or "model:*" in self.scopes or f"model:{model}" in self.scopes

    def allows_feedback(self, model: str) -> bool:
        """Whether this key may send labels (outcomes) of ``model``."""
        return self.is_admin or "feedback:*" in self.scopes or f"feedback:{model}" in self.scopes

    def refusal(self, action: str, model: str, scope: str) -> str:
        """Why this key is refused ``action`` on ``model``, with the key's own scopes: a
        client that mistyped the model (``churnn``) was told only that its key may not,
        as if the key were wrong."""
        return (
            f"this API key ({self.name!r}, scopes {', '.join(self.scopes) or 'none'}) may not "
            f"{action} model {model!r}: that needs scope {scope}:{model} or {scope}:*"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "name": self.name,
            "scopes": list(self.scopes),
            "rate_limit": self.rate_limit,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def validate_scopes(scopes: list[str]) -> tuple[str, ...]:
    """Check scope strings, naming the first bad one."""
    if not scopes:
        raise KeyStoreError(
            "a key needs at least one scope (admin, model:<name>, model:*, feedback:<name> or "
            "feedback:*)"
        )
    for scope in scopes:
        if not _SCOPE.match(scope):
            raise KeyStoreError(
                f"invalid scope {scope!r}: expected 'admin', 'model:<name>', 'model:*', "
                "'feedback:<name>' or 'feedback:*'",
                code="invalid_scope",
            )
    return tuple(dict.fromkeys(scopes))


def validate_rate_limit(rate: str | None) -> str | None:
    """Check a rate-limit string such as ``100/second`` (the ``limits`` library notation)."""
    if rate is None:
        return None
    if not _RATE.match(rate):
        raise KeyStoreError(
            f"invalid rate limit {rate!r}: expected e.g. '100/second' or '5000 per minute'",
            code="invalid_rate_limit",
        )
    return rate.strip()


def new_token() -> str:
    """A new key token, ``mlwp_<key id>_<secret>``: 64 bits of id, 256 bits of secret."""
    return f"{TOKEN_PREFIX}_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"


def _engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return sa.create_engine(url, pool_pre_ping=True)


def migrate(url: str, revision: str = "head") -> None:
    """Bring the key database at ``url`` to ``revision`` with Alembic."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("version_table", VERSION_TABLE)
    engine = _engine(url)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


class KeyStore:
    """The API-key table, with every active key held in memory for verification."""

    def __init__(
        self,
        url: str,
        *,
        pepper: str | None = None,
        cache_seconds: float = 5.0,
        background: bool = False,
    ):
        self.url = url
        self._engine = _engine(url)
        self._pepper = pepper.encode() if pepper else None
        self._cache_seconds = cache_seconds
        # key id -> (the key, its secret's digest): the active keys, and when they were read
        self._active: dict[str, tuple[ApiKey | None, str]] = {}
        self._read_at = -math.inf
        self._lock = threading.Lock()
        # changes made here (create, revoke) since the start: a re-read that began before one
        # must not install what it read (it would bring a revoked key back)
        self._changes = 0
        # re-reads off the caller's thread, every cache_seconds (see the module)
        self._background = background and cache_seconds > 0
        self._refresher: threading.Thread | None = None
        self._stop = threading.Event()
        self._refreshing = False  # that thread is reading now (a slow database, not a freeze)
        # what an unknown id is compared with: the digest of a secret nobody holds
        self._decoy: tuple[ApiKey | None, str] = (None, self._digest(secrets.token_urlsafe(32)))

    def close(self) -> None:
        self._stop.set()
        if self._refresher is not None and self._refresher is not threading.current_thread():
            # bounded: with the database unreachable the thread is nearly always in a read
            # (one every cache_seconds), and a connect with no timeout waits ~2 min; it is a
            # daemon holding the store weakly between reads, so it may be left to end
            self._refresher.join(_CLOSE_WAIT_SECONDS)
            if self._refresher.is_alive():
                log.warning("api_keys_refresher_left_reading", waited_seconds=_CLOSE_WAIT_SECONDS)
        self._engine.dispose()

    def _digest(self, secret: str) -> str:
        if self._pepper is None:
            return hashlib.sha256(secret.encode()).hexdigest()
        return hmac.new(self._pepper, secret.encode(), hashlib.sha256).hexdigest()

    def create(
        self, name: str, scopes: list[str], *, rate_limit: str | None = None
    ) -> tuple[ApiKey, str]:
        """Create a key; returns it and the token, which is never shown again."""
        token = new_token()
        return self._insert(name, scopes, rate_limit, token), token

    def install(self, name: str, scopes: list[str], token: str) -> tuple[ApiKey, bool]:
        """Make ``token`` (made earlier by :func:`new_token`) a valid key; idempotent.

        For a platform that keeps a key of its own among its secrets (``mlwp up`` keeps the
        deploy task's admin key in ``<home>/secrets.json``): the token exists before the
        key store does, and a reset key database gets the same key back. Returns the key and
        whether it was added now. A token whose id is revoked, or stored with another secret,
        is refused (``revoked_key``, ``key_conflict``): the caller makes a new token.
        """
        match = _TOKEN.match(token)
        if match is None:
            raise KeyStoreError("not an mlwp API key token", code="invalid_token")
        key_id, secret = match.groups()
        with sa.orm.Session(self._engine) as session:
            row = session.get(ApiKeyRow, key_id)
            existing = None if row is None else (_to_key(row), row.secret_hash)
        if existing is None:
            return self._insert(name, scopes, None, token), True
        key, secret_hash = existing
        if not hmac.compare_digest(self._digest(secret), secret_hash):
            raise KeyStoreError(
                f"API key {key_id!r} exists with another secret", code="key_conflict"
            )
        if key.revoked_at is not None:
            raise KeyStoreError(f"API key {key_id!r} was revoked", code="revoked_key")
        return key, False

    def _insert(self, name: str, scopes: list[str], rate_limit: str | None, token: str) -> ApiKey:
        name = name.strip()
        if not name or len(name) > 128:
            raise KeyStoreError("a key needs a name of 1 to 128 characters", code="invalid_name")
        checked = validate_scopes(scopes)
        rate = validate_rate_limit(rate_limit)
        match = _TOKEN.match(token)
        if match is None:
            raise KeyStoreError("not an mlwp API key token", code="invalid_token")
        key_id, secret = match.groups()
        secret_hash = self._digest(secret)
        row = ApiKeyRow(
            key_id=key_id,
            name=name,
            secret_hash=secret_hash,
            scopes=list(checked),
            rate_limit=rate,
            created_at=datetime.now(UTC),
            revoked_at=None,
        )
        with sa.orm.Session(self._engine) as session, session.begin():
            session.add(row)
            session.flush()
            key = _to_key(row)
        with self._lock:
            self._active = {**self._active, key_id: (key, secret_hash)}
            self._changes += 1
        return key

    def list(self, *, include_revoked: bool = False) -> list[ApiKey]:
        """Every key, oldest first."""
        query = sa.select(ApiKeyRow).order_by(ApiKeyRow.created_at)
        if not include_revoked:
            query = query.where(ApiKeyRow.revoked_at.is_(None))
        with sa.orm.Session(self._engine) as session:
            return [_to_key(row) for row in session.scalars(query)]

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key by id (the part after ``mlwp_``); revoking twice is an error."""
        with sa.orm.Session(self._engine) as session, session.begin():
            row = session.get(ApiKeyRow, key_id)
            if row is None:
                raise KeyStoreError(f"no API key with id {key_id!r}", code="unknown_key")
            if row.revoked_at is not None:
                raise KeyStoreError(
                    f"API key {key_id!r} was already revoked at {row.revoked_at.isoformat()}",
                    code="already_revoked",
                )
            row.revoked_at = datetime.now(UTC)
            key = _to_key(row)
        with self._lock:
            self._active = {k: v for k, v in self._active.items() if k != key_id}
            self._changes += 1
        return key

    def verify(self, token: str) -> ApiKey | None:
        """The key a bearer token belongs to, or None when unknown, wrong or revoked."""
        match = _TOKEN.match(token)
        if match is None:
            return None
        key_id, secret = match.groups()
        # the same steps for every well-formed token (see the module)
        key, expected = self._keys().get(key_id, self._decoy)
        if hmac.compare_digest(self._digest(secret), expected):
            return key
        return None

    def _keys(self) -> dict[str, tuple[ApiKey | None, str]]:
        """The active keys: read here the first time, and when older than ``cache_seconds``
        without ``background``; with it, the store's thread keeps them fresh (see the
        module), and they are read here only if that thread has fallen two periods behind."""
        age = time.monotonic() - self._read_at
        if not self._background:
            if age >= self._cache_seconds:
                self.reload()
            return self._active
        if self._read_at == -math.inf or (age >= 2 * self._cache_seconds and not self._refreshing):
            self.reload()
        if self._refresher is None:
            with self._lock:
                if self._refresher is None and not self._stop.is_set():
                    self._refresher = threading.Thread(
                        target=_refresh,
                        args=(weakref.ref(self), self._stop, self._cache_seconds),
                        name="mlwp-keys",
                        daemon=True,
                    )
                    self._refresher.start()
        return self._active

    def _reload_logged(self) -> None:
        try:
            self.reload()
        except Exception as exc:  # reload() logs database errors; anything else, here
            log.error("api_keys_reload_failed", error=f"{type(exc).__name__}: {exc}"[:300])

    def reload(self) -> None:
        """Read every active key from the table (keep the last ones when that fails)."""
        now = time.monotonic()
        changes = self._changes
        query = sa.select(ApiKeyRow).where(ApiKeyRow.revoked_at.is_(None))
        try:
            with sa.orm.Session(self._engine) as session:
                active: dict[str, tuple[ApiKey | None, str]] = {
                    row.key_id: (_to_key(row), row.secret_hash) for row in session.scalars(query)
                }
        except sa.exc.SQLAlchemyError as exc:
            if self._read_at == -math.inf:
                raise  # nothing read yet: no key can be verified
            log.warning("api_keys_reload_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            self._read_at = now  # try again in cache_seconds, not on every request
            return
        with self._lock:
            if self._changes != changes:
                return  # a key changed here while reading: the next read installs
            self._active, self._read_at = active, now


# how long close() waits for a read in progress (a healthy one takes milliseconds)
_CLOSE_WAIT_SECONDS = 5.0


def _refresh(store_ref: weakref.ref[KeyStore], stop: threading.Event, seconds: float) -> None:
    """The ``mlwp-keys`` thread: read the keys again every ``seconds`` until the store is
    closed or gone (held weakly, so a store dropped without ``close`` ends its thread)."""
    while not stop.wait(seconds):
        store = store_ref()
        if store is None:
            return
        store._refreshing = True
        try:
            store._reload_logged()
        finally:
            store._refreshing = False
        del store


def _to_key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        key_id=row.key_id,
        name=row.name,
        scopes=tuple(row.scopes),
        rate_limit=row.rate_limit,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )
