#!/usr/bin/env bash
# `make test-containers`: the cluster's topology on this machine, from nothing.
#
#  1. a docker engine: the one running, else docker.io (apt, as root) and a dockerd started here
#     with its own data root, socket and no bridge (no container gets an address of its own);
#  2. the images, air-gapped: the Python base from the Debian mirror (docker/base-from-debian.sh),
#     then the MLflow and CPU images with docker/build.py --no-pull (the machine's extra CA
#     certificates and local wheel folder passed to the build only); with CUDA_IMAGE=1 the CUDA image
#     too (6.3 GB: PyPI's CUDA torch and ONNX Runtime GPU; its build checks its CUDA libraries);
#  3. the services, on 127.0.0.1 only: S3 (moto server, from .venv) and the MLflow tracking server
#     in its container (basic auth as in k8s/mlflow, backend store on a docker volume, artifacts
#     proxied to S3);
#  4. `dakd run --runner docker` of docker/tiny.yaml: every task in the CPU image (with
#     CUDA_IMAGE=1 the GPU stages in the CUDA image, as on a cluster, run on the CPU), talking HTTP to
#     both services; docker/check_container_run.py checks the table, the registry outcome on the
#     server and the records in S3;
#  5. everything started here is stopped by its PID / name and removed (images, volume, data root).
#
# Where no engine can run here (not root, no apt-get, apt-get or dockerd fails, the engine cannot
# run a container, the Debian mirror does not answer, no CPU torch wheel is reachable) it prints
# one line "SKIPPED: test-containers: <why>" and exits 0: nothing was tested. So it does where
# PROVISION_LIMIT_S is set (.ci/run sets it) and installing the engine and building the images
# take longer: a machine too loaded to provision in time. Once the images are built, every failure
# exits non-zero. SIGTERM/SIGINT (e.g. from `timeout`) clean up too.
# Knobs: NICE (niceness of dockerd, its builds and tasks; default 0), KEEP=1 (keep the engine, its
# images and the work folder for a rerun), CUDA_IMAGE=1 (above; skipped with a line saying so where
# the engine's disk has under CUDA_FREE_GB, default 30, free), PY (default .venv/bin/python), DEBIAN_MIRROR,
# TORCH_INDEX_URL (where torch comes from when no local wheel folder has it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NICE=${NICE:-0}
CUDA_FREE_GB=${CUDA_FREE_GB:-30}
WORK=$(mktemp -d /tmp/dakd-containers.XXXXXX)
DATA_ROOT=/var/lib/dakd-test-containers
T0=$SECONDS
DOCKERD_PID="" MOTO_PID="" MLFLOW_NAME="" VOLUME="" BUILT_TAGS=()

say() { echo "test-containers [$((SECONDS - T0)) s]: $*"; }

