"""The bench's private world: a fresh PostgreSQL schema, a flushed Redis database, a
data folder and the ``TENDER_*`` variables that point workers and the harness at them."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/5"
APPLICATION_NAME = "tender-bench"  # tags the bench's PostgreSQL connections


class HarnessError(RuntimeError):
    """The bench itself broke (a worker died, a wait timed out): no valid figures."""


@dataclass
class BenchEnv:
    postgres_url: str  # the server/database, without a schema
    broker_url: str
    schema: str
    database_url: str  # postgres_url with search_path set to ``schema``
    data_dir: Path
    variables: dict[str, str]

    @classmethod
    def create(cls, postgres_url: str, broker_url: str) -> BenchEnv:
        from cryptography.fernet import Fernet
        from sqlalchemy import create_engine, make_url, text

        _claim_redis_db(broker_url)
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        engine = create_engine(postgres_url)
        with engine.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine.dispose()
        database_url = (
            make_url(postgres_url)
            .update_query_dict(
                {"application_name": APPLICATION_NAME, "options": f"-csearch_path={schema}"}
            )
            .render_as_string(hide_password=False)
        )
        data_dir = Path(tempfile.mkdtemp(prefix="tender-bench-"))
        variables = {
            "TENDER_ENV": "test",
            "TENDER_DATABASE_URL": database_url,
            "TENDER_BROKER_URL": broker_url,
            "TENDER_DATA_DIR": str(data_dir),
            # One key for every process: without it each would race to create a key file.
            "TENDER_SECRETS_KEY": Fernet.generate_key().decode(),
        }
        return cls(postgres_url, broker_url, schema, database_url, data_dir, variables)

    def apply(self) -> None:
        """Point this process at the bench's database and broker."""
        from config.settings import reset_settings
        from registry.db import forget_databases

        for name in [n for n in os.environ if n.startswith("TENDER_")]:
            del os.environ[name]
        os.environ.update(self.variables)
        reset_settings()
        forget_databases()

    def migrate(self) -> None:
        from registry.migrate import upgrade

        upgrade(self.database_url)

    def worker_environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TENDER_")}
        env.update(self.variables)
        # The workers' per-core claims (TENDER_WORKER_CPU=auto) are the bench's own: a
        # test suite's workers elsewhere on the machine cannot leave them unpinned.
        env["TENDER_WORKER_CPU_LOCK_DIR"] = str(self.data_dir / "cpus")
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        return env

    def close(self) -> None:
        """Drop the schema, flush the Redis database and remove the data folder."""
        from sqlalchemy import create_engine, text

        from registry.db import forget_databases

        forget_databases()
        try:
            engine = create_engine(self.postgres_url)
            with engine.begin() as connection:
                connection.execute(text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
            engine.dispose()
        finally:
            _redis(self.broker_url).flushdb()
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _claim_redis_db(url: str) -> None:
    """Flush the bench's Redis database; refuse one that something else consumes from."""

    client = _redis(url)
    db = int(client.connection_pool.connection_kwargs.get("db", 0))
    others = [
        c["addr"]
        for c in client.client_list()
        if int(c.get("db", -1)) == db and c.get("cmd") in {"brpop", "blpop", "brpoplpush"}
    ]
    if others:
        raise HarnessError(
            f"Redis db {db} has consumers ({', '.join(others)}): stale bench workers or another "
            "user; stop them or pass --broker with a free db"
        )
    client.flushdb()


def _redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


def machine(env: BenchEnv) -> dict[str, Any]:
    """What the figures were measured on."""
    from sqlalchemy import create_engine, text

    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    engine = create_engine(env.postgres_url)
    with engine.connect() as connection:
        postgres = connection.execute(text("SHOW server_version")).scalar_one()
        max_connections = int(connection.execute(text("SHOW max_connections")).scalar_one())
        in_use = int(connection.execute(text("SELECT count(*) FROM pg_stat_activity")).scalar_one())
    engine.dispose()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu": cpu_model,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {
            name: metadata.version(name)
            for name in ("celery", "kombu", "sqlalchemy", "redis", "psycopg", "pydantic")
        },
        "redis_server": _redis(env.broker_url).info("server").get("redis_version"),
        "postgresql_server": postgres,
        "postgresql_max_connections": max_connections,
        "postgresql_connections_in_use_at_start": in_use,
        "git_commit": commit,
    }
