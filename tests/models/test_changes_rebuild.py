"""What the change feed records for ``rebuild``: the rows it changes, as changes by ``rebuild``
(nothing for the rows it leaves as they were), and, after the swap, every later write as before
(PostgreSQL's swapped-in tables carry the triggers). Real PostgreSQL and SQLite."""

from __future__ import annotations

import json

from sqlalchemy import Engine, delete, text

from clerk_sync.core.settings import Settings
from models.tables import sync_changes
from tests.factories import event, membership_data, organization_data
from tests.models.support import WORKSPACE_KEY, deliver
from tests.models.test_changes_convergence import FEED_TABLES, Replica, catch_up, stored
from workers.rebuild import rebuild


def test_a_rebuild_records_what_it_changes_and_the_feed_goes_on_after_it(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(delete(sync_changes))
    replica: Replica = {}
    organization = organization_data("org_1", name="Acme")
    deliver(engine, event("organization.created", organization))
    for number in range(3):
        member = membership_data(
            organization, membership_id=f"orgmem_{number}", user_id=f"u_{number}"
        )
        deliver(engine, event("organizationMembership.created", member))
    # Drift no event explains: a renamed organization, a lost membership, a stray organization.
    with engine.begin() as connection:
        connection.execute(text("UPDATE organizations SET name = 'Drifted' WHERE id = 'org_1'"))
        connection.execute(text("DELETE FROM organization_memberships WHERE id = 'orgmem_1'"))
        connection.execute(
            text(
                "INSERT INTO organizations (id, name, public_metadata, created_at, updated_at, "
                "synced_at) VALUES ('org_stray', 'Stray', '{}', 1, 1, CURRENT_TIMESTAMP)"
            )
        )
    catch_up(engine, replica)
    with engine.connect() as connection:
        before = int(connection.execute(text("SELECT max(id) FROM sync_changes")).scalar_one())

    settings = Settings(
        database_url=engine.url.render_as_string(hide_password=False),
        workspace_metadata_key=WORKSPACE_KEY,
    )
    rebuild(settings, engine, batch_size=2)

    with engine.connect() as connection:
        recorded = connection.execute(
            text(
                "SELECT table_name, entity_id, operation, changed_columns, source "
                "FROM sync_changes WHERE id > :before ORDER BY id"
            ),
            {"before": before},
        ).all()
    made = {(row.table_name, row.entity_id, row.operation, row.source) for row in recorded}
    assert made == {
        ("organizations", "org_1", "update", "rebuild"),
        ("organizations", "org_stray", "delete", "rebuild"),
        ("organization_memberships", "orgmem_1", "insert", "rebuild"),
    }, "only what the rebuild changed, by rebuild"
    updated = next(row for row in recorded if row.operation == "update")
    columns = updated.changed_columns
    assert (json.loads(columns) if isinstance(columns, str) else columns) == ["name"]

    catch_up(engine, replica)
    assert replica_tables(replica) == stored(engine)

    deliver(
        engine,
        event(
            "organization.updated",
            {**organization, "name": "Later", "updated_at": organization["updated_at"] + 1},
        ),
        svix_id="msg_later",
    )
    catch_up(engine, replica)
    assert replica["organizations"]["org_1"]["name"] == "Later", "the new tables record changes"
    assert replica_tables(replica) == stored(engine)


def replica_tables(replica: Replica) -> Replica:
    return {table.name: dict(replica.get(table.name, {})) for table in FEED_TABLES}
