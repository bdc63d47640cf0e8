#!/usr/bin/env bash
# Generate and commit the demo scenes, then materialise every asset with the real
# `dagster asset materialize` CLI, one run per scene partition (a failing scene does not stop the
# others), and print what came out: F1 per change map, PSNR per capture, where the files are, and
# where the time went.
#
# The change-detection chain and the NVS chain run side by side, each on one core: the NVS
# trainer's small renders gain nothing from a second thread, and the CD model trains on one
# thread while they run. Long steps print progress lines (epochs, evaluations) as they go.
# PRESET=tiny makes it quick (tests); the default preset is what the README describes, and the
# summary marks its figures against make demo's quality bars (scripts/demo_summary.py: Bars).
set -uo pipefail
BIN=${BIN:-.venv/bin}
PRESET=${PRESET:-default}  # tiny | default | quality (see mlops_assets/core/cd/config.py)
NVS_PRESET=${NVS_PRESET:-tiny}  # tiny | default | quality (see mlops_assets/core/nvs/config.py)
# Optional overrides (quick runs in tests): NVS_STEPS, NVS_MIN_PSNR, NVS_FRAMES, and
# DEMO_DATA_ARGS for `mlops-assets demo-data` (e.g. "--size 128 --image-size 32").
# CD_THREADS: PyTorch threads of the CD training (default: 1 while the NVS chain runs beside it,
# on a machine of 4 cores or fewer; 0 = one per core). SEQUENTIAL=1 runs the two chains in turn.
: "${MLOPS_HOME:?set MLOPS_HOME}" "${DAGSTER_HOME:?set DAGSTER_HOME}"
logs="$MLOPS_HOME/logs"
mkdir -p "$logs"
timings="$logs/timings.tsv"  # step, wall s, CPU s, load after it, asset selection, partition
failures="$logs/failed.txt"
: >"$timings"
: >"$failures"
cores=$(nproc 2>/dev/null || echo 2)
started=$SECONDS

timed() {  # timed <label> <selection|-> <partition|-> <command...>: run it (output as usual),
  # record wall and CPU seconds, the load after it, and the Dagster run's asset selection and
  # partition (scripts/demo_summary.py finds the run's steps by them)
  local label=$1 selection=$2 partition=$3 out times rc=0 wall user sys
  shift 3
  exec {out}>&1
  # `time` reports on the group's stderr, captured here; the command writes where we write.
  times=$( { TIMEFORMAT='%R %U %S'; time "$@" >&"$out" 2>&1; } 2>&1 ) || rc=$?
  exec {out}>&-
  read -r wall user sys <<<"${times##*$'\n'}"
  awk -v l="$label" -v w="$wall" -v u="$user" -v s="$sys" -v sel="$selection" -v p="$partition" \
    -v load="$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo -)" \
    'BEGIN { printf "%s\t%s\t%.1f\t%s\t%s\t%s\n", l, w, u + s, load, sel, p }' >>"$timings"
  return "$rc"
}

progress() {  # the run's own progress lines (an asset's log.info), as "  [tag] cd/model: ..."
  local tag=$1 stamp=$2 line  # (not Dagster's events, in capitals, nor the IO manager's lines)
  grep --line-buffered -E ' - (cd|nvs)__[a-z_]+ - ' \
    | grep --line-buffered -vE ' - (cd|nvs)__[a-z_]+ - ([A-Z_]+ - |Writing file at|Loading )' \
    | sed -u -E "s/^.* - (cd|nvs)__([a-z_]+) - /  [$tag] \\1\\/\\2: /" \
    | while IFS= read -r line; do printf '%s\n' "$line"; touch "$stamp"; done
}

