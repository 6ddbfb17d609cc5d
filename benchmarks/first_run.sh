#!/usr/bin/env bash
# Time the README's main command as a new user meets it: a fresh clone, a new virtualenv and an empty home
# directory (so no pip cache, no models, no llama-server), with the package index reachable.
# Each step of the command is timed on its own; the total is the time to the first table.
#
# Usage: bash benchmarks/first_run.sh [WORKDIR]   (default /tmp/memcollab-first-run; it is wiped first)
# The data is read from ../shared/data beside this checkout, linked into the work dir.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/memcollab-first-run}
python=${PYTHON:-python3}

rm -rf "$work" && mkdir -p "$work/home"
git clone -q "$repo" "$work/main"
ln -s "$(cd "$repo/../shared" && pwd)" "$work/shared"
"$python" -m venv "$work/venv"

cmd=$(awk '/<!-- main-command -->/{f=1;next} /<!-- \/main-command -->/{f=0} f' "$repo/README.md" | grep -v '^```')
echo "main command: $cmd"

# Split the command at '&&' and time each step in the fresh environment.
total=0
IFS=$'\n' read -r -d '' -a steps < <(echo "$cmd" | sed 's/ && /\n/g' && printf '\0')
i=0
for step in "${steps[@]}"; do
  i=$((i + 1)); log="$work/step$i.log"
  start=$(date +%s)
  env -i PATH="$work/venv/bin:/usr/local/bin:/usr/bin:/bin" HOME="$work/home" TERM=dumb \
    bash -c "cd '$work/main' && $step" >"$log" 2>&1 || { tail -20 "$log"; exit 1; }
  took=$(( $(date +%s) - start ))
  total=$(( total + took ))
  printf '%4d s  %s\n' "$took" "$step"
done
tail -25 "$log"
printf 'total: %d min %d s to the first table\n' $(( total / 60 )) $(( total % 60 ))
