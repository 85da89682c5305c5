"""``python -m meshcompute.cli``: the mesh command line."""

from meshcompute.cli.main import main

main()
