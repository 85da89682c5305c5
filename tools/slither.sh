#!/usr/bin/env bash
# Run slither over contracts/ through tools/solc-shim; see tools/slither_check.py.
# Exit 0: no unexplained high/medium findings; 1: some; 2: slither could not run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py=python3; fi
fi
exec "$py" "$root/tools/slither_check.py" "$@"
