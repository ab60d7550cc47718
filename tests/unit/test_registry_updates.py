"""Config updates keep stored secrets when a form echoes the mask back."""

from __future__ import annotations

from sqlalchemy import select

from registry.models import PluginInstance
from registry.secrets import MASK


def stored_config(registry, instance_id):  # type: ignore[no-untyped-def]
    with registry.database.sessions() as session:
        return session.execute(
            select(PluginInstance.config).where(PluginInstance.id == instance_id)
        ).scalar_one()


def test_masked_secret_echoed_back_keeps_the_stored_secret(registry) -> None:  # type: ignore[no-untyped-def]
    view = registry.create_instance("sandbox", {"api_key": "sk_original_secret"})
    before = stored_config(registry, view.id)["api_key"]

    updated = registry.update_config(view.id, {"api_key": MASK, "latency_ms": 7})
    assert stored_config(registry, view.id)["api_key"] == before
    assert updated.config["latency_ms"] == 7

    replaced = registry.update_config(view.id, {"api_key": MASK}, merge=False)
    assert stored_config(registry, view.id)["api_key"] == before
    assert "latency_ms" not in replaced.config
    plugin = registry.plugin_for(registry.get_instance(view.id))
    assert plugin.config.api_key.get_secret_value() == "sk_original_secret"
