"""`mesh verifier join|seat|top-up|leave|withdraw` against anvil: anyone takes a verifier seat with a
deposit from its wallet, and the numbers printed are the registry's."""

from __future__ import annotations

import json

import pytest

from meshcompute.units import TOKEN
from tests.cli.conftest import WALLET_MESH, assert_one_line_error
from tests.contracts.world import TEST_PARAMS

pytestmark = pytest.mark.anvil


def test_join_leave_and_withdraw_a_seat(world, cli_wallet, run_mesh) -> None:
    who = cli_wallet.address
    small = run_mesh("verifier", "join", "9999")  # the test deployment's unit: 10,000 MESH
    assert_one_line_error(small, "at least 10000 MESH")
    assert world.admin.verifier_seat(who) is None  # nothing sent

    joined = run_mesh("verifier", "join", "25000", "--json")
    assert joined.code == 0, joined.err
    data = json.loads(joined.out)
    assert data["seat"] is True and data["action"] == "joined with 25000 MESH"
    assert "a candidate for jobs committed from block" in run_mesh("verifier", "seat").out
    seat = world.admin.verifier_seat(who)
    assert (seat.units, seat.deposit, seat.leaving) == (2, 25_000 * TOKEN, False)
    data = json.loads(run_mesh("verifier", "seat", "--json").out)
    assert data["deposit"]["wei"] == str(25_000 * TOKEN) and data["units"] == 2
    assert data["seat"] is True and data["until_block"] is None
    assert world.admin.balance_of(who) == WALLET_MESH - 25_000 * TOKEN
    again = run_mesh("verifier", "join", "10000")
    assert_one_line_error(again, "already holds a seat")
    assert data["reserved"]["wei"] == "0"

    zero = run_mesh("verifier", "top-up", "0")
    assert_one_line_error(zero, "positive number of MESH")
    topped = run_mesh("verifier", "top-up", "5000", "--json")
    assert topped.code == 0, topped.err
    data = json.loads(topped.out)
    assert data["action"] == "topped up 5000 MESH" and data["units"] == 2  # weight as joined
    assert data["deposit"]["wei"] == str(30_000 * TOKEN)
    assert world.admin.balance_of(who) == WALLET_MESH - 30_000 * TOKEN

    early = run_mesh("verifier", "withdraw")
    assert_one_line_error(early, "still a candidate", "mesh verifier leave")
    left = run_mesh("verifier", "leave")
    assert left.code == 0, left.err
    seat = world.admin.verifier_seat(who)
    assert seat.leaving and "deposit released" in run_mesh("verifier", "seat").out
    bound = run_mesh("verifier", "withdraw")
    assert_one_line_error(bound, "bound until")

    world.advance(TEST_PARAMS.unbonding_delay_s + 1)
    done = run_mesh("verifier", "withdraw", "--json")
    assert done.code == 0, done.err
    assert json.loads(done.out)["seat"] is False
    assert world.admin.balance_of(who) == WALLET_MESH
    assert "no seat" in run_mesh("verifier", "seat").out
