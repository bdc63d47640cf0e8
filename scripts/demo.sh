#!/usr/bin/env bash
# Materialise every asset of every demo scene with the real `dagster asset materialize` CLI, one
# run per scene partition (a failing scene does not stop the others), then say where to look.
set -uo pipefail
BIN=${BIN:-.venv/bin}
: "${MLOPS_HOME:?set MLOPS_HOME}" "${DAGSTER_HOME:?set DAGSTER_HOME}"
logs="$MLOPS_HOME/logs"
mkdir -p "$logs"
failed=()

materialize() {  # materialize <selection> <partition or ->
  local selection=$1 partition=$2 log
  log="$logs/${selection//[\/,]/_}${partition:+-$partition}.log"
  # In-process execution: one small run per scene does not need a step subprocess that imports
  # the whole stack again (measured: 10.6 s -> 4.9 s per run on 2 cores).
  local args=(asset materialize -m mlops_assets --select "$selection"
              --config-json '{"execution": {"config": {"in_process": {}}}}')
  [[ $partition != - ]] && args+=(--partition "$partition")
  local start=$SECONDS
  if "$BIN/dagster" "${args[@]}" >"$log" 2>&1; then
    printf '  ok      %-28s %-20s %4ss\n' "$selection" "$partition" $((SECONDS - start))
  else
    printf '  FAILED  %-28s %-20s (log: %s)\n' "$selection" "$partition" "$log"
    grep -E "ERROR|Error|failed" "$log" | tail -n 5 | sed 's/^/          /'
    failed+=("$selection $partition")
  fi
}

echo "materialising assets (one Dagster run per scene; logs in $logs):"
for scene in $("$BIN/mlops-assets" scenes --kind cd --ids); do
  materialize cd/scene "$scene"
done
for scene in $("$BIN/mlops-assets" scenes --kind nvs --ids); do
  materialize nvs/scene "$scene"
done

cat <<MSG

Where to look:
  Dagster UI   make dev, then http://localhost:3000 (assets, checks, metadata, runs)
  Scenes       $BIN/mlops-assets scenes; $BIN/mlops-assets log
  Manifests    $MLOPS_HOME/assets/
MSG
if ((${#failed[@]})); then
  echo "${#failed[@]} run(s) failed: ${failed[*]}" >&2
  exit 1
fi
