"""The web dashboard the market serves (issue 16): what each page reads (:mod:`.views`) and
the built page itself (``web/dist``, from ``web/src`` by ``npm run build:dashboard``).
docs/dashboard-api.md is the contract between them."""
