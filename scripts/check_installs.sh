#!/usr/bin/env bash
# make check-installs: build the base, [server] and [eval] installs in throwaway venvs, check
# that none has torch, print their sizes, and score real photos with a base-only client against
# a [server]-only server, whose scores must equal the full install's (to 1e-5).
# FULL=1 also builds [all] in a fresh venv to measure it. Needs `make install` first (the full
# .venv exports the ONNX graph and scores the reference).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
FULL_VENV=.venv
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

say() { printf '\n== %s\n' "$*"; }

say "building the imgsim wheel"
$FULL_VENV/bin/python -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" . >/dev/null
wheel=$(ls "$work"/dist/imgsim-*.whl)
rm -rf build  # setuptools builds in the tree

declare -A size
variants=(base server eval)
[[ "${FULL:-0}" == 1 ]] && variants+=(all)
for v in "${variants[@]}"; do
  label="imgsim"; [[ $v != base ]] && label="imgsim[$v]"
  say "fresh venv: $label"
  $PYTHON -m venv "$work/$v"
  spec="$wheel"; [[ $v != base ]] && spec="imgsim[$v] @ file://$wheel"
  start=$(date +%s)
  "$work/$v/bin/python" -m pip install -q --disable-pip-version-check "$spec" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  if [[ $v != all ]] && "$work/$v/bin/python" -c "import torch" 2>/dev/null; then
    echo "FAIL: torch is importable in the $v install" >&2; exit 1
  fi
  size[$v]=$(du -sm "$work/$v" | cut -f1)
  echo "installed in $(( $(date +%s) - start ))s, ${size[$v]} MB; torch absent: $([[ $v == all ]] && echo n/a || echo yes)"
done
"$work/base/bin/python" - <<'PY'
import importlib.util as u
for m in ("numpy", "pandas", "pyarrow", "matplotlib", "sklearn", "PIL", "onnxruntime", "dlib",
          "imgsim_server"):
    assert u.find_spec(m) is None or m == "imgsim_server", f"{m} is in the base install"
print("base install: no numpy, pandas, pyarrow, matplotlib, scikit-learn, Pillow, onnxruntime, dlib")
import imgsim_client.aio, imgsim_client.client  # both clients work on the base install
print("base install: imgsim_client.aio and imgsim_client.client import")
PY

say "help time of the base client (5 runs)"
for _ in 1 2 3 4 5; do /usr/bin/time -f "%e s" "$work/base/bin/imgsim-client" --help >/dev/null; done 2>&1 | tr '\n' ' '; echo

say "a base client without [eval] asks for it"
printf 'image_a,image_b,label,score\na,b,1,0.9\nc,d,0,0.1\n' > "$work/s.csv"
if "$work/base/bin/imgsim-client" evaluate "$work/s.csv" 2> "$work/eval.err"; then
  echo "FAIL: evaluate ran without [eval]" >&2; exit 1
fi
grep -q 'imgsim\[eval\]' "$work/eval.err" && cat "$work/eval.err"

say "export the ONNX graph with the full install, serve it from the [server] install"
$FULL_VENV/bin/imgsim-server export --precision fp32 --output-dir "$work/onnx"  # the default model
port_of() {  # port_of LOG: wait for the server's "listening on" line, print its port
  for _ in $(seq 1 300); do
    port=$(sed -n 's/.*listening on .*:\([0-9]*\) .*/\1/p' "$1")
    [[ -n $port ]] && { echo "$port"; return; }
    sleep 0.1
  done
  cat "$1" >&2; return 1
}
"$work/server/bin/imgsim-server" --port 0 --log-level WARNING --onnx-dir "$work/onnx" \
  > "$work/server.log" 2>&1 &
light_pid=$!; pids+=($light_pid)
$FULL_VENV/bin/imgsim-server --port 0 --log-level WARNING > "$work/full.log" 2>&1 &
pids+=($!)
light=$(port_of "$work/server.log"); full=$(port_of "$work/full.log")
echo "[server] server on port $light, full server on port $full"
if "$work/server/bin/python" -c "import dlib" 2>/dev/null; then
  echo "FAIL: dlib (the [faces] extra) is in the [server] install" >&2; exit 1
fi
if grep -q torch "/proc/$light_pid/maps"; then
  echo "FAIL: the [server] server loaded torch" >&2; exit 1
fi
echo "[server] server: $(awk '/VmRSS/ {print $2/1024 " MiB"}' /proc/$light_pid/status) resident, no torch library mapped"

say "score real photos: base client -> [server] server, and full client -> full server"
photos=$($FULL_VENV/bin/python -c "from imgsim_datasets.photos import shipped_photos; print(' '.join(map(str, shipped_photos()[:12])))")
read -ra P <<< "$photos"
{ echo "image_a,image_b"; for i in $(seq 0 10); do echo "${P[$i]},${P[$((i+1))]}"; echo "${P[$i]},${P[$i]}"; done; } > "$work/pairs.csv"
"$work/base/bin/imgsim-client" "$work/pairs.csv" -o "$work/light.csv" --server "127.0.0.1:$light" --no-progress
$FULL_VENV/bin/imgsim-client "$work/pairs.csv" -o "$work/full.csv" --server "127.0.0.1:$full" --no-progress
a=$("$work/base/bin/imgsim-client" compare "${P[0]}" "${P[1]}" --server "127.0.0.1:$light")
b=$($FULL_VENV/bin/imgsim-client compare "${P[0]}" "${P[1]}" --server "127.0.0.1:$full")
echo "compare ${P[0]##*/} ${P[1]##*/}: base->[server] $a, full->full $b"
[[ $a == "$b" ]] || { echo "FAIL: compare differs" >&2; exit 1; }
"$work/base/bin/python" - "$work/light.csv" "$work/full.csv" <<'PY'
import csv, sys
light, full = ([float(r["score"]) for r in csv.DictReader(open(p))] for p in sys.argv[1:3])
diff = max(abs(x - y) for x, y in zip(light, full, strict=True))
print(f"{len(light)} pairs scored by both; largest score difference {diff:.2e}")
assert diff <= 1e-5, diff
PY

say "install sizes (fresh venvs, MB on disk, pip and setuptools included)"
printf '| install | MB |\n|---|---|\n'
for v in "${variants[@]}"; do printf '| %s | %s |\n' "imgsim${v/base/}" "${size[$v]}"; done | sed 's/imgsimserver/imgsim[server]/; s/imgsimeval/imgsim[eval]/; s/imgsimall/imgsim[all]/'
echo "check-installs: OK"
