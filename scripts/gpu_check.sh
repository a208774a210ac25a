#!/usr/bin/env bash
# The first thing a lent GPU runs, in one device call: every GPU test (the fused Triton kernels
# compiled for the device, against the reference loop in its own rounding), then the speed
# benchmark. Writes $OUT/gpu_tests.log, $OUT/bench.md and $OUT/bench.json; commit the bench files
# as results/bench.{md,json}.
#
#   OUT=/tmp/out scripts/gpu_check.sh [pytest args...]
set -uo pipefail
out=${OUT:-gpu_check_out}
mkdir -p "$out"
export BNRNN_GIT_REVISION=${BNRNN_GIT_REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
python -m pytest -m gpu -q -p no:cacheprovider "$@" tests 2>&1 | tee "$out/gpu_tests.log" | tail -25
tests=${PIPESTATUS[0]}
# the benchmark runs even if a test failed: its numbers say how far off a failing kernel is
python scripts/bench_rnn.py --device cuda --out "$out/bench.md"
bench=$?
echo "gpu_check: tests exit $tests, bench exit $bench; files in $out"
exit $(( tests != 0 || bench != 0 ))
