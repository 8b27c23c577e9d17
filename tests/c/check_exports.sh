#!/bin/sh
# Every exported symbol of libturbokv must be a tkv_* function declared in turbokv.h,
# and every tkv_* function declared there must be exported.
set -eu
lib=$1
header=$2
exported=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBRW]$/ {print $3}' | sort -u)
declared=$(grep -oE 'tkv_[a-z0-9_]+\(' "$header" | tr -d '(' | sort -u)
status=0
for s in $exported; do
    case "$s" in
        _init|_fini|_edata|_end|__bss_start) continue ;;
    esac
    if ! echo "$declared" | grep -qx "$s"; then
        echo "exported but not in turbokv.h: $s"
        status=1
    fi
done
for s in $declared; do
    if ! echo "$exported" | grep -qx "$s"; then
        echo "declared in turbokv.h but not exported: $s"
        status=1
    fi
done
n=$(echo "$exported" | wc -l)
if [ $status -eq 0 ]; then
    echo "exported symbols: $n tkv_* functions, all declared"
fi
exit $status