materialize() {  # materialize <tag> <done/total> <selection> <partition or -> [ops config JSON]
  local tag=$1 count=$2 selection=$3 partition=$4 ops=${5-} log asset
  log="$logs/${selection//[\/,]/_}"
  [[ $partition != - ]] && log+="-$partition"
  log+=.log
  if [[ -z $ops ]]; then
    for asset in ${selection//,/ }; do  # the preset of every configurable asset in the selection
      [[ $asset == */scene ]] || ops+="${ops:+, }\"${asset//\//__}\": {\"config\": {\"preset\": \"$PRESET\"}}"
    done
    # The change map's quality check judges by the preset's bar too (tiny: not judged).
    [[ $selection == *cd/change_map* ]] \
      && ops+=", \"cd__change_map_f1_against_label\": {\"config\": {\"preset\": \"$PRESET\"}}"
  fi
  # In-process execution: one small run per scene does not need a step subprocess.
  local args=(asset materialize -m mlops_assets --select "$selection"
              --config-json "{\"execution\": {\"config\": {\"in_process\": {}}}, \"ops\": {$ops}}")
  [[ $partition != - ]] && args+=(--partition "$partition")
  local start=$SECONDS what=$selection
  [[ $selection == *,*,* ]] && what="${selection%%,*}..${selection##*,}"  # a chain: first..last
  [[ $partition != - ]] && what+=" $partition"
  if timed "$what" "$selection" "$partition" \
    run_logged "$log" "$tag" "$what" "$BIN/dagster" "${args[@]}"; then
    printf '  [%s] ok      %-5s %-40s %4ss\n' "$tag" "$count" "$what" $((SECONDS - start))
  else
    printf '  [%s] FAILED  %-5s %-40s (log: %s)\n' "$tag" "$count" "$what" "$log"
    grep -E "ERROR|Error|failed" "$log" | tail -n 5 | sed 's/^/          /'
    echo "$what" >>"$failures"
  fi
}

run_logged() {  # run_logged <log> <tag> <label> <command...>: output to the log, progress shown
  local log=$1 tag=$2 label=$3 stamp="$logs/.shown-$2" started=$SECONDS heartbeat rc
  shift 3
  touch "$stamp"
  # A line at least every 30 s: when the run has shown nothing for 25 s (starting, importing,
  # a slow step on a busy machine), say that it is still running.
  while sleep 1; do
    if (($(date +%s) - $(stat -c %Y "$stamp") >= 25)); then
      printf '  [%s] ...     %s: running, %ss\n' "$tag" "$label" $((SECONDS - started))
      touch "$stamp"
    fi
  done &
  heartbeat=$!
  "$@" 2>&1 | tee "$log" | progress "$tag" "$stamp"
  rc=${PIPESTATUS[0]}
  # SIGKILL: a shell started with SIGTERM ignored (nohup-like launchers, some CI runners) cannot
  # un-ignore it, and a plain `kill` would leave the loop running and the `wait` below hanging.
  kill -KILL "$heartbeat" 2>/dev/null
  wait "$heartbeat" 2>/dev/null
  return "$rc"
}

cd_chain() {
  local ids scene total i=0
  ids=$("$BIN/mlops-assets" scenes --kind cd --ids)
  total=$(wc -w <<<"$ids")
  for scene in $ids; do
    materialize cd "$((++i))/$total" cd/scene,cd/tiles "$scene"
  done
  # One model over every scene's tiles but the held-out ones, its evaluation against the champion,
  # then its gated registration (aliases challenger/champion).
  local threads=${CD_THREADS-}
  if [[ -z $threads ]]; then  # one core each while the NVS chain runs, on a small machine
    threads=0
    [[ ${SEQUENTIAL:-0} != 1 && $cores -le 4 ]] && threads=1
  fi
  local model_ops="\"cd__model\": {\"config\": {\"preset\": \"$PRESET\", \"num_threads\": $threads}}"
  model_ops+=", \"cd__evaluation\": {\"config\": {\"preset\": \"$PRESET\"}}"
  model_ops+=", \"cd__registered_model\": {\"config\": {\"preset\": \"$PRESET\"}}"
  # The scenes in eval/scenes.json (demo-data lists valley-eval) are not trained on: the model
  # and the champion are compared on them before the gate decides.
  materialize cd 1/1 cd/model,cd/evaluation,cd/registered_model - "$model_ops"
  i=0
  for scene in $ids; do
    materialize cd "$((++i))/$total" cd/change_map "$scene"
  done
}

nvs_chain() {
  # Per capture: Gaussians trained (CPU unless CUDA), registered behind the PSNR gate, rendered.
  local ids scene total i=0
  local ops="\"nvs__splats\": {\"config\": {\"preset\": \"$NVS_PRESET\"${NVS_STEPS:+, \"steps\": $NVS_STEPS}}}"
  [[ -n ${NVS_MIN_PSNR-} ]] && ops+=", \"nvs__registered_splats\": {\"config\": {\"min_psnr\": $NVS_MIN_PSNR}}"
  [[ -n ${NVS_FRAMES-} ]] && ops+=", \"nvs__render\": {\"config\": {\"frames\": $NVS_FRAMES}}"
  ids=$("$BIN/mlops-assets" scenes --kind nvs --ids)
  total=$(wc -w <<<"$ids")
  for scene in $ids; do
    materialize nvs "$((++i))/$total" nvs/scene,nvs/splats,nvs/registered_splats,nvs/render \
      "$scene" "$ops"
  done
}

echo "demo scenes (generated from seeded code, committed to main of the embedded store):"
# shellcheck disable=SC2086  # DEMO_DATA_ARGS is a list of options
timed "demo-data" - - "$BIN/mlops-assets" demo-data ${DEMO_DATA_ARGS-} | sed 's/^/  /'
timed "partitions sync" - - "$BIN/mlops-assets" partitions sync | sed 's/^/  /'

echo "materialising assets: the CD chain [cd] and the NVS chain [nvs] side by side, one"
echo "Dagster run per scene (full logs in $logs):"
if [[ ${SEQUENTIAL:-0} == 1 ]]; then
  cd_chain
  nvs_chain
else
  nvs_chain &
  nvs_pid=$!
  cd_chain
  wait "$nvs_pid"
fi

exported="$MLOPS_HOME/exports"
echo "copying the outputs to $exported, then the summary:"  # (quiet steps, some seconds each)
"$BIN/mlops-assets" export "$exported" --prefix cd/ >/dev/null 2>&1 || true
"$BIN/mlops-assets" export "$exported" --prefix nvs/ >/dev/null 2>&1 || true

# The figures are marked against make demo's quality bars only for what make demo runs by default.
judged=()
if [[ $PRESET == tiny ]]; then
  judged=(--not-judged "PRESET=tiny: a quick run with its own, lower expectations")
elif [[ $PRESET != default ]]; then
  judged=(--not-judged "PRESET=$PRESET: the bars are the default preset's")
elif [[ -n ${DEMO_DATA_ARGS-}${NVS_STEPS-} ]]; then
  judged=(--not-judged "DEMO_DATA_ARGS or NVS_STEPS set: smaller scenes or fewer NVS steps")
fi
"$BIN/python" "$(dirname "$0")/demo_summary.py" --timings "$timings" \
  --total $((SECONDS - started)) "${judged[@]}"

cat <<MSG

Where to look:
  Dagster UI   make dev, then http://localhost:3000 (assets, checks, metadata, runs); its
               sensors start from what the demo made: nothing runs until a new commit lands
  MLflow UI    $BIN/mlflow ui --backend-store-uri sqlite:///$MLOPS_HOME/mlflow.db, then
               http://localhost:5000 (experiments change-detection and novel-view-synthesis;
               models change-detection-unet and gaussian-splats)
  Change maps  $exported/cd/<scene>/change_map.tif and overlay.png
  Splats       $exported/nvs/<scene>/splats.ply (SuperSplat and other viewers open it),
               orbit.mp4 and preview.png
               (copied from the store's outputs branch: $BIN/mlops-assets log --ref outputs)
  Scenes       $BIN/mlops-assets scenes; $BIN/mlops-assets log
  Manifests    $MLOPS_HOME/assets/
  Logs         $logs/ (one per run; timings.tsv: wall, CPU seconds, load per step)
MSG
if [[ -s $failures ]]; then
  echo "$(wc -l <"$failures") run(s) failed: $(paste -sd, "$failures")" >&2
  exit 1
fi
