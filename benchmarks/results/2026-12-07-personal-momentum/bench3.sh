#!/bin/bash
# make demo's commands on seeds 2-5, after the change (README's seeds table)
cd /tmp/perso-digits/runs; A=/work/wt-perso-digits/.venv-test/bin
one(){ s=$1; [ -f ../pre$s/model.toml ] || $A/fedge pretrain --out ../pre$s --spec /work/wt-perso-digits/models/specs/mnist-mlp-lora32.toml --seed $s > ../pre$s.log 2>&1
  $A/fedge simulate --baselines local,central --quiet --json A_demo$s.json --model ../pre$s/model.toml --data ../pre$s/clients --rounds 30 --lr 0.01 --clients-per-round 20 --strategy fedadam --seed $s >/dev/null 2>A_demo$s.err; }
one 2 & one 3; wait; one 4 & one 5; wait; echo done
