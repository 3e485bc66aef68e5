"""Is the MLflow database at the schema this image's MLflow expects? (k8s: the server waits for it.)

The cluster's MLflow database is migrated by one Job before the server rolls out
(``k8s/platform/mlflow-migrate-job.yaml``: ``mlflow db upgrade`` for the tracking and registry
tables, ``python -m mlflow.server.auth db upgrade`` for the basic-auth users). The server pods
wait in an init container until both schemas are at this image's head revision, so no replica
ever creates or migrates tables itself (two replicas racing on a fresh database, or a new image
changing the schema under a running one, are what this prevents)::

    python -m egnet.tracking.schema URI            # exit 0 if current, 1 if not (says which)
    python -m egnet.tracking.schema --wait URI     # poll until current (every 5 s; Ctrl-C to stop)

URI is a SQLAlchemy URL; credentials may come from the environment (libpq: PGUSER, PGPASSWORD).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class SchemaState:
    tracking: str | None       # the database's revision (None: no schema yet)
    tracking_head: str         # what this MLflow expects
    auth: str | None
    auth_head: str

    @property
    def current(self) -> bool:
        return self.tracking == self.tracking_head and self.auth == self.auth_head

    def describe(self) -> str:
        def one(name: str, have: str | None, want: str) -> str:
            return f"{name} {have or 'empty'}" + ("" if have == want else f" (want {want})")

        return (one("tracking schema", self.tracking, self.tracking_head) + ", "
                + one("auth schema", self.auth, self.auth_head))


def schema_state(uri: str) -> SchemaState:
    """The tracking (``alembic_version``) and basic-auth (``alembic_version_auth``) revisions of
    the database at ``uri`` next to the head revisions of the installed MLflow. Reads only."""
    import sqlalchemy
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from mlflow.server.auth.db import utils as auth_db
    from mlflow.store.db import utils as db

    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.connect() as conn:
            tracking = MigrationContext.configure(conn).get_current_revision()
            auth = MigrationContext.configure(
                conn, opts={"version_table": "alembic_version_auth"}).get_current_revision()
    finally:
        engine.dispose()
    auth_head = ScriptDirectory.from_config(auth_db._get_alembic_config("")).get_current_head()
    return SchemaState(tracking, db._get_latest_schema_revision(), auth, auth_head)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m egnet.tracking.schema", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("uri", help="SQLAlchemy URL of the MLflow database")
    parser.add_argument("--wait", action="store_true", help="poll until both schemas are current")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between polls (with --wait)")
    args = parser.parse_args(argv)
    while True:
        try:
            state = schema_state(args.uri)
            message = state.describe()
            if state.current:
                print(f"MLflow database is current: {message}", flush=True)
                return 0
        except Exception as exc:  # not reachable yet, no such database, ...: say it and retry
            message = f"cannot read the schema: {str(exc).splitlines()[0][:200] if str(exc) else type(exc)}"
        if not args.wait:
            print(f"MLflow database is not current: {message}", file=sys.stderr)
            return 1
        print(f"waiting for the migration Job (egnet-mlflow-migrate): {message}", flush=True)
        time.sleep(args.interval)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