cleanup() {
    local rc=$?
    set +e
    # the MLflow server, the task containers of an interrupted run, the server's volume; a busy
    # engine has been seen to leave a killed container behind on the first try
    for _ in 1 2 3; do
        [[ -n "$MLFLOW_NAME" ]] && docker rm -f "$MLFLOW_NAME" >/dev/null 2>&1
        for image in ${CPU_IMAGE:-} ${GPU_IMAGE:-}; do
            docker ps -aq --filter "ancestor=$image" | xargs -r docker rm -f >/dev/null 2>&1
        done
        [[ -z "$VOLUME" ]] || docker volume rm "$VOLUME" >/dev/null 2>&1 && break
        sleep 2
    done
    [[ -n "$MOTO_PID" ]] && kill "$MOTO_PID" 2>/dev/null && wait "$MOTO_PID" 2>/dev/null
    if [[ -n "${KEEP:-}" ]]; then
        say "KEEP=1: left running dockerd ${DOCKERD_PID:-(not started here)}, images ${BUILT_TAGS[*]:-none}, $WORK"
        return $rc
    fi
    if [[ -n "$DOCKERD_PID" ]]; then
        kill "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$DOCKERD_PID" 2>/dev/null && { say "dockerd $DOCKERD_PID did not stop: killing it"; kill -9 "$DOCKERD_PID"; }
        rm -rf "$DATA_ROOT"  # every image, layer and container of the engine started here
        # what a stopped dockerd can leave mounted in its exec root (netns/default)
        awk -v work="$WORK/" 'index($2, work) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount
    elif ((${#BUILT_TAGS[@]})); then
        docker rmi "${BUILT_TAGS[@]}" >/dev/null 2>&1
    fi
    rm -rf "$WORK"
    return $rc
}
trap cleanup EXIT
trap 'exit 143' TERM INT  # so that the EXIT trap cleans up after `timeout` or Ctrl-C

skip() { echo "SKIPPED: test-containers: $*"; exit 0; }

PROVISION_LIMIT_S=${PROVISION_LIMIT_S:-0}  # 0: no limit
# Run one provisioning step (install, base image, image build) within what is left of
# PROVISION_LIMIT_S; exit status 124 when it ended because that time was spent.
provision() {
    ((PROVISION_LIMIT_S > 0)) || { "$@"; return; }
    local left=$((T0 + PROVISION_LIMIT_S - SECONDS)) rc=0
    ((left > 0)) || return 124
    timeout --kill-after=60 "$left" "$@" || rc=$?
    ((rc == 0 || SECONDS < T0 + PROVISION_LIMIT_S)) && return $rc
    return 124
}
over_limit() {
    skip "installing the engine and building the images took over PROVISION_LIMIT_S=$PROVISION_LIMIT_S s here" \
         "(load average $(cut -d' ' -f1-3 /proc/loadavg)): too slow a machine to test on"
}

# ---- 1. the engine ---------------------------------------------------------------------------
if docker info >/dev/null 2>&1; then
    say "using the docker engine already running"
else
    if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
        [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null \
            || skip "no docker engine and no way to install one (needs root and apt-get)"
        say "installing docker.io and debootstrap"
        { provision apt-get update -q && DEBIAN_FRONTEND=noninteractive provision apt-get install -y -q \
            --no-install-recommends docker.io debootstrap; } >"$WORK/apt.log" 2>&1 \
            || { tail -5 "$WORK/apt.log"; skip "apt-get could not install docker.io (log above)"; }
    fi
    [[ $(id -u) == 0 ]] || skip "dockerd needs root and no docker engine is running"
    export DOCKER_HOST="unix://$WORK/docker.sock"
    # no bridge, no iptables: containers use the host's network only (every service binds 127.0.0.1);
    # its own session: a signal to this script's process group (timeout, Ctrl-C) reaches the script,
    # whose cleanup stops dockerd after the containers, not dockerd first
    setsid nice -n "$NICE" dockerd --host "$DOCKER_HOST" --data-root "$DATA_ROOT" --exec-root "$WORK/exec" \
        --pidfile "$WORK/dockerd.pid" --bridge=none --iptables=false --ip-masq=false \
        >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 120); do docker info >/dev/null 2>&1 && break; kill -0 $DOCKERD_PID 2>/dev/null || break; sleep 0.5; done
    docker info >/dev/null 2>&1 || { tail -5 "$WORK/dockerd.log"; DOCKERD_PID=""; skip "dockerd could not start (log above)"; }
    say "dockerd $DOCKERD_PID started ($(docker version -f '{{.Server.Version}}'), data root $DATA_ROOT)"
fi
command -v debootstrap >/dev/null || { echo "test-containers: debootstrap is not installed" >&2; exit 1; }

# ---- 2. the images ---------------------------------------------------------------------------
BASE=dakd-test/python-base:3.11-bookworm
BUILD=(--no-pull --network host --registry dakd-test --build-arg "PYTHON_IMAGE=$BASE")
for cert in /usr/local/share/ca-certificates/*.crt /usr/local/share/ca-certificates/*/*.crt; do
    [[ -f "$cert" ]] && BUILD+=(--ca-cert "$cert")
done
WHEELS=${DAKD_WHEELS:-${PIP_FIND_LINKS:-}}
if [[ -n "$WHEELS" ]] && compgen -G "$WHEELS/torch-2.13.0*.whl" >/dev/null; then
    BUILD+=(--wheels "$WHEELS" --build-arg TORCH_INDEX_URL=)  # torch from the wheel folder only
else  # PyPI's torch is a CUDA build: without a CPU wheel here, PyTorch's CPU index must answer
    TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
    $PY -c "import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=30).read(1)" "$TORCH_INDEX_URL/torch/" 2>/dev/null \
        || skip "no CPU torch wheel here (DAKD_WHEELS, PIP_FIND_LINKS) and $TORCH_INDEX_URL does not answer"
    BUILD+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
fi
rc=0
provision nice -n "$NICE" docker/base-from-debian.sh "$BASE" || rc=$?
((rc != 124)) || over_limit
((rc != 3)) || skip "the Debian mirror does not answer (line above): no base image can be made"
((rc == 0)) || { echo "test-containers: docker/base-from-debian.sh failed (exit $rc)" >&2; exit 1; }
BUILT_TAGS+=("$BASE")
docker run --rm --network host "$BASE" true >"$WORK/run-probe.log" 2>&1 \
    || { tail -5 "$WORK/run-probe.log"; skip "the docker engine cannot run a container (log above)"; }
MLFLOW_IMAGE=$($PY docker/build.py --print-tag --variant mlflow --registry dakd-test)
CPU_IMAGE=$($PY docker/build.py --print-tag --variant cpu --registry dakd-test)
VARIANTS=(mlflow cpu) GPU_IMAGE=""
if [[ ${CUDA_IMAGE:-} == 1 ]]; then
    # the CUDA build holds its dependency stage (6.6 GB) and the final image (6.3 GB) beside the
    # others, plus pip's downloads while it installs: without the room, test the rest
    root=$(docker info -f '{{.DockerRootDir}}')
    free_gb=$(df -P -k "$root" 2>/dev/null | awk 'NR == 2 {print int($4 / 1048576)}')
    if ((${free_gb:-0} >= CUDA_FREE_GB)); then
        VARIANTS+=(cuda)
        GPU_IMAGE=$($PY docker/build.py --print-tag --variant cuda --registry dakd-test)
    else
        echo "SKIPPED: CUDA image: ${free_gb:-?} GB free under $root, it needs $CUDA_FREE_GB (CUDA_FREE_GB); the GPU stages run in the CPU image"
    fi
fi
for variant in "${VARIANTS[@]}"; do
    start=$SECONDS rc=0
    provision nice -n "$NICE" $PY docker/build.py "${BUILD[@]}" --variant $variant >"$WORK/build-$variant.log" 2>&1 \
        || rc=$?
    ((rc != 124)) || over_limit
    ((rc == 0)) || { tail -30 "$WORK/build-$variant.log"; echo "test-containers: building the $variant image failed" >&2; exit 1; }
    case $variant in cpu) tag=$CPU_IMAGE ;; cuda) tag=$GPU_IMAGE ;; *) tag=$MLFLOW_IMAGE ;; esac
    BUILT_TAGS+=("$tag")
    say "$tag built in $((SECONDS - start)) s, $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.2f GB", $1/1e9}')"
