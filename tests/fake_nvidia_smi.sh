#!/bin/sh
# A FAKE nvidia-smi: it makes this machine look like a GPU machine to mltrain's tests (no GPU is here).
# Install it as `nvidia-smi` in a folder put first on PATH (local, the SSH test host, ...).
# FAKE_GPUS (default 2) devices "NVIDIA H200", 143771 MiB, driver 550.54.15, CUDA 12.4.
# Understands: -L; --query-gpu=FIELDS --format=csv,noheader[,nounits]; no arguments (the header).
n=${FAKE_GPUS:-2}
name="NVIDIA H200"; memory=143771; driver="550.54.15"; cuda="12.4"
case "$1" in
  -L)
    i=0
    while [ "$i" -lt "$n" ]; do echo "GPU $i: $name (UUID: GPU-fake-$i)"; i=$((i + 1)); done ;;
  --query-gpu=*)
    fields=${1#--query-gpu=}
    i=0
    while [ "$i" -lt "$n" ]; do
      line=""
      for f in $(echo "$fields" | tr ',' ' '); do
        case "$f" in
          index) v=$i ;; name) v=$name ;; memory.total) v=$memory ;; driver_version) v=$driver ;;
          uuid) v="GPU-fake-$i" ;; *) v="[N/A]" ;;
        esac
        line="${line:+$line, }$v"
      done
      echo "$line"
      i=$((i + 1))
    done ;;
  "")
    echo "+-----------------------------------------------------------------------------------------+"
    echo "| NVIDIA-SMI $driver             Driver Version: $driver     CUDA Version: $cuda     |"
    echo "+-----------------------------------------------------------------------------------------+" ;;
  *) echo "fake nvidia-smi: unsupported arguments: $*" >&2; exit 2 ;;
esac
