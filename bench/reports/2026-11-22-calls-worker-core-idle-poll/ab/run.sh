#!/bin/bash
# Interleaved A/B: the relay core's PM QoS resume latency left at "0" (no
# constraint) against "n/a" (the idle loop polls instead of halting).
set -u
F=/sys/devices/system/cpu/cpu0/power/pm_qos_resume_latency_us
B=${BENCH:-target/release/whelm-bench}
OUT=${OUT:-ab}
restore() { echo 0 > $F; }
trap restore EXIT
for round in 1 2 3 4; do
  for mode in default poll; do
    if [ $mode = poll ]; then echo n/a > $F; else echo 0 > $F; fi
    echo "round $round mode $mode qos=$(cat $F)"
    timeout 600 $B calls --calls 100 --rate 20000,200000 --duration 5 --warmup 1 --repeat 1 \
      --engine both --out $OUT/$mode-$round > $OUT/$mode-$round.log 2>&1
    restore
  done
done
