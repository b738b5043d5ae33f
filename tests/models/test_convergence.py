"""Property: whatever order and however often Svix delivers a history, the synced tables end up as
if every event had arrived once, in order (and that equals what Clerk holds)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from sqlalchemy import Engine

from tests.conftest import empty_tables
from tests.models.histories import ClerkHistory, Delivery
from tests.models.organization_history import OrganizationHistory, model_tables
from tests.models.support import WORKSPACE_KEY, synced_tables
from workers.processing import apply_event, describe_event

RECEIVED_AT_MS = 1_800_000_000_000

# Weighted: deletions of whole organizations and users are rarer than everyday changes.
KINDS = st.sampled_from([0, 1, 1, 2, 2, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7, 8])

ACTION = st.tuples(
    KINDS,
    st.integers(min_value=0, max_value=11),
    st.integers(min_value=0, max_value=59),
    st.sampled_from([1, 1, 2, 1000, 60_000]),
)


@st.composite
def histories(draw: st.DrawFn) -> ClerkHistory:
    history = ClerkHistory(
        organization_slots=draw(st.integers(min_value=2, max_value=4)),
        user_count=draw(st.integers(min_value=2, max_value=4)),
    )
    for action in draw(st.lists(ACTION, min_size=1, max_size=24)):
        history.perform(*action)
    return history


@st.composite
def deliveries(draw: st.DrawFn, events: list[Delivery]) -> list[Delivery]:
    """Every event at least once, some redelivered under the same svix id, some re-sent under a
    second svix id (the same payload), then shuffled."""
    sent = list(events)
    for original in events:
        if draw(st.integers(min_value=0, max_value=5)) == 0:
            sent.append(original)
        if draw(st.integers(min_value=0, max_value=7)) == 0:
            sent.append(Delivery(f"{original.svix_id}_again", original.body, original.label))
    return draw(st.permutations(sent))


def apply_all(engine: Engine, sent: list[Delivery]) -> None:
    for delivery in sent:
        status = apply_event(
            engine, describe_event(delivery.svix_id, delivery.body, RECEIVED_AT_MS), WORKSPACE_KEY
        )
        assert status == "applied", (delivery, status)


def test_any_delivery_order_converges_to_in_order_state(engine: Engine) -> None:
    non_trivial: list[bool] = []

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(data=st.data(), history=histories())
    def converges(data: Any, history: ClerkHistory) -> None:
        note(f"history: {history.events}")
        empty_tables(engine)
        apply_all(engine, history.events)
        in_order = synced_tables(engine)
        assert in_order == history.expected_state()

        sent = data.draw(deliveries(history.events), label="deliveries")
        empty_tables(engine)
        apply_all(engine, sent)
        assert synced_tables(engine) == in_order

        organizations, memberships, users = in_order
        removed = history.memberships_removed_with_users
        non_trivial.append(bool(organizations and memberships) or removed > 0)
        hypothesis_event(f"memberships in final state: {min(len(memberships), 3)}")
        hypothesis_event(f"users in final state: {min(len(users), 3)}")
        hypothesis_event(f"memberships removed with their user: {min(removed, 2)}")

    converges()
    assert sum(non_trivial) >= len(non_trivial) // 2, "histories were mostly trivial"


# Every action, the organization model's (9-19) as often as the others.
MODEL_KINDS = st.sampled_from(
    [0, 1, 2, 2, 2, 3, 3, 4, 5, 6, 7, 7, 8, *range(9, 20), 9, 10, 12, 12, 13, 13, 15, 16]
)


@st.composite
def model_histories(draw: st.DrawFn) -> OrganizationHistory:
    history = OrganizationHistory(
        organization_slots=draw(st.integers(min_value=2, max_value=3)),
        user_count=draw(st.integers(min_value=2, max_value=3)),
    )
    action = st.tuples(
        MODEL_KINDS,
        st.integers(min_value=0, max_value=11),
        st.integers(min_value=0, max_value=59),
        st.sampled_from([1, 2, 1000, 60_000]),
    )
    # A prologue that makes derived columns likely: permissions, the role org:admin, and an
    # organization whose creator is its admin.
    prologue = [(9, 0, 0, 1), (9, 0, 1, 1), (12, 0, 1, 1), (0, 0, 1, 1)]
    for step in [*prologue, *draw(st.lists(action, min_size=1, max_size=30))]:
        history.perform(*step)
    return history


def test_the_organization_model_converges_with_memberships_and_users(engine: Engine) -> None:
    """Roles, permissions, invitations and domains mixed with organization, membership and
    user events: any shuffled, duplicated delivery ends in the tables of in-order delivery,
    the memberships' derived permissions and profile columns included, and those equal what
    the model of Clerk holds."""
    derived: list[bool] = []

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(data=st.data(), history=model_histories())
    def converges(data: Any, history: OrganizationHistory) -> None:
        note(f"history: {history.events}")
        empty_tables(engine)
        apply_all(engine, history.events)
        in_order = (synced_tables(engine), model_tables(engine))
        assert in_order == (history.expected_state(), history.expected_model())

        sent = data.draw(deliveries(history.events), label="deliveries")
        empty_tables(engine)
        apply_all(engine, sent)
        assert (synced_tables(engine), model_tables(engine)) == in_order

        granted = [m for m in history.members.values() if history.granted(m["role"]) is not None]
        derived.append(bool(granted))
        hypothesis_event(f"memberships whose role is stored: {min(len(granted), 2)}")
        hypothesis_event(f"roles in final state: {min(len(in_order[1][0]), 2)}")

    converges()
    assert sum(derived) >= len(derived) // 5, "roles rarely reached a membership"


@pytest.mark.parametrize("seed", range(3))
def test_reversed_delivery_converges(engine: Engine, seed: int) -> None:
    """A deterministic worst case: every history delivered newest first."""
    history = ClerkHistory(organization_slots=3, user_count=3, start=seed)
    plan = [
        (0, 0, 1, 1),
        (2, 0, 1, 1),
        (0, 1, 2, 1),
        (2, 1, 2, 1000),
        (1, seed, 4, 1),
        (5, seed, 1, 1),
        (3, 1, 2, 1),
        (5, 0, 5, 60_000),
        (1, 1, 2, 1),
        (4, seed, 0, 1),
        (6, seed + 1, 0, 1),
        (2, 0, 2, 1),
    ]
    for action in plan:
        history.perform(*action)
    apply_all(engine, history.events)
    in_order = synced_tables(engine)
    assert in_order == history.expected_state()
    assert in_order[0], "the plan leaves a live organization"

    empty_tables(engine)
    apply_all(engine, list(reversed(history.events)))
    assert synced_tables(engine) == in_order