done
grep -h "^cpu_torchvision:" "$WORK/build-cpu.log" || true
grep -h "^check_cuda_image:" "$WORK/build-cuda.log" 2>/dev/null || true
docker run --rm --network host "$CPU_IMAGE" python -c "import timm, torchvision; print('bare import timm:', timm.__version__, 'torchvision', torchvision.__version__)"

# ---- 3. the services -------------------------------------------------------------------------
free_port() { $PY -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
S3_PORT=$(free_port)
"$(dirname "$PY")/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
export AWS_ACCESS_KEY_ID=test-containers AWS_SECRET_ACCESS_KEY=$($PY -c "import secrets; print(secrets.token_hex(16))")
export AWS_DEFAULT_REGION=us-east-1 AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT"
export MLFLOW_S3_ENDPOINT_URL=$AWS_ENDPOINT_URL
BUCKET=dakd-test
for _ in $(seq 60); do
    $PY -c "import boto3; boto3.client('s3').create_bucket(Bucket='$BUCKET')" 2>/dev/null && break; sleep 0.5
done
$PY -c "import boto3; boto3.client('s3').head_bucket(Bucket='$BUCKET')"
say "S3 (moto, pid $MOTO_PID) on $AWS_ENDPOINT_URL, bucket $BUCKET"

MLFLOW_PORT=$(free_port)
export MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT" MLFLOW_TRACKING_USERNAME=admin
export MLFLOW_TRACKING_PASSWORD=$($PY -c "import secrets; print(secrets.token_urlsafe(24))")
export MLFLOW_AUTH_ADMIN_USERNAME=$MLFLOW_TRACKING_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD=$MLFLOW_TRACKING_PASSWORD
export MLFLOW_FLASK_SERVER_SECRET_KEY=$($PY -c "import secrets; print(secrets.token_hex(24))")
mkdir -p "$WORK/auth" && chmod 755 "$WORK" "$WORK/auth"
cat >"$WORK/auth/basic_auth.ini" <<EOF
[mlflow]
default_permission = READ
database_uri = sqlite:////home/mlflow/basic_auth.db
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
EOF
VOLUME=dakd-test-mlflow-$$
MLFLOW_NAME=dakd-test-mlflow-$$
docker volume create "$VOLUME" >/dev/null
# as k8s/mlflow/mlflow.yaml, with sqlite on the volume for PostgreSQL; secrets pass by name (-e NAME).
# One worker: uvicorn's supervisor of several kills a worker that misses a 5 s health ping, which on
# two busy cores happened to every new worker in turn while a task's artifact upload retried.
docker run -d --name "$MLFLOW_NAME" --network host --user 1000:1000 \
    -v "$VOLUME:/home/mlflow" -v "$WORK/auth:/etc/mlflow:ro" \
    -e MLFLOW_AUTH_CONFIG_PATH=/etc/mlflow/basic_auth.ini -e HOME=/tmp -e MLFLOW_DISABLE_TELEMETRY=true \
    -e MLFLOW_AUTH_ADMIN_USERNAME -e MLFLOW_AUTH_ADMIN_PASSWORD -e MLFLOW_FLASK_SERVER_SECRET_KEY \
    -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY -e AWS_DEFAULT_REGION -e AWS_ENDPOINT_URL -e MLFLOW_S3_ENDPOINT_URL \
    "$MLFLOW_IMAGE" mlflow server --app-name=basic-auth --host=127.0.0.1 --port="$MLFLOW_PORT" --workers=1 \
    --backend-store-uri=sqlite:////home/mlflow/mlflow.db --serve-artifacts \
    --artifacts-destination="s3://$BUCKET/mlartifacts" \
    --allowed-hosts="127.0.0.1:$MLFLOW_PORT,localhost:$MLFLOW_PORT" >/dev/null
for _ in $(seq 300); do  # about 20 s on an idle machine; minutes on a loaded one
    $PY -c "import urllib.request as u; u.urlopen('$MLFLOW_TRACKING_URI/health', timeout=2)" 2>/dev/null && break
    [[ $(docker inspect -f '{{.State.Running}}' "$MLFLOW_NAME") == true ]] || break
    sleep 0.5
done
$PY -c "import urllib.request as u; u.urlopen('$MLFLOW_TRACKING_URI/health', timeout=5)" 2>/dev/null \
    || { docker logs --tail 30 "$MLFLOW_NAME"; echo "test-containers: the MLflow server did not come up" >&2; exit 1; }
say "MLflow server (container $MLFLOW_NAME, basic auth) on $MLFLOW_TRACKING_URI"

# ---- 4. the pipeline, every task in a container ----------------------------------------------
OUT=$WORK/out
start=$SECONDS
DAKD_CPU_IMAGE=$CPU_IMAGE DAKD_IMAGE=${GPU_IMAGE:-$CPU_IMAGE} OMP_NUM_THREADS=1 MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1 \
    nice -n "$NICE" $PY -m dakd_core run --runner docker --config docker/tiny.yaml --out "$OUT" \
    --store "s3://$BUCKET/store" --run-name containers \
    || { tail -40 "$OUT/logs/containers.log" 2>/dev/null; echo "test-containers: the pipeline run failed" >&2; exit 1; }
say "pipeline in containers: $((SECONDS - start)) s"
$PY docker/check_container_run.py "$OUT" containers "s3://$BUCKET/store" "$([[ -n $GPU_IMAGE ]] && echo cuda || echo cpu)"
say "PASSED"
