"""`python -m sandbox up|down|status|kubeconfig|build` — the sandbox's small command line."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sandbox import env, paths, procs


def _state(args: argparse.Namespace) -> Path:
    return Path(args.state) if args.state else paths.state_dir()


def cmd_build(args: argparse.Namespace) -> int:
    return subprocess.call(["bash", str(paths.HERE / "build.sh")])


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the whole sandbox in the foreground until SIGTERM/SIGINT."""
    state = _state(args)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sb = env.start(state, time_scale=args.time_scale, node=args.node)
    (state / "ready").write_text("ok")
    try:
        while not stop.wait(1.0):
            if sb.emulator is not None and sb.emulator.poll() is not None:
                print("node emulator exited; see logs/emulator.log", file=sys.stderr)
                break
            if sb.node is not None and not sb.node.alive():
                print("the real node exited; see logs/kubelet.log", file=sys.stderr)
                break
    finally:
        (state / "ready").unlink(missing_ok=True)
        sb.stop()
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    state = _state(args)
    if (state / "ready").exists() and _alive(state):
        print(f"sandbox already running; kubeconfig: {state / 'cluster' / 'kubeconfig'}")
        return 0
    cmd_down(args)
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    subprocess.check_call(["bash", str(paths.HERE / "build.sh")])
    t0 = time.monotonic()
    env_vars = dict(os.environ)
    env_vars["PYTHONPATH"] = os.pathsep.join(
        [str(paths.REPO), str(paths.REPO / "operator"), env_vars.get("PYTHONPATH", "")]
    )
    proc = procs.spawn(
        [
            sys.executable,
            "-m",
            "sandbox",
            "--state",
            str(state),
            "serve",
            "--time-scale",
            str(args.time_scale),
            *(["--node", args.node] if args.node else []),
        ],
        state / "serve.log",
        env=env_vars,
        tie=False,
    )
    (state / "serve.pid").write_text(str(proc.pid))
    procs.wait_until(lambda: (state / "ready").exists(), "sandbox", 300, proc, state / "serve.log")
    print(f"sandbox up in {time.monotonic() - t0:.1f}s")
    node = json.loads((state / "sandbox.json").read_text())["node"]
    if node["kind"] == "real":
        print(f"node: real kubelet {node['kubelet']} on containerd {node['containerd']}")
    else:
        why = node.get("fallback_reason")
        print("node: emulator" + (f" (no real node: {why})" if why else ""))
    print(f"kubeconfig: {state / 'cluster' / 'kubeconfig'}")
    return 0


def _alive(state: Path) -> bool:
    pid_file = state / "serve.pid"
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (ProcessLookupError, ValueError):
        return False
    return True


def cmd_down(args: argparse.Namespace) -> int:
    state = _state(args)
    for name in ("operator.pid", "serve.pid"):
        pid_file = state / name
        if pid_file.exists():
            # A real node needs a few seconds to undo its host state after SIGTERM.
            procs.kill_pid(int(pid_file.read_text()), patience=60)
            pid_file.unlink()
    (state / "ready").unlink(missing_ok=True)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = _state(args)
    info = state / "sandbox.json"
    if not ((state / "ready").exists() and _alive(state) and info.exists()):
        print("sandbox is not running")
        return 1
    print(json.dumps(json.loads(info.read_text()), indent=2))
    return 0


def cmd_kubeconfig(args: argparse.Namespace) -> int:
    print(_state(args) / "cluster" / "kubeconfig")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    p.add_argument("--state", help="state folder (default: .sandbox in the repo)")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, fn in [
        ("build", cmd_build),
        ("down", cmd_down),
        ("status", cmd_status),
        ("kubeconfig", cmd_kubeconfig),
    ]:
        sub.add_parser(name).set_defaults(fn=fn)
    for name, fn in [("up", cmd_up), ("serve", cmd_serve)]:
        sp = sub.add_parser(name)
        sp.add_argument(
            "--time-scale",
            type=float,
            default=1.0,
            help="emulated kubelet back-off multiplier (1.0 = real timing)",
        )
        sp.add_argument(
            "--node",
            choices=("real", "emulator"),
            default=None,
            help="real kubelet (default, or PULLMEDIC_NODE) or the node emulator",
        )
        sp.set_defaults(fn=fn)
    args = p.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
