"""`mesh demo` runs end to end and reconciles (it raises DemoFailed otherwise); with `--keep`
its network stays up and serves the dashboard it names until told to stop, and then every
process is stopped."""

from __future__ import annotations

import io

import httpx
import pytest
from rich.console import Console

from meshcompute.mesh.demo import run_demo


def test_demo_reconciles_and_keeps_its_dashboard_up_until_told(anvil) -> None:
    # anvil fixture: skips/fails the same way when absent
    out = io.StringIO()
    seen: dict[str, object] = {}

    def keep(stack, pages: dict[str, str]) -> None:
        """What a person at the demo's dashboard sees, read while the network is kept."""
        seen["market"] = stack.market_url
        seen["pages"] = pages
        api = stack.market_url + "/dashboard/api"
        seen["overview"] = httpx.get(api + "/overview", timeout=30).json()
        cheater = pages["the cheater"].rsplit("/", 1)[-1]
        seen["cheater"] = httpx.get(f"{api}/providers/{cheater}", timeout=30).json()
        group = pages["this run's shards"].rsplit("/", 1)[-1]
        seen["group"] = httpx.get(f"{api}/groups/{group}", timeout=30).json()

    run_demo(Console(file=out, width=160), keep=keep)
    text = out.getvalue()
    assert "cheater caught" in text and "dashboard" in text
    assert all(url in text for url in seen["pages"].values())  # printed for the person
    assert seen["overview"]["jobs"]["by_state"]["slashed"] >= 1
    assert int(seen["cheater"]["stake"]["slashed_wei"]) > 0
    assert seen["cheater"]["record"]["slashed"] >= 1
    assert seen["group"]["complete"] is True
    with pytest.raises(httpx.TransportError):  # and then everything stopped
        httpx.get(str(seen["market"]) + "/health", timeout=5)
