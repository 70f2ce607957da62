# The reference grid's data, sourced by reference_grid.sh and demo_encoder_grid.sh (needs FC and DATA): the
# synthetic files (made once) and COMMON, the extract options every cache of the grid shares.
synth() { [ -f "$1" ] || "$FC" synth "$1" --n "$2" --seed "$3" "${@:4}"; }
synth "$DATA/train-n100000-s201.h5" 100000 201 --noise-free --workers 2
synth "$DATA/val-n1000-s202.h5" 1000 202 --noise-free
synth "$DATA/test-n1000-s203.h5" 1000 203 --noise-free

SPLITS=(--data "train=$DATA/train-n100000-s201.h5" --data "val=$DATA/val-n1000-s202.h5"
        --data "test=$DATA/test-n1000-s203.h5")
COMMON=("${SPLITS[@]}" --mask quantile:0.85 --noise-level 1.0 --noise-seed 42)
