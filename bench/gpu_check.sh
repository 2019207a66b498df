#!/usr/bin/env bash
# GPU check, run once on a rented CUDA machine from the repository root (needs nothing outside the repo,
# no network, no pip install): the machine, the gpu-marked test(s), then bench/bench_gpu.py.
#
#   bash bench/gpu_check.sh            # or: make bench-gpu
#
# Files land in $OUT (default bench/out/gpu): gpu_check.log (everything below), pytest.log,
# bench_gpu.json, gpu_section.md, summary.txt. A failing test does not stop the benchmark; the exit
# status is non-zero when either failed. Env: PYTHON (default python3), BENCH_GPU_ARGS (extra
# bench_gpu.py options), PYTEST_TIMEOUT_S (default 150), BENCH_TIMEOUT_S (default 330).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-bench/out/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
export PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec > >(tee "$OUT/gpu_check.log") 2>&1
tee_pid=$!

section() { printf '\n===== %s (%s) =====\n' "$1" "$(date -u +%H:%M:%S)"; }
started=$SECONDS

section "nvidia-smi"
nvidia-smi || echo "nvidia-smi failed or is absent (rc $?)"

section "python / torch"
"$PY" - <<'EOF' || echo "python/torch check failed (rc $?)"
import platform, sys
import torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "| CUDA build", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version())
print("torch.cuda.is_available():", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device 0:", torch.cuda.get_device_name(0), "| capability", torch.cuda.get_device_capability(0),
          "| bf16", torch.cuda.is_bf16_supported(), "| devices", torch.cuda.device_count())
EOF
cuda=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' || echo 0)

# tests/conftest.py's autouse fixture imports mlflow at teardown (absent here): --noconftest.
# -o timeout applies when pytest-timeout is installed, else pytest only warns about the option.
section "pytest -m gpu tests/unit/test_train.py"
set +e
timeout --kill-after=10 "${PYTEST_TIMEOUT_S:-150}" "$PY" -m pytest --noconftest -p no:cacheprovider \
    -o addopts="" -o timeout=120 -m gpu -v -rA tests/unit/test_train.py 2>&1 | tee "$OUT/pytest.log"
pytest_rc=${PIPESTATUS[0]}
set -e
echo "pytest exit status: $pytest_rc"

section "bench/bench_gpu.py"
if [[ "$cuda" == 1 ]]; then
    bench_cmd=("$PY" -m bench.bench_gpu --device cuda --json "$OUT/bench_gpu.json" --markdown "$OUT/gpu_section.md")
    # shellcheck disable=SC2206
    bench_cmd+=(${BENCH_GPU_ARGS:-})
    echo "+ ${bench_cmd[*]}"
    set +e
    timeout --kill-after=10 "${BENCH_TIMEOUT_S:-330}" "${bench_cmd[@]}"
    bench_rc=$?
    set -e
else
    echo "no CUDA device visible to torch: bench_gpu.py not run"
    bench_rc=1
fi
echo "bench exit status: $bench_rc"

section "summary"
tests_line=$(grep -E '^=+ .*(passed|failed|skipped|error|no tests ran).* =+$' "$OUT/pytest.log" | tail -1 || true)
{
    echo "cuda_available=$cuda"
    echo "pytest_rc=$pytest_rc"
    echo "pytest_result=${tests_line:-unknown}"
    echo "bench_rc=$bench_rc"
    echo "wall_seconds=$((SECONDS - started))"
} | tee "$OUT/summary.txt"
ls -l "$OUT"
status=0
[[ $pytest_rc -eq 0 && $bench_rc -eq 0 ]] || status=1
exec >&- 2>&-  # let tee see EOF and finish gpu_check.log before $OUT is collected
wait "$tee_pid" 2>/dev/null || true
exit "$status"
