#!/usr/bin/env bash
# One device call, one campaign: train every job of JOBS_FILE side by side, each time-boxed by
# trainer.max_time (a run that would overrun stops between epochs, is tested at its best and is
# marked shortened), then pack the runs' small files into one archive under $OUT.
#
#   scripts/campaign.sh JOBS_FILE MAX_TIME_S [override ...]
#   JOBS_FILE: one job per line, "<run name> <overrides...>"; lines starting with '#' are comments;
#   a line "!prepare <overrides...>" builds that data once (scripts/prepare_data.py) before any
#   job starts, so jobs that share a corpus do not all build it at once; a job "<name> !grid <norm>
#   [overrides...]" runs the appendix grid for that norm as populations (bnrnn.population_grid,
#   $GRID_TRIALS trials, default 52) into runs/<name>; its trainer.max_time applies to each
#   batch-size group, and the groups run one after another
#   Every line is checked first (scripts/check_campaign.py); a malformed one stops the campaign
#   before any job starts.
#   e.g. OUT=/tmp/out scripts/campaign.sh scripts/campaigns/ptb_table2.txt 480 data.root=.devdata/ptb
#
# Afterwards, on the machine with the repository:
#   tar xzf runs.tgz -C /tmp/c && python scripts/collect_runs.py /tmp/c/runs --dest results/runs/ptb && make tables
set -euo pipefail
set -f  # a job's overrides are words, never file patterns (population.seeds=[2,3])
[ $# -ge 2 ] || { echo "usage: $0 JOBS_FILE MAX_TIME_S [override ...]" >&2; exit 2; }
jobs_file=$1; max_time=$2; shift 2
[ -f "$jobs_file" ] || { echo "campaign: no jobs file $jobs_file" >&2; exit 2; }
out=${OUT:-campaign_out}
work=${CAMPAIGN_DIR:-campaign}
[ -e "$work/runs" ] && { echo "campaign: $work/runs exists; move it away or set CAMPAIGN_DIR" >&2; exit 2; }
# every line is checked before anything is prepared or started: a malformed line would
# otherwise fail only in its own log, after the other jobs had taken the device
python scripts/check_campaign.py "$jobs_file" "$max_time" "$@" || exit 2
mkdir -p "$out" "$work/runs"
out=$(cd "$out" && pwd)
# several processes share one GPU far better under MPS; without it (or on CPU) they time-slice
if [ -z "${NO_MPS:-}" ] && command -v nvidia-cuda-mps-control >/dev/null 2>&1; then
  nvidia-cuda-mps-control -d 2>/dev/null || true
fi
# a copy of the tree without .git still records the revision it ran
export BNRNN_GIT_REVISION=${BNRNN_GIT_REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
while read -r name args; do
  [[ "$name" == "!prepare" ]] || continue
  # shellcheck disable=SC2086  # the overrides are words
  python scripts/prepare_data.py $args "$@" || { echo "campaign: preparing data failed: $args" >&2; exit 1; }
done < "$jobs_file"
# every run records how many shared the device (its times are shared-device times)
BNRNN_CONCURRENT_RUNS=$(grep -cvE '^[[:space:]]*($|#|!prepare)' "$jobs_file" || true)
export BNRNN_CONCURRENT_RUNS
pids=()
while read -r name args; do
  [[ "$name" == "!prepare" ]] && continue
  [[ -z "$name" || "$name" == \#* ]] && continue
  mkdir -p "$work/runs/$(dirname "$name")"
  if [[ "$args" == "!grid "* ]]; then
    read -r _ norm rest <<< "$args"
    # shellcheck disable=SC2086  # the job's overrides are words
    python -m bnrnn.population_grid --norm "$norm" --trials "${GRID_TRIALS:-52}" \
      --sweep-dir "$work/runs/$name" -- $rest trainer.max_time="$max_time" quiet=true "$@" \
      > "$work/runs/$name.log" 2>&1 &
  else
    # shellcheck disable=SC2086  # the job's overrides are words
    python -m bnrnn.train $args trainer.max_time="$max_time" quiet=true "$@" \
      hydra.run.dir="$work/runs/$name" > "$work/runs/$name.log" 2>&1 &
  fi
  pids+=("$!")
done < "$jobs_file"
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
# small files only (final.json, metrics.jsonl, .hydra/, the logs): never checkpoints
(cd "$work" && find runs \( -name final.json -o -name metrics.jsonl -o -name population_grid.json -o -path '*/.hydra/*' -o -name '*.log' \) -print0 \
   | tar czf "$out/runs.tgz" --null -T -)
echo "campaign: ${#pids[@]} jobs, archive $out/runs.tgz ($(du -h "$out/runs.tgz" | cut -f1)), exit $status"
exit $status
