"""Routing rulesets in the database: drafts, the active version per scope, history.

A change is made as a new version (a draft), tried (``tender route explain --ruleset``,
``POST /api/routing/explain`` with ``ruleset_id``), then activated. Activation retires
the scope's previous version and bumps the registry generation in the same transaction,
so every worker routes by it within the hot-swap bound (registry.service). Every draft,
activation and clearing is audited.

A scope is a tenant, or the global instances (``tenant_id`` None). A tenant's ruleset
may name the tenant's own instances and the global ones; the global ruleset only global
ones. Routing uses the payment's tenant's ruleset, else the global one.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from providers.base import utcnow
from registry import audit
from registry.db import Database
from registry.errors import RulesetNotFound
from registry.models import PluginInstance, RoutingRuleset, bump_generation
from registry.rules import CompiledRuleSet, RulesError, compile_ruleset, parse_ruleset

DRAFT, ACTIVE, RETIRED = "draft", "active", "retired"


class RulesetView(BaseModel):
    id: uuid.UUID
    tenant_id: str | None
    version: int
    status: str
    document: dict[str, Any]
    note: str | None
    created_by: str
    created_at: datetime
    activated_by: str | None
    activated_at: datetime | None


def _scope(tenant_id: str | None) -> str:
    return tenant_id or ""


def _view(row: RoutingRuleset) -> RulesetView:
    return RulesetView(
        id=row.id,
        tenant_id=row.scope or None,
        version=row.version,
        status=row.status,
        document=row.document,
        note=row.note,
        created_by=row.created_by,
        created_at=row.created_at,
        activated_by=row.activated_by,
        activated_at=row.activated_at,
    )


def compiled(row: RoutingRuleset) -> CompiledRuleSet:
    return compile_ruleset(
        parse_ruleset(row.document), id=row.id, version=row.version, tenant_id=row.scope or None
    )


def create_draft(
    database: Database,
    document: Any,
    *,
    tenant_id: str | None = None,
    actor: str = "code",
    note: str | None = None,
) -> RulesetView:
    """Validate ``document`` (registry.rules) and save it as the scope's next version,
    a draft. RulesError names the first bad field; nothing is written then."""
    if tenant_id is not None and (not isinstance(tenant_id, str) or not 0 < len(tenant_id) <= 100):
        raise RulesError("tenant_id", "a tenant id of 1 to 100 characters, or none for global")
    if note is not None and len(note) > 500:
        raise RulesError("note", "at most 500 characters")
    ruleset = parse_ruleset(document)
    with database.transaction() as session:
        _check_targets(session, ruleset.instance_ids(), tenant_id)
        scope = _scope(tenant_id)
        latest = session.execute(
            select(func.max(RoutingRuleset.version)).where(RoutingRuleset.scope == scope)
        ).scalar_one()
        row = RoutingRuleset(
            scope=scope,
            version=(latest or 0) + 1,
            status=DRAFT,
            document=ruleset.model_dump(mode="json"),
            note=note,
            created_by=actor[:100],
            created_at=utcnow(),
        )
        session.add(row)
        session.flush()
        audit.record(
            session, actor, "routing.draft", str(row.id), None,
            {"version": row.version, "document": row.document}, tenant_id=tenant_id,
        )  # fmt: skip
        return _view(row)


def _check_targets(session: Session, ids: set[uuid.UUID], tenant_id: str | None) -> None:
    if not ids:
        return
    rows = {
        row.id: row
        for row in session.execute(
            select(PluginInstance).where(PluginInstance.id.in_(ids))
        ).scalars()
    }
    for instance_id in sorted(ids, key=str):
        row = rows.get(instance_id)
        if row is None or row.tenant_id not in (None, tenant_id):
            raise RulesError("route", f"no provider instance {instance_id} in this scope")
        if row.provider_type != "payment":
            raise RulesError("route", f"instance {instance_id} is not a payment provider")


def get_ruleset(
    database: Database, ruleset_id: uuid.UUID | str, *, within_tenant: str | None = None
) -> RulesetView:
    with database.sessions() as session:
        return _view(_row(session, ruleset_id, within_tenant))


def _row(
    session: Session, ruleset_id: uuid.UUID | str, within_tenant: str | None
) -> RoutingRuleset:
    try:
        key = ruleset_id if isinstance(ruleset_id, uuid.UUID) else uuid.UUID(str(ruleset_id))
    except ValueError:
        raise RulesetNotFound(f"{ruleset_id!r} is not a ruleset id") from None
    row = session.get(RoutingRuleset, key)
    if row is None or (within_tenant is not None and row.scope != within_tenant):
        raise RulesetNotFound(f"no routing ruleset {ruleset_id}")
    return row


def list_rulesets(
    database: Database, *, tenant_id: str | None = None, everything: bool = False
) -> list[RulesetView]:
    """A scope's versions, newest first (``everything``: every scope's)."""
    query = select(RoutingRuleset).order_by(RoutingRuleset.scope, RoutingRuleset.version.desc())
    if not everything:
        query = query.where(RoutingRuleset.scope == _scope(tenant_id))
    with database.sessions() as session:
        return [_view(row) for row in session.execute(query).scalars()]


def activate_ruleset(
    database: Database,
    ruleset_id: uuid.UUID | str,
    *,
    actor: str = "code",
    within_tenant: str | None = None,
) -> RulesetView:
    """Make a version its scope's active one (the previous one retires)."""
    with database.transaction() as session:
        row = _row(session, ruleset_id, within_tenant)
        if row.status == ACTIVE:
            return _view(row)
        # its instances may have been retired since it was drafted
        _check_targets(session, parse_ruleset(row.document).instance_ids(), row.scope or None)
        previous = session.execute(
            select(RoutingRuleset).where(
                RoutingRuleset.scope == row.scope, RoutingRuleset.status == ACTIVE
            )
        ).scalar_one_or_none()
        if previous is not None:
            previous.status = RETIRED
        row.status = ACTIVE
        row.activated_by = actor[:100]
        row.activated_at = utcnow()
        bump_generation(session)
        audit.record(
            session, actor, "routing.activate", str(row.id),
            {"version": previous.version} if previous is not None else None,
            {"version": row.version}, tenant_id=row.scope or None,
        )  # fmt: skip
        return _view(row)


def clear_rules(
    database: Database, *, tenant_id: str | None = None, actor: str = "code"
) -> RulesetView | None:
    """Retire the scope's active ruleset: its payments route as without rules again."""
    with database.transaction() as session:
        row = session.execute(
            select(RoutingRuleset).where(
                RoutingRuleset.scope == _scope(tenant_id), RoutingRuleset.status == ACTIVE
            )
        ).scalar_one_or_none()
        if row is None:
            return None
        row.status = RETIRED
        bump_generation(session)
        audit.record(
            session, actor, "routing.clear", str(row.id), {"version": row.version}, None,
            tenant_id=tenant_id,
        )  # fmt: skip
        return _view(row)


def active_rulesets(session: Session) -> dict[str | None, CompiledRuleSet]:
    """Every scope's active ruleset, compiled (what the registry's snapshot holds)."""
    rows = session.execute(select(RoutingRuleset).where(RoutingRuleset.status == ACTIVE)).scalars()
    return {row.scope or None: compiled(row) for row in rows}
