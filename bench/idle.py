#!/usr/bin/env python3
"""Idle memory and CPU of a running app and everything it started (scripts/bench, figure 4).

    idle.py <label> <pid> <home> [seconds]

The processes measured: <pid>, all its descendants, and any other process whose command line
names <home> (a service that detached from its parent still belongs to the instance). Memory is
PSS (proportional set size: a shared page counts once, split between the processes sharing it,
so Postgres' shared buffers are not counted once per backend), read from
/proc/<pid>/smaps_rollup at the end of the window. CPU is utime+stime over the window, as a
percentage of one core. Prints one Markdown table row.
"""

import os
import sys
import time

TICKS = os.sysconf("SC_CLK_TCK")


def children_map():
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry))
    return children


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def instance_processes(root, home):
    children = children_map()
    found, stack = set(), [root]
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        found.add(pid)
        stack.extend(children.get(pid, []))
    for entry in os.listdir("/proc"):
        # Not this script, whose own command line names the home.
        if entry.isdigit() and int(entry) not in found | {os.getpid()} and home in cmdline(int(entry)):
            found.add(int(entry))
    return found


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def group(pid, root):
    """Which part of the instance a process is: the app itself, WebKit, or a managed service."""
    name = comm(pid)
    # The root may be a wrapper (dbus-run-session for the desktop app's session bus).
    if pid == root or name.startswith(("lookit-local", "dbus-")):
        return "app"
    if name.startswith("WebKit"):
        return "webkit"
    return "services"


def main():
    label, root, home = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 30.0
    before = {pid: cpu_ticks(pid) for pid in instance_processes(root, home)}
    time.sleep(seconds)
    after = instance_processes(root, home)
    cpu = {"app": 0, "webkit": 0, "services": 0}
    memory = {"app": 0, "webkit": 0, "services": 0}
    names = []
    for pid in sorted(after):
        ticks = cpu_ticks(pid)
        if ticks is None:
            continue
        part = group(pid, root)
        # A process born during the window counts from zero.
        cpu[part] += ticks - (before.get(pid) or 0)
        memory[part] += pss_kib(pid)
        names.append(comm(pid))
    percent = {k: v / TICKS / seconds * 100 for k, v in cpu.items()}
    mib = {k: v / 1024 for k, v in memory.items()}
    own = "app" if mib["webkit"] == 0 else "app + WebKit"
    own_mib = mib["app"] + mib["webkit"]
    own_cpu = percent["app"] + percent["webkit"]
    print(
        f"| {label} | {len(names)} | {own_mib:.0f} MiB ({own}) | {mib['services']:.0f} MiB "
        f"| {own_mib + mib['services']:.0f} MiB | {own_cpu:.2f} % | {percent['services']:.2f} % "
        f"| {sum(percent.values()):.2f} % |"
    )
    print(f"processes ({label}): {', '.join(sorted(set(names)))}", file=sys.stderr)


if __name__ == "__main__":
    main()
