#!/bin/sh
# Start a provider (worker or verifier) container: create its wallet on first start (password
# from MESH_WALLET_PASSWORD or MESH_WALLET_PASSWORD_FILE), on a dev chain fund it, stake
# MESH_STAKE credits if it has no stake yet, then exec the given `mesh ...` command.
set -eu
if [ ! -f "${MESH_WALLET_PATH:-$MESH_DATA_DIR/wallet.json}" ]; then
  if [ -n "${MESH_PROVIDER_KEY_FILE:-}" ]; then
    mesh wallet import --key-file "$MESH_PROVIDER_KEY_FILE"
  else
    mesh wallet new
  fi
fi
if [ "${MESH_DEV_FUND:-0}" = "1" ]; then
  mesh wallet faucet || true
fi
if [ -n "${MESH_STAKE:-}" ]; then
  mesh provider stake "$MESH_STAKE" --if-unstaked
fi
exec "$@"
