"""One router per resource. Routes parse and authenticate, call one function of
:mod:`meshcompute.market.operations`, and answer."""
