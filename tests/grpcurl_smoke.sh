#!/usr/bin/env bash
# Smoke test of the whole stack as a user sees it: `paligemma up` on the bundled model, driven
# only by grpcurl through server reflection (no .proto files), plus the Python example client.
# Bounded: every wait has a limit, and the stack is stopped with SIGINT at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${PALIGEMMA_BIN:-target/debug/paligemma}
PORT=${PALIGEMMA_SMOKE_PORT:-50151}
ADDR=127.0.0.1:$PORT
WORK=$(mktemp -d)
LOG=$WORK/up.log
fail() { echo "SMOKE FAIL: $*" >&2; echo "--- up log:" >&2; cat "$LOG" >&2 || true; exit 1; }

"$BIN" up --listen "$ADDR" >"$LOG" 2>&1 &
UP_PID=$!
trap 'kill -INT $UP_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT

for _ in $(seq 1 150); do
  if grpcurl -plaintext -max-time 2 "$ADDR" grpc.health.v1.Health/Check 2>/dev/null | grep '"SERVING"' >/dev/null; then break; fi
  kill -0 $UP_PID 2>/dev/null || fail "paligemma up exited"
  sleep 0.2
done
health=$(grpcurl -plaintext "$ADDR" grpc.health.v1.Health/Check) || fail "gateway health call"
grep -q '"SERVING"' <<<"$health" || fail "gateway never became healthy"

echo "== services by reflection"
grpcurl -plaintext "$ADDR" list | tee "$WORK/list.txt"
grep -qx "paligemma.v1.PaliGemma" "$WORK/list.txt" || fail "PaliGemma service not listed"
grep -qx "grpc.health.v1.Health" "$WORK/list.txt" || fail "health service not listed"
grpcurl -plaintext "$ADDR" describe paligemma.v1.PaliGemma.Generate >"$WORK/describe.txt" || fail "describe failed"

echo "== health of each tier"
for tier in vision decoder; do
  tier_addr=$(grep -oE "$tier tier +on [0-9.:]+" "$LOG" | grep -oE '[0-9.]+:[0-9]+$' | head -1)
  [ -n "$tier_addr" ] || fail "no $tier address in the up log"
  health=$(grpcurl -plaintext "$tier_addr" grpc.health.v1.Health/Check) || fail "$tier tier health call"
  grep -q '"SERVING"' <<<"$health" || fail "$tier tier not serving"
  services=$(grpcurl -plaintext "$tier_addr" list) || fail "$tier tier list"
  grep -q "paligemma.v1" <<<"$services" || fail "$tier tier reflection"
done
health=$(grpcurl -plaintext -d '{"service":"paligemma.v1.PaliGemma"}' "$ADDR" grpc.health.v1.Health/Check) \
  || fail "per-service health call"
grep -q '"SERVING"' <<<"$health" || fail "per-service health"

echo "== ListModels"
grpcurl -plaintext "$ADDR" paligemma.v1.PaliGemma/ListModels | tee "$WORK/models.json"
grep -q '"numImageTokens": 16' "$WORK/models.json" || fail "ListModels"

echo "== GenerateUnary with an image"
printf '{"image":"%s","prompt":"caption en","max_new_tokens":8}' "$(base64 -w0 tests/fixtures/images/photo.jpg)" > "$WORK/req.json"
grpcurl -plaintext -d @ "$ADDR" paligemma.v1.PaliGemma/GenerateUnary < "$WORK/req.json" | tee "$WORK/unary.json"
python3 - "$WORK/unary.json" <<'PY' || fail "unary tokens differ from the transformers reference"
import json, sys
got = json.load(open(sys.argv[1]))
want = json.load(open("tests/fixtures/reference/pg1-32.json"))["tokens"][:8]
assert got["tokenIds"] == want, (got["tokenIds"], want)
assert got["finishReason"] == "FINISH_REASON_LENGTH", got["finishReason"]
PY

echo "== Generate (server streaming)"
grpcurl -plaintext -d @ "$ADDR" paligemma.v1.PaliGemma/Generate < "$WORK/req.json" > "$WORK/stream.txt"
grep -q FINISH_REASON_LENGTH "$WORK/stream.txt" || fail "stream has no finish reason"

echo "== Detect returns structured objects and the raw text"
printf '{"image":"%s","labels":["house","sun"],"max_new_tokens":12}' "$(base64 -w0 tests/fixtures/images/photo.jpg)" > "$WORK/detect.json"
grpcurl -plaintext -d @ "$ADDR" paligemma.v1.PaliGemma/Detect < "$WORK/detect.json" > "$WORK/detect.out" || fail "Detect"
grep -q '"rawText"' "$WORK/detect.out" || fail "Detect response has no rawText: $(cat "$WORK/detect.out")"

echo "== bad input is INVALID_ARGUMENT naming the field"
if grpcurl -plaintext -d '{"prompt":"caption en"}' "$ADDR" paligemma.v1.PaliGemma/GenerateUnary > "$WORK/bad.txt" 2>&1; then
  fail "empty image accepted"
fi
grep -q "InvalidArgument" "$WORK/bad.txt" && grep -q "image" "$WORK/bad.txt" || fail "empty image error: $(cat "$WORK/bad.txt")"

if python3 -c "import grpc_tools" 2>/dev/null; then
  echo "== Python example client"
  python3 examples/python/client.py --address "$ADDR" --image tests/fixtures/images/photo.jpg --max-new-tokens 8 \
    || fail "python client"
fi

echo "== Ctrl-C stops the stack cleanly"
kill -INT $UP_PID
for _ in $(seq 1 100); do kill -0 $UP_PID 2>/dev/null || break; sleep 0.1; done
if kill -0 $UP_PID 2>/dev/null; then fail "still running 10 s after SIGINT"; fi
wait $UP_PID || fail "paligemma up exited non-zero after SIGINT"
trap 'rm -rf "$WORK"' EXIT
echo "1 passed, 0 failed"
