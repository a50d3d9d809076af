#!/usr/bin/env bash
# Keeps src/*/PublicAPI.Unshipped.txt in step with the code: adds every new public symbol (the RS0016 code fix)
# and drops unshipped entries whose symbol is gone (RS0017). Run it after changing public API on purpose, then
# review the diff: the files are the record of what the packages promise.
set -euo pipefail
cd "$(dirname "$0")/.."
for project in src/*/*.csproj; do
  dir=$(dirname "$project")
  dotnet format "$project" --diagnostics RS0016 --severity warn --include "$dir/" >/dev/null || true
  removed=$(dotnet build "$project" -f net10.0 2>&1 | grep -o "RS0017: Symbol '[^']*'" | sed "s/^RS0017: Symbol '//; s/'$//" | sort -u || true)
  if [ -n "$removed" ]; then
    while IFS= read -r symbol; do
      grep -vxF -- "$symbol" "$dir/PublicAPI.Unshipped.txt" > "$dir/PublicAPI.Unshipped.txt.tmp" || true
      mv "$dir/PublicAPI.Unshipped.txt.tmp" "$dir/PublicAPI.Unshipped.txt"
    done <<< "$removed"
  fi
done
git status --short -- 'src/*/PublicAPI.Unshipped.txt'
