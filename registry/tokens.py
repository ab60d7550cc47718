"""Operator tokens with scopes, stored hashed (``tender tokens create / revoke / list``).

=========  ============================================================================
scope      may
=========  ============================================================================
read       list and show instances and plugins, health, payments and refunds
pay        request payments and read them (billing services)
operate    what read may, and activate / deactivate, routing (priority, weight), refunds
admin      everything: create, configure and retire instances (secrets), manage tokens
=========  ============================================================================

A token is **platform-wide** (``tenant_id`` None: every tenant, for platform operators)
or **bound to one tenant** (``tender tokens create --tenant t-a``): a bound token sees and
changes only its tenant's payments, refunds, instances and audit records; platform
instances are read-only entries to it; another tenant's objects answer 404, as if absent,
so their ids cannot be probed, and a body naming another tenant is refused (403).

A token is shown once, at creation; the database keeps its SHA-256 (a token is 32 random
bytes, so a fast hash is enough: nothing to brute-force). ``TENDER_API_TOKEN``, when set,
is an admin token kept in the environment (the bootstrap one).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import String, Uuid, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from config.settings import get_settings
from providers.base import utcnow
from registry import audit
from registry.db import Base, Database, UTCDateTime
from registry.errors import RegistryError

PREFIX = "tnd_"  # recognisable in a leak scanner; never part of the stored hash's secrecy


class Scope(StrEnum):
    READ = "read"
    PAY = "pay"
    OPERATE = "operate"
    ADMIN = "admin"


# What each scope grants beyond itself.
IMPLIES: dict[Scope, frozenset[Scope]] = {
    Scope.READ: frozenset({Scope.READ}),
    Scope.PAY: frozenset({Scope.PAY}),
    Scope.OPERATE: frozenset({Scope.OPERATE, Scope.READ}),
    Scope.ADMIN: frozenset(Scope),
}


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100))
    scopes: Mapped[str] = mapped_column(String(100))  # comma-separated
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # None: platform-wide; else the one tenant the token sees and changes
    tenant_id: Mapped[str | None] = mapped_column(String(100))


class EndedSession(Base):
    """A console session signed out: its cookie stays refused until it would have expired
    anyway, even if someone copied it before the sign-out."""

    __tablename__ = "console_sessions_ended"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    ended_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def end_console_session(database: Database, session_id: str, lifetime_s: float) -> None:
    """Record ``session_id`` as signed out (and forget those older than any session)."""
    with database.transaction() as session:
        if session.get(EndedSession, session_id) is None:
            session.add(EndedSession(id=session_id[:64]))
        old = utcnow() - timedelta(seconds=lifetime_s)
        session.execute(delete(EndedSession).where(EndedSession.ended_at < old))


def console_session_ended(database: Database, session_id: str) -> bool:
    with database.sessions() as session:
        return session.get(EndedSession, session_id[:64]) is not None


@dataclass(frozen=True)
class Caller:
    """Who made a request: a token's name (for the audit trail), what it may do, and the
    tenant it is bound to (None: platform-wide)."""

    name: str
    scopes: frozenset[Scope]
    tenant_id: str | None = None

    def may(self, scope: Scope) -> bool:
        return scope in self.scopes

    def sees(self, tenant_id: str | None) -> bool:
        """Whether an object of ``tenant_id`` (None: a platform one) exists for this
        caller at all: a bound token sees its own tenant's only."""
        return self.tenant_id is None or tenant_id == self.tenant_id


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _granted(scopes: frozenset[Scope]) -> frozenset[Scope]:
    return frozenset().union(*(IMPLIES[s] for s in scopes)) if scopes else frozenset()


def create_token(
    database: Database,
    name: str,
    scopes: list[str],
    expires_in_s: float | None = None,
    *,
    tenant_id: str | None = None,
    actor: str = "code",
) -> tuple[uuid.UUID, str]:
    """A new token: (its id, the token itself, shown this once); ``tenant_id`` binds it
    to one tenant (None: platform-wide)."""
    try:
        chosen = frozenset(Scope(s) for s in scopes)
    except ValueError:
        raise RegistryError(
            f"scopes must be among {', '.join(s.value for s in Scope)}, not {scopes!r}"
        ) from None
    if not chosen or not name.strip() or len(name) > 100 or "\x00" in name:
        raise RegistryError("a token needs a name (at most 100 characters) and a scope")
    if tenant_id is not None and (
        not tenant_id.strip() or len(tenant_id) > 100 or "\x00" in tenant_id
    ):
        raise RegistryError("tenant: a non-empty name of at most 100 characters")
    token = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        name=name,
        scopes=",".join(sorted(chosen)),
        token_hash=_digest(token),
        expires_at=utcnow() + timedelta(seconds=expires_in_s) if expires_in_s else None,
        tenant_id=tenant_id,
    )
    with database.transaction() as session:
        session.add(row)
        session.flush()
        audit.record(
            session, actor, "token.create", str(row.id), None, _audited(row), tenant_id=tenant_id
        )
        return row.id, token


def revoke_token(database: Database, token_id: uuid.UUID, *, actor: str = "code") -> None:
    with database.transaction() as session:
        row = session.get(ApiToken, token_id)
        if row is None:
            raise RegistryError(f"no token {token_id}")
        before = _audited(row)
        row.revoked_at = utcnow()
        audit.record(
            session,
            actor,
            "token.revoke",
            str(token_id),
            before,
            _audited(row),
            tenant_id=row.tenant_id,
        )


def _audited(row: ApiToken) -> dict[str, str | None]:
    """A token as the audit keeps it: never the token or its hash."""
    return {
        "name": row.name,
        "scopes": row.scopes,
        "tenant_id": row.tenant_id,
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "revoked": "yes" if row.revoked_at else "no",
    }


def list_tokens(database: Database) -> list[ApiToken]:
    with database.sessions() as session:
        return list(session.execute(select(ApiToken).order_by(ApiToken.created_at)).scalars())


def authenticate(database: Database, presented: str) -> Caller | None:
    """The caller a presented token belongs to, or None (unknown, revoked or expired).
    Tokens are found by their hash, so no stored value is ever compared with the presented
    one."""
    return caller_of_digest(database, token_digest(presented))


def token_digest(token: str) -> str:
    """What a token is known by once presented: the console's session keeps this, never
    the token."""
    return _digest(token)


def caller_of_digest(database: Database, digest: str) -> Caller | None:
    """The caller whose token has this digest, checked now (revoked or expired: None)."""
    bootstrap = get_settings().api_token
    if bootstrap is not None and hmac.compare_digest(
        digest.encode(), _digest(bootstrap.get_secret_value()).encode()
    ):
        return Caller("TENDER_API_TOKEN", frozenset(Scope))
    with database.sessions() as session:
        row = session.execute(
            select(ApiToken).where(ApiToken.token_hash == digest)
        ).scalar_one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    if row.expires_at is not None and row.expires_at <= utcnow():
        return None
    return Caller(
        row.name,
        _granted(frozenset(Scope(s) for s in row.scopes.split(","))),
        tenant_id=row.tenant_id,
    )


def tokens_exist(database: Database) -> bool:
    with database.sessions() as session:
        return session.execute(select(ApiToken.id).limit(1)).first() is not None
