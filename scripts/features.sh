#!/usr/bin/env bash
# `make features`: `cargo check` of every combination of the facade's features. The features
# are read from `cargo metadata`, so a new one joins the matrix by itself; a combination that
# turns on the same set as one already checked (`etcd-testing` implies `etcd`) is skipped.
# FEATURE_TARGETS picks what is checked (default: every target the combination enables).
set -euo pipefail
CARGO=${CARGO:-cargo}
read -r -a TARGETS <<<"${FEATURE_TARGETS:---all-targets}"
meta=$($CARGO metadata --format-version 1 --no-deps)
pkg='.packages[] | select(.name == "locksmith") | .features'
mapfile -t features < <(jq -r "$pkg | keys[] | select(. != \"default\")" <<<"$meta")

# The facade features each feature turns on directly (entries without `dep:` or `crate/`).
declare -A direct
for feature in "${features[@]}"; do
    direct[$feature]=$(jq -r --arg f "$feature" "$pkg | .[\$f][] | select(test(\"[:/]\") | not)" <<<"$meta" | tr '\n' ' ')
done

# Every feature the arguments turn on, sorted, comma-separated.
closure() {
    declare -A on=()
    local todo=("$@") feature
    while ((${#todo[@]})); do
        feature=${todo[0]}
        todo=("${todo[@]:1}")
        [[ -n ${on[$feature]:-} ]] && continue
        on[$feature]=1
        # shellcheck disable=SC2206
        todo+=(${direct[$feature]:-})
    done
    printf '%s\n' "${!on[@]}" | sort | paste -sd, -
}

declare -A checked
failed=()
runs=0
started=$SECONDS
for ((mask = 0; mask < 1 << ${#features[@]}; mask++)); do
    chosen=()
    for i in "${!features[@]}"; do
        ((mask >> i & 1)) && chosen+=("${features[$i]}")
    done
    set_on=$(closure "${chosen[@]}")
    [[ -n ${checked[x$set_on]:-} ]] && continue
    checked[x$set_on]=1
    runs=$((runs + 1))
    echo "features: [${set_on}]"
    # A warning fails the combination too: cfg-gated code is where unused items hide.
    if ! output=$($CARGO check -q -p locksmith --no-default-features --features "$set_on" \
        --message-format short "${TARGETS[@]}" 2>&1) || grep -q 'warning' <<<"$output"; then
        echo "$output"
        failed+=("[$set_on]")
    fi
done
echo "features: ${runs} combinations of [${features[*]}] checked in $((SECONDS - started))s"
if ((${#failed[@]})); then
    echo "features: these combinations fail: ${failed[*]}" >&2
    exit 1
fi
