"""The market's HTTP API: :func:`meshcompute.market.api.app.create_app` wires one router per
resource (:mod:`meshcompute.market.api.routes`) over the operations of
:mod:`meshcompute.market.operations`. The contract is docs/market-api.md."""
