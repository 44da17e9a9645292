"""Command line: ``pullmedic diagnose IMAGE`` probes a registry the way a node would.

Exit codes are for scripts: 0 the image is pullable, 1 a failure was diagnosed, 2 usage
error. Subcommands live in argparse subparsers so more (``run``) can be added beside
``diagnose``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pullmedic.app import explain, flags, nodecreds, runner
from pullmedic.app.options import context_namespace, probe_config
from pullmedic.core.diagnosis import Cause, Diagnosis
from pullmedic.core.dockerconfig import (
    DOCKERCFG_KEY,
    DOCKERCFG_TYPE,
    DOCKERCONFIGJSON_KEY,
    DOCKERCONFIGJSON_TYPE,
    PullSecret,
    SecretProblem,
)
from pullmedic.core.keyring import Keyring
from pullmedic.core.platforms import Platform
from pullmedic.core.tokenmode import PodIdentity
from pullmedic.probe.netguard import AddressPolicy

EXIT_OK = 0
EXIT_DIAGNOSED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad arguments or unreadable input files (exit code 2)."""


def _pull_secret_from_file(path: str) -> PullSecret:
    """Read a Kubernetes Secret (JSON) or a docker config file as a PullSecret.

    A docker config becomes a secret named after the file, so evidence can say which
    file's credentials were used.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read pull secret file {path}: {exc.strerror}") from None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if isinstance(doc, dict) and doc.get("kind") == "Secret":
        meta_raw, data_raw = doc.get("metadata"), doc.get("data")
        meta: dict[str, object] = meta_raw if isinstance(meta_raw, dict) else {}
        data: dict[str, object] = data_raw if isinstance(data_raw, dict) else {}
        return PullSecret(
            namespace=str(meta.get("namespace") or "default"),
            name=str(meta.get("name") or Path(path).name),
            type=str(doc.get("type") or ""),
            data={str(k): v for k, v in data.items() if isinstance(v, str)},
        )
    bare = isinstance(doc, dict) and not any(str(k).lower() == "auths" for k in doc)
    encoded = base64.b64encode(raw).decode()
    if bare:
        return PullSecret("file", path, DOCKERCFG_TYPE, {DOCKERCFG_KEY: encoded})
    return PullSecret("file", path, DOCKERCONFIGJSON_TYPE, {DOCKERCONFIGJSON_KEY: encoded})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pullmedic", description="Find the real cause of image pull failures."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    diag = sub.add_parser("diagnose", help="probe the registry for one image")
    diag.add_argument("image", help="image reference as written in the pod spec")
    diag.add_argument(
        "--pull-secret",
        action="append",
        default=[],
        metavar="FILE",
        help="docker config.json or Kubernetes Secret JSON (repeatable)",
    )
    diag.add_argument(
        "--candidate-secret",
        action="append",
        default=[],
        metavar="FILE",
        help="secret that may be proposed as a fix if it grants pull (repeatable)",
    )
    diag.add_argument("--platform", default="linux/amd64", help="node platform (os/arch[/v])")
    diag.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST",
        help="host[:port] spoken to over plain http (repeatable)",
    )
    diag.add_argument(
        "--allow-address",
        action="append",
        default=[],
        metavar="CIDR|HOST",
        help="admit a private/loopback network or host name (repeatable)",
    )
    nodecreds.add_arguments(diag)
    diag.add_argument(
        "--service-account",
        metavar="NAMESPACE/NAME",
        help="the pod's ServiceAccount, for credential providers in ServiceAccount token "
        "mode (KEP-4412): its token is minted with your kubeconfig (TokenRequest) and its "
        "annotations read, as the kubelet does; without it such a provider says it needs one",
    )
    diag.add_argument(
        "--kubeconfig",
        help="kubeconfig for --service-account (default: $KUBECONFIG, ~/.kube/config)",
    )
    diag.add_argument("--no-suggest", action="store_true", help="do not look for fixes")
    diag.add_argument("--json", action="store_true", help="print the diagnosis as JSON")
    diag.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="per-request timeout"
    )
    diag.add_argument(
        "--quota-reserve",
        type=flags.quota_reserve,
        default=0.2,
        metavar="FRACTION",
        help="no manifest GETs while a registry's quota is at or below this fraction",
    )
    diag.set_defaults(func=cmd_diagnose)

    aud = sub.add_parser(
        "audit", help="would the images of running workloads still pull for a new pod?"
    )
    scope = aud.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", help="one namespace (default: the context's)")
    scope.add_argument("-A", "--all-namespaces", action="store_true")
    aud.add_argument("--kubeconfig", help="kubeconfig (default: $KUBECONFIG, ~/.kube/config)")
    aud.add_argument("--platform", default="linux/amd64", help="node platform (os/arch[/v])")
    aud.add_argument("--insecure-registry", action="append", default=[], metavar="HOST")
    aud.add_argument("--allow-address", action="append", default=[], metavar="CIDR|HOST")
    nodecreds.add_arguments(aud)
    aud.add_argument("--json", action="store_true", help="one JSON object per image")
    aud.add_argument("--timeout", type=float, default=10.0, metavar="S")
    aud.add_argument("--quota-reserve", type=flags.quota_reserve, default=0.2, metavar="FRACTION")
    aud.set_defaults(func=cmd_audit)

    explain.add_parser(sub)

    run = sub.add_parser("run", help="run the operator (watch pods, heal under policies)")
    flags.add_arguments(run)
    run.set_defaults(func=cmd_run)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    try:
        settings = runner.settings_from(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return runner.run(settings)


def _render(d: Diagnosis) -> str:
    lines = [
        f"Image:      {d.image}",
        f"Cause:      {d.cause} (confidence {d.confidence})",
        f"Summary:    {d.summary}",
    ]
    if d.digest:
        lines.append(f"Digest:     {d.digest}")
    for key, value in d.details.items():
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        lines.append(f"  {key}: {value}")
    if d.evidence:
        lines.append("Evidence:")
        lines.extend(f"  - {e.line()}" for e in d.evidence)
    if d.fix is not None:
        lines.append(f"Suggested fix: {d.fix.line()}")
    return "\n".join(lines)


def _keyring(files: Sequence[str]) -> tuple[Keyring, list[SecretProblem]]:
    return Keyring.from_secrets([_pull_secret_from_file(f) for f in files])


def _node(args: argparse.Namespace) -> nodecreds.NodeSettings:
    try:
        return nodecreds.settings_from(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _service_account(value: str | None) -> PodIdentity | None:
    """``--service-account NAMESPACE/NAME``: a pod to be, not bound to an existing one."""
    if not value:
        return None
    ns, sep, name = value.partition("/")
    if not sep or not ns or not name or "/" in name:
        raise UsageError("--service-account: expected NAMESPACE/NAME")
    return PodIdentity(ns, name)


def cmd_diagnose(args: argparse.Namespace) -> int:
    """Run one diagnosis and print it; the exit code says pullable (0) or not (1)."""
    try:
        platform = Platform.parse(args.platform)
    except ValueError as exc:
        raise UsageError(f"--platform: {exc}") from None
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    try:
        policy = AddressPolicy(tuple(args.allow_address))
    except ValueError as exc:
        raise UsageError(f"--allow-address: {exc}") from None
    keyring, problems = _keyring(args.pull_secret)
    candidates: dict[str, Keyring] = {}
    for path in args.candidate_secret:
        secret = _pull_secret_from_file(path)
        kr, _ = Keyring.from_secrets([secret])
        candidates[secret.ref] = kr
    config = probe_config(args, policy)
    node = _node(args)
    who = _service_account(args.service_account)

    async def run() -> Diagnosis:
        kube = None
        if who is not None and nodecreds.uses_token_mode(node):
            from pullmedic.kube.client import RestKube, Timeouts

            kube = RestKube(runner.api_client(args.kubeconfig, Timeouts(), 2), workers=2)
        prober = nodecreds.build_diagnoser(config, node, kube)
        try:
            return await prober.diagnose(
                args.image,
                keyring,
                platform,
                suggest=not args.no_suggest,
                candidate_keyrings=candidates or None,
                secret_problems=problems,
                pod=who,
            )
        finally:
            await prober.aclose()
            if kube is not None:
                kube.close()

    diagnosis = asyncio.run(run())
    if args.json:
        print(json.dumps(diagnosis.to_dict(), indent=2, sort_keys=True))
    else:
        print(_render(diagnosis))
        for problem in problems:
            print(f"warning: {problem.secret}: {problem.reason}", file=sys.stderr)
    return EXIT_OK if diagnosis.cause is Cause.ImageAvailable else EXIT_DIAGNOSED


def cmd_audit(args: argparse.Namespace) -> int:
    """Check every workload template image once, with the credentials a new pod would
    have (read with your kubeconfig); exit 1 when any would not pull."""
    from kubernetes import config as kconfig

    from pullmedic.control.audit import Auditor, AuditSettings
    from pullmedic.kube.client import RestKube, Timeouts
    from pullmedic.kube.lookups import Lookups

    try:
        platform = Platform.parse(args.platform)
        addresses = AddressPolicy(tuple(args.allow_address))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    namespace = None if args.all_namespaces else args.namespace
    if namespace is None and not args.all_namespaces:
        try:
            namespace = context_namespace(args.kubeconfig)
        except (kconfig.ConfigException, OSError) as exc:
            raise UsageError(f"kubeconfig: {exc}") from None
    probe = probe_config(args, addresses)
    node = _node(args)

    async def run() -> list[dict[str, str]]:
        kube = RestKube(runner.api_client(args.kubeconfig, Timeouts(), 4), workers=4)
        prober = nodecreds.build_diagnoser(probe, node)
        try:
            auditor = Auditor(
                kube,
                prober,
                Lookups(kube, str(platform)),
                AuditSettings(checks_per_host=1_000_000, period=0.0, platform=str(platform)),
            )
            items = await auditor.workloads(None if namespace is None else [namespace])
            await auditor.run((i, None) for i in items)
            return [
                {k: str(v) for k, v in auditor.findings[i.key].entry().items()}
                | {
                    "namespace": i.workload.namespace,
                    "status": _status(auditor.findings[i.key].cause),
                }
                for i in items
                if i.key in auditor.findings
            ]
        finally:
            await prober.aclose()
            kube.close()

    try:
        rows = asyncio.run(run())
    except Exception as exc:  # the API said no, or could not be reached
        print(f"pullmedic: audit failed: {exc}", file=sys.stderr)
        return EXIT_DIAGNOSED
    if args.json:
        for r in rows:
            print(json.dumps(r, sort_keys=True))
    else:
        print(_table(rows))
    return EXIT_OK if all(r["status"] == "OK" for r in rows) else EXIT_DIAGNOSED


def _status(cause: str) -> str:
    return "OK" if cause == str(Cause.ImageAvailable) else "WOULD-FAIL"


def _table(rows: list[dict[str, str]]) -> str:
    cols = ("namespace", "workload", "container", "image", "status", "cause")
    head = ("NAMESPACE", "WORKLOAD", "CONTAINER", "IMAGE", "STATUS", "CAUSE")

    def cell(r: dict[str, str], c: str) -> str:
        if c == "workload":  # Kind/ns/name -> Kind/name: the namespace has its column
            kind, _, rest = r[c].partition("/")
            return f"{kind}/{rest.partition('/')[2]}"
        return "" if c == "cause" and r["status"] == "OK" else r[c]

    data = [head] + [tuple(cell(r, c) for c in cols) for r in rows]
    widths = [max(len(row[i]) for row in data) for i in range(len(cols))]
    lines = [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in data
    ]
    bad = [r for r in rows if r["status"] != "OK"]
    lines += [""] + [f"{r['workload']} {r['container']}: {r['message']}" for r in bad]
    if not rows:
        lines = ["No workloads found."]
    return "\n".join(lines).rstrip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse prints usage itself
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"pullmedic: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())
