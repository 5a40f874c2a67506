#!/bin/bash
cd /tmp/perso-digits/runs
B=/work/main/.venv-test/bin; A=/work/wt-perso-digits/.venv-test/bin
pair(){ n=$1; shift; $B/fedge simulate --baselines local --quiet --json B_$n.json "$@" >/dev/null 2>B_$n.err & $A/fedge simulate --baselines local --quiet --json A_$n.json "$@" >/dev/null 2>A_$n.err; wait; }
for s in 3 4; do pair d$s --dataset digits --seed $s; done
for s in 0 1 2; do pair d${s}_head --dataset digits --seed $s --personalization head; done
echo done
