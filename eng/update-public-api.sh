#!/usr/bin/env bash
# Adds every new public symbol of the libraries to their PublicAPI.Unshipped.txt (the RS0016 code fix).
# Run it after adding public API on purpose, then review the diff.
set -euo pipefail
cd "$(dirname "$0")/.."
for project in src/*/*.csproj; do
  dotnet format "$project" --diagnostics RS0016 --severity warn --include "$(dirname "$project")/" >/dev/null || true
done
git status --short -- 'src/*/PublicAPI.Unshipped.txt'
