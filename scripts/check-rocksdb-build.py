#!/usr/bin/env python3
"""Fails when a cargo command the README or the scripts run would compile
RocksDB a second time.

Cargo reuses a compiled dependency only while a command resolves it, and
everything it is built from, identically (features, profile, target). A
command that names one package can resolve the graph differently, give
librocksdb-sys a new fingerprint, and compile RocksDB again (about 20
minutes on two cores). This asks cargo for each command's unit graph,
without building anything, and compares the units librocksdb-sys is built
from across the commands of each profile.

`--unit-graph` is unstable; RUSTC_BOOTSTRAP=1 lets this one query use it
on the stable toolchain. Nothing is compiled with it.
"""

import json
import os
import subprocess
import sys

# (profile, what the README or a script runs, the cargo arguments that
# resolve the same graph)
COMMANDS = [
    ("dev", "scripts/test.sh: cargo test --workspace",
     ["test", "--workspace", "--no-run"]),
    ("dev", "scripts/test.sh: cargo clippy --workspace --all-targets",
     ["build", "--workspace", "--all-targets"]),
    ("dev", "README: cargo build -p phalanx-node",
     ["build", "-p", "phalanx-node"]),
    ("dev", "scripts/test.sh: cargo clippy --features phalanx-node/byzantine",
     ["build", "--workspace", "--all-targets", "--features", "phalanx-node/byzantine"]),
    ("dev", "tests/src/lib.rs: the binaries the multi-process tests run",
     ["build", "-p", "phalanx-node", "-p", "phalanx-testnet", "--bins",
      "--features", "phalanx-node/byzantine"]),
    ("dev", "README: cargo build -p phalanx-node --features byzantine",
     ["build", "-p", "phalanx-node", "--features", "byzantine"]),
    ("release", "scripts/testnet.sh: cargo build --release -p phalanx-node -p phalanx-testnet",
     ["build", "--release", "-p", "phalanx-node", "-p", "phalanx-testnet"]),
    ("release", "README: cargo run --release -p phalanx-storage --example crash_loop",
     ["build", "--release", "-p", "phalanx-storage", "--example", "crash_loop"]),
    ("release", "README: cargo bench -p phalanx-storage --bench commit",
     ["bench", "--no-run", "-p", "phalanx-storage", "--bench", "commit"]),
]


def rocksdb_closure(args):
    env = dict(os.environ, RUSTC_BOOTSTRAP="1")
    run = subprocess.run(
        ["cargo", *args, "--locked", "-Z", "unstable-options", "--unit-graph"],
        env=env, capture_output=True, text=True,
    )
    if run.returncode != 0:
        sys.exit(f"check-rocksdb-build: cargo {' '.join(args)} failed:\n{run.stderr}")
    out = run.stdout
    units = json.loads(out)["units"]
    roots = [i for i, u in enumerate(units) if "#librocksdb-sys@" in u["pkg_id"]]
    if not roots:
        sys.exit(f"check-rocksdb-build: {' '.join(args)} does not reach librocksdb-sys")
    seen, todo = set(), list(roots)
    while todo:
        i = todo.pop()
        if i in seen:
            continue
        seen.add(i)
        todo.extend(d["index"] for d in units[i]["dependencies"])

    def describe(u):
        d = {k: u[k] for k in ("pkg_id", "target", "profile", "platform", "mode", "features")}
        # The profile's name picks a directory (test and bench units of
        # dependencies are the dev and release ones); only its settings
        # enter the fingerprint.
        d["profile"] = {k: v for k, v in d["profile"].items() if k != "name"}
        return json.dumps(d, sort_keys=True)

    return {describe(units[i]) for i in seen}


def main():
    reference = {}
    failed = False
    for profile, name, args in COMMANDS:
        units = rocksdb_closure(args)
        if profile not in reference:
            reference[profile] = (name, units)
            continue
        ref_name, ref = reference[profile]
        if units != ref:
            failed = True
            print(f"check-rocksdb-build: '{name}' builds RocksDB differently from '{ref_name}':",
                  file=sys.stderr)
            for line in sorted(ref - units):
                print(f"  only in the first:  {line}", file=sys.stderr)
            for line in sorted(units - ref):
                print(f"  only in the second: {line}", file=sys.stderr)
    if failed:
        sys.exit(1)
    for profile, (_, units) in reference.items():
        print(f"check-rocksdb-build: {profile}: every command builds RocksDB from the same {len(units)} units")


if __name__ == "__main__":
    main()
