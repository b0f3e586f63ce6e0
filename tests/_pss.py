"""The "restricted" Pod Security Standard as a pure function over a pod spec (no cluster needed).

The controls and their allowed values are those of
https://kubernetes.io/docs/concepts/security/pod-security-standards/ (restricted includes every
baseline control), as the Pod Security admission controller applies them at version `latest`.
Each violation names the field, so a failing test says what to fix.
"""

from __future__ import annotations

# Where each workload kind keeps its pod template.
POD_SPEC_PATHS = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}

# Baseline: capabilities a container may add (restricted narrows it to NET_BIND_SERVICE).
RESTRICTED_ADD_CAPABILITIES = {"NET_BIND_SERVICE"}
BASELINE_SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
BASELINE_SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
# Restricted: the only volume sources allowed (hostPath, nfs, the in-tree cloud disks... are not).
RESTRICTED_VOLUME_SOURCES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}
SECCOMP_CONFINED = {"RuntimeDefault", "Localhost"}
APPARMOR_TYPES = {"RuntimeDefault", "Localhost"}


def pod_templates(docs: list[dict]) -> list[tuple[str, dict]]:
    """(`Kind/name`, pod template {metadata, spec}) of every workload in rendered manifests."""
    found = []
    for doc in docs:
        path = POD_SPEC_PATHS.get(doc.get("kind"))
        if path is None:
            continue
        node = doc
        for key in path:
            node = node[key]
        found.append((f"{doc['kind']}/{doc['metadata']['name']}", node))
    return found


def _containers(spec: dict) -> list[tuple[str, dict]]:
    return [(f"{kind}[{c.get('name', i)}]", c)
            for kind in ("initContainers", "containers", "ephemeralContainers")
            for i, c in enumerate(spec.get(kind) or [])]


def restricted_violations(template: dict) -> list[str]:
    """Every control of the restricted profile the pod template breaks ([] = admitted)."""
    meta, spec = template.get("metadata") or {}, template["spec"]
    pod_sc = spec.get("securityContext") or {}
    containers = _containers(spec)
    bad: list[str] = []

    # --- baseline
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            bad.append(f"spec.{field} must be false")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        bad.append("spec.securityContext.windowsOptions.hostProcess must be false")
    for name, value in (meta.get("annotations") or {}).items():
        if name.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                value == "runtime/default" or value.startswith("localhost/")):
            bad.append(f"annotation {name}={value}: AppArmor must be runtime/default or localhost/*")
    bad += _selinux("spec.securityContext", pod_sc)
    bad += _apparmor("spec.securityContext", pod_sc)
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in BASELINE_SAFE_SYSCTLS:
            bad.append(f"spec.securityContext.sysctls: {sysctl.get('name')} is not a safe sysctl")

    # --- restricted: volumes
    for vol in spec.get("volumes") or []:
        sources = set(vol) - {"name"}
        if not sources <= RESTRICTED_VOLUME_SOURCES:
            bad.append(f"spec.volumes[{vol.get('name')}]: volume type {sorted(sources)} is not allowed")

    # --- restricted: identity and seccomp at pod level (containers may set them instead)
    if pod_sc.get("runAsNonRoot") is False:
        bad.append("spec.securityContext.runAsNonRoot must not be false")
    if pod_sc.get("runAsUser") == 0:
        bad.append("spec.securityContext.runAsUser must not be 0")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_CONFINED:
        bad.append(f"spec.securityContext.seccompProfile.type must be RuntimeDefault or Localhost, not {pod_seccomp}")

    for where, c in containers:
        sc = c.get("securityContext") or {}
        at = f"spec.{where}.securityContext"
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            bad.append(f"{at}.windowsOptions.hostProcess must be false")
        if sc.get("privileged"):
            bad.append(f"{at}.privileged must be false")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                bad.append(f"spec.{where}.ports: hostPort {port['hostPort']} is not allowed")
        bad += _selinux(at, sc)
        bad += _apparmor(at, sc)
        if sc.get("procMount", "Default") != "Default":
            bad.append(f"{at}.procMount must be Default")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{at}.allowPrivilegeEscalation must be false")
        # runAsNonRoot: true on the container, or true on the pod and not false on the container
        non_root = sc.get("runAsNonRoot")
        if non_root is False or (non_root is None and pod_sc.get("runAsNonRoot") is not True):
            bad.append(f"{at}.runAsNonRoot must be true (here or in spec.securityContext)")
        if sc.get("runAsUser") == 0:
            bad.append(f"{at}.runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in SECCOMP_CONFINED:
            bad.append(f"{at}.seccompProfile.type must be RuntimeDefault or Localhost, not {seccomp}")
        elif seccomp is None and pod_seccomp is None:
            bad.append(f"{at}.seccompProfile: RuntimeDefault or Localhost must be set here or in spec.securityContext")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad.append(f"{at}.capabilities.drop must include ALL")
        added = set(caps.get("add") or []) - RESTRICTED_ADD_CAPABILITIES
        if added:
            bad.append(f"{at}.capabilities.add may only hold NET_BIND_SERVICE, not {sorted(added)}")
    return bad


def _selinux(at: str, sc: dict) -> list[str]:
    opts = sc.get("seLinuxOptions") or {}
    bad = [f"{at}.seLinuxOptions.{key} must be unset" for key in ("user", "role") if opts.get(key)]
    if opts.get("type", "") not in BASELINE_SELINUX_TYPES:
        bad.append(f"{at}.seLinuxOptions.type {opts['type']} is not allowed")
    return bad


def _apparmor(at: str, sc: dict) -> list[str]:
    kind = (sc.get("appArmorProfile") or {}).get("type")
    if kind is not None and kind not in APPARMOR_TYPES:
        return [f"{at}.appArmorProfile.type must be RuntimeDefault or Localhost, not {kind}"]
    return []
