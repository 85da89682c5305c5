"""``python -m meshcompute.mesh.cli``: the mesh command line."""

from meshcompute.mesh.cli.main import main

main()
