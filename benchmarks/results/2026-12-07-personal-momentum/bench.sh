#!/bin/bash
# before = /work/main (8e443e1), after = /work/wt-perso-digits; results in runs/{B,A}_<name>.json
cd /tmp/perso-digits/runs
B=/work/main/.venv-test/bin; A=/work/wt-perso-digits/.venv-test/bin
pair(){ n=$1; shift; $B/fedge simulate --baselines local --quiet --json B_$n.json "$@" >/dev/null 2>B_$n.err & $A/fedge simulate --baselines local --quiet --json A_$n.json "$@" >/dev/null 2>A_$n.err; wait; }
for s in 0 1; do
  pair cancer$s --data ../data/cancer$s --seed $s --clients-per-round 5
  pair wine$s --data ../data/wine$s --seed $s --clients-per-round 5
done
for s in 0 1; do
  [ -f ../pre$s/model.toml ] || $A/fedge pretrain --out ../pre$s --spec /work/wt-perso-digits/models/specs/mnist-mlp-lora32.toml --seed $s > ../pre$s.log 2>&1
  pair demo$s --model ../pre$s/model.toml --data ../pre$s/clients --rounds 30 --lr 0.01 --clients-per-round 20 --strategy fedadam --seed $s
done
echo done
