"""Real containers on this machine: isolation, limits, logs, exec, TTY, volumes, lifecycle, files and events."""
from __future__ import annotations

import io
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import time
import urllib.request

import pytest

from machines.runtime.engine import Engine
from machines.runtime.engine.config import command_of, merge_config
from machines.runtime.errors import Conflict, InvalidParameter, NotModified
from tests.engine.conftest import Runner, output, read_session, wait_for


def test_container_has_its_own_pid_1_hostname_mounts_and_network(engine: Engine, run: Runner) -> None:
    cid = run(["sh", "-c", "echo pid=$$; hostname; ls /sys/class/net; grep ' / ' /proc/mounts | cut -d' ' -f3;"
                           "test -e /work && echo host-visible; id -u; cat /etc/hostname; ls /dev"],
              Hostname="box1")
    assert engine.wait(cid)["StatusCode"] == 0
    lines = output(engine, cid).split()
    assert lines[:4] == ["pid=1", "box1", "lo", "overlay"]
    assert "host-visible" not in lines
    assert lines[4:6] == ["0", "box1"]
    assert {"null", "zero", "urandom", "pts", "shm", "ptmx"} <= set(lines[6:])


def test_capabilities_are_docker_defaults_unless_privileged(engine: Engine, run: Runner) -> None:
    plain = run(["sh", "-c", "grep CapEff /proc/self/status"])
    privileged = run(["sh", "-c", "grep CapEff /proc/self/status"], host={"Privileged": True})
    engine.wait(plain)
    engine.wait(privileged)
    assert output(engine, plain).split()[1] == "00000000a80425fb"
    assert int(output(engine, privileged).split()[1], 16) > 0xa80425fb


def test_memory_hog_is_oom_killed_and_reported(engine: Engine, run: Runner) -> None:
    cid = run(["sh", "-c", "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done"],
              host={"Memory": 16 * 1024 * 1024, "MemorySwap": 16 * 1024 * 1024})
    assert engine.wait(cid)["StatusCode"] == 137
    state = engine.inspect_container(cid)["State"]
    assert state["OOMKilled"] is True and state["Status"] == "exited"


def test_fork_bomb_stops_at_the_pid_limit(engine: Engine, run: Runner) -> None:
    cid = run(["sh", "-c", "i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); echo $i; done; wait"],
              host={"PidsLimit": 12})
    assert engine.wait(cid)["StatusCode"] != 0  # the shell gives up when fork fails
    assert "can't fork" in output(engine, cid, stdout=False, stderr=True)
    forked = int(output(engine, cid).split()[-1])
    assert 5 <= forked < 12  # the shell itself is one of the 12


def test_logs_streams_tail_timestamps_and_follow(engine: Engine, run: Runner) -> None:
    cid = run(["sh", "-c", "echo one; echo two >&2; echo three"])
    engine.wait(cid)
    items = list(engine.logs(cid, follow=False, stdout=True, stderr=True))
    assert sorted(items) == sorted([(1, b"one\n"), (2, b"two\n"), (1, b"three\n")])
    assert list(engine.logs(cid, follow=False, stdout=True, stderr=False, tail="1")) == [(1, b"three\n")]
    stamped = list(engine.logs(cid, follow=False, stdout=False, stderr=True, timestamps=True))
    stamp, text = stamped[0][1].split(b" ", 1)
    assert text == b"two\n" and stamp.endswith(b"Z") and b"T" in stamp
    later = list(engine.logs(cid, follow=False, stdout=True, stderr=True, since=time.time() + 60))
    assert later == []

    slow = run(["sh", "-c", "echo a; sleep 0.4; echo b"])
    started = time.monotonic()
    followed = [d for _, d in engine.logs(slow, follow=True, stdout=True, stderr=True)]
    assert followed == [b"a\n", b"b\n"]
    assert time.monotonic() - started >= 0.3


def test_exec_exit_code_env_user_tty_and_errors(engine: Engine, run: Runner) -> None:
    cid = run(["sleep", "30"], Env=["BASE=1"])
    eid = engine.exec_create(cid, {"Cmd": ["sh", "-c", "echo $BASE$FOO; pwd; id -u; exit 3"], "Env": ["FOO=bar"],
                                   "WorkingDir": "/tmp", "User": "nobody", "AttachStdout": True})
    assert engine.exec_inspect(eid)["Running"] is False
    session = engine.exec_start(eid)
    assert read_session(session) == b"1bar\n/tmp\n65534\n"
    info = engine.exec_inspect(eid)
    assert info["ExitCode"] == 3 and info["Running"] is False and info["Pid"] > 0

    tty = engine.exec_create(cid, {"Cmd": ["sh", "-c", "tty; stty size"], "Tty": True, "ConsoleSize": [20, 70]})
    text = read_session(engine.exec_start(tty, tty=True))
    assert text.split() == [b"/dev/pts/0", b"20", b"70"]
    assert engine.exec_inspect(tty)["ExitCode"] == 0

    missing = engine.exec_create(cid, {"Cmd": ["no-such-tool"]})
    with pytest.raises(InvalidParameter, match="executable file not found"):
        engine.exec_start(missing)
    assert engine.exec_inspect(missing)["ExitCode"] == 127

    stdin = engine.exec_create(cid, {"Cmd": ["cat"], "AttachStdin": True})
    session = engine.exec_start(stdin)
    session.write(b"piped\n")
    session.close_stdin()
    assert read_session(session) == b"piped\n"


def test_tty_container_with_console_size_and_stdin_attach(engine: Engine, run: Runner) -> None:
    cid = run(["sh", "-c", "tty; stty size"], Tty=True, host={"ConsoleSize": [30, 100]})
    engine.wait(cid)
    assert output(engine, cid).split() == ["/dev/pts/0", "30", "100"]

    cat = run(["cat"], start=False, OpenStdin=True, StdinOnce=True, AttachStdin=True)
    session = engine.attach(cat, stdin=True, stdout=True, stderr=True)
    session.write(b"hello\n")
    session.close_stdin()
    engine.start(cat)
    assert read_session(session) == b"hello\n"
    assert engine.wait(cat)["StatusCode"] == 0


def test_clients_that_connect_while_output_flows_never_stall_the_shim(engine: Engine, run: Runner) -> None:
    """The shim may take a waiting client while it forwards output; the listener's readiness from that same round
    is then stale, and acting on it must not block the shim (it would stop forwarding output and stdin, and never
    see the container exit: a stop would wait forever)."""
    cid = run(["sh", "-c", "while :; do echo x; done"])
    for _ in range(40):
        session = engine.attach(cid, stdout=True, stderr=False)
        got: list = []
        # two chunks: the first may go out in the very round that took the client, the second needs the next one
        reader = threading.Thread(target=lambda: got.extend([session.read(), session.read()]), daemon=True)
        reader.start()
        reader.join(60)  # a bound for a hang, not a speed: a working shim forwards the output at once
        session.close()
        assert len(got) == 2 and None not in got, "the shim stopped forwarding output"
    engine.stop(cid, timeout=0)
    assert engine.wait(cid)["StatusCode"] == 137


def test_named_volume_survives_and_ro_bind_is_read_only(engine: Engine, run: Runner) -> None:
    name = f"vol-{os.getpid()}"
    writer = run(["sh", "-c", "echo kept > /data/file"], host={"Binds": [f"{name}:/data"]})
    assert engine.wait(writer)["StatusCode"] == 0
    engine.remove(writer, volumes=True)
    assert engine.volumes.inspect(name)["Name"] == name
    reader = run(["cat", "/data/file"], host={"Binds": [f"{name}:/data"]})
    engine.wait(reader)
    assert output(engine, reader) == "kept\n"
    engine.remove(reader)
    engine.volumes.remove(name)

    host_dir = tempfile.mkdtemp(prefix="engine-bind-")
    try:
        with open(os.path.join(host_dir, "seen"), "w") as f:
            f.write("from host\n")
        ro = run(["sh", "-c", "cat /mnt/seen; touch /mnt/new"], host={"Binds": [f"{host_dir}:/mnt:ro"]})
        assert engine.wait(ro)["StatusCode"] == 1
        assert output(engine, ro) == "from host\n"
        assert "Read-only file system" in output(engine, ro, stdout=False, stderr=True)
        assert os.listdir(host_dir) == ["seen"]
    finally:
        os.unlink(os.path.join(host_dir, "seen"))
        os.rmdir(host_dir)


def test_start_errors_use_docker_wording(engine: Engine, run: Runner) -> None:
    cid = run(["no-such-command"], start=False)
    with pytest.raises(InvalidParameter, match="executable file not found in \\$PATH"):
        engine.start(cid)
    state = engine.inspect_container(cid)["State"]
    assert state["ExitCode"] == 127 and state["Status"] == "created"
    denied = run(["/etc/passwd"], start=False)
    with pytest.raises(InvalidParameter, match="permission denied"):
        engine.start(denied)
    assert engine.inspect_container(denied)["State"]["ExitCode"] == 126


def test_stop_kill_pause_restart_rename(engine: Engine, run: Runner) -> None:
    cid = run(["sleep", "30"])
    engine.pause(cid)
    assert engine.inspect_container(cid)["State"]["Status"] == "paused"
    engine.unpause(cid)
    with pytest.raises(Conflict):
        engine.remove(cid)
    started = time.monotonic()
    engine.stop(cid, timeout=1)  # sleep as PID 1 ignores SIGTERM: killed after the timeout
    assert 0.9 <= time.monotonic() - started < 5
    assert engine.inspect_container(cid)["State"]["ExitCode"] == 137
    with pytest.raises(NotModified):
        engine.stop(cid)
    engine.restart(cid, timeout=0)
    assert engine.inspect_container(cid)["State"]["Running"] is True
    new_name = f"renamed-{os.getpid()}"
    engine.rename(cid, new_name)
    assert engine.inspect_container(new_name)["Id"] == cid
    engine.kill(cid, "SIGTERM")  # ignored by PID 1
    time.sleep(0.2)
    assert engine.inspect_container(cid)["State"]["Running"] is True
    engine.kill(cid)
    assert engine.inspect_container(cid)["State"]["ExitCode"] == 137


def test_init_reaps_and_forwards_signals(engine: Engine, run: Runner) -> None:
    cid = run(["sh", "-c", "cat /proc/1/comm; (sleep 0.1 &); sleep 0.6;"
                           "grep -l '^State:.*Z' /proc/[0-9]*/status | wc -l; sleep 30"], host={"Init": True})
    wait_for(lambda: len(output(engine, cid).split()) == 2, what="output")
    assert output(engine, cid).split() == ["init", "0"]  # the orphaned sleep was reaped by init
    started = time.monotonic()
    engine.stop(cid, timeout=10)
    assert time.monotonic() - started < 5
    assert engine.inspect_container(cid)["State"]["ExitCode"] == 143


def test_restart_policies(engine: Engine, run: Runner) -> None:
    failing = run(["sh", "-c", "exit 3"], host={"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 2}})
    wait_for(lambda: engine.inspect_container(failing)["RestartCount"] == 2
             and not engine.inspect_container(failing)["State"]["Running"]
             and not engine.inspect_container(failing)["State"]["Restarting"], what="two restarts")
    assert engine.inspect_container(failing)["State"]["ExitCode"] == 3
    always = run(["sh", "-c", "sleep 0.1"], host={"RestartPolicy": {"Name": "always"}})
    wait_for(lambda: engine.inspect_container(always)["RestartCount"] >= 2, what="always restarts")
    try:
        engine.stop(always, timeout=0)
    except NotModified:  # caught between two runs: stop still cancels the pending restart
        pass
    wait_for(lambda: not engine.inspect_container(always)["State"]["Running"], what="stopped")
    count = engine.inspect_container(always)["RestartCount"]
    time.sleep(0.5)
    assert engine.inspect_container(always)["RestartCount"] == count


def test_wait_conditions_and_auto_remove(engine: Engine, run: Runner) -> None:
    cid = run(["sh", "-c", "exit 4"], start=False, host={"AutoRemove": True})
    results = {}
    waiter = threading.Thread(target=lambda: results.update(engine.wait(cid, "removed")))
    waiter.start()
    engine.start(cid)
    waiter.join(10)
    assert results["StatusCode"] == 4
    assert all(c["Id"] != cid for c in engine.list_containers(all=True))

    later = run(["sh", "-c", "exit 5"], start=False)
    box = {}
    nxt = threading.Thread(target=lambda: box.update(engine.wait(later, "next-exit")))
    nxt.start()
    engine.start(later)
    nxt.join(10)
    assert box["StatusCode"] == 5
    assert engine.wait(later, "not-running")["StatusCode"] == 5


def test_a_waiter_counts_the_exits_after_it_was_made(engine: Engine, run: Runner) -> None:
    """The API makes the waiter before /wait's headers go out: an exit that comes before anything reads it (the
    CLI starts the container as soon as it has the headers) is the one it answers."""
    cid = run(["sh", "-c", "exit 6"], start=False)
    first = engine.waiter(cid, "next-exit")
    engine.start(cid)
    wait_for(lambda: engine.inspect_container(cid)["State"]["Status"] == "exited", what="the exit")
    second = engine.waiter(cid, "next-exit")  # made after that exit: waits for the next one
    results: dict[str, dict] = {}
    readers = [threading.Thread(target=lambda n=n, b=b: results.update({n: b()}), daemon=True)
               for n, b in (("first", first), ("second", second))]
    for reader in readers:
        reader.start()
    readers[0].join(10)
    assert results == {"first": {"StatusCode": 6, "Error": None}}
    engine.start(cid)
    readers[1].join(10)
    assert results["second"] == {"StatusCode": 6, "Error": None}


def test_archive_put_get_head_export_top_stats(engine: Engine, run: Runner) -> None:
    cid = run(["sleep", "30"])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"copied in\n"
        info = tarfile.TarInfo("dir/hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    engine.archive_put(cid, "/tmp", buf)
    eid = engine.exec_create(cid, {"Cmd": ["cat", "/tmp/dir/hello.txt"]})
    assert read_session(engine.exec_start(eid)) == b"copied in\n"
    stat = engine.archive_head(cid, "/tmp/dir/hello.txt")
    assert stat["name"] == "hello.txt" and stat["size"] == 10
    chunks, stat = engine.archive_get(cid, "/etc/passwd")
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        assert tar.getnames() == ["passwd"]
        assert b"nobody" in tar.extractfile("passwd").read()
    top = engine.top(cid)
    assert any("sleep 30" in " ".join(p) for p in top["Processes"])
    stats = engine.stats(cid)
    assert stats["memory_stats"]["usage"] > 0 and stats["pids_stats"]["current"] >= 1
    engine.kill(cid)
    with tarfile.open(fileobj=io.BytesIO(b"".join(engine.export(cid)))) as tar:
        names = tar.getnames()
    assert "bin/busybox" in names and "tmp/dir/hello.txt" in names


def test_events_follow_the_lifecycle(engine: Engine, run: Runner) -> None:
    since = time.time()
    cid = run(["sh", "-c", "exit 2"])
    engine.wait(cid)
    engine.remove(cid)
    seen = []
    for event in engine.events(since=since, until=time.time() + 0.5, filters={"container": [cid]}):
        seen.append((event["Action"], event["Actor"]["Attributes"].get("exitCode")))
    assert [a for a, _ in seen] == ["create", "start", "die", "destroy"]
    assert seen[2][1] == "2"


def test_bad_requests_are_refused(engine: Engine, run: Runner) -> None:
    with pytest.raises(InvalidParameter):
        engine.create_container({"Image": "busybox", "Cmd": ["true"], "HostConfig": {"RestartPolicy": {
            "Name": "always"}, "AutoRemove": True}})
    with pytest.raises(InvalidParameter):
        engine.create_container({"Image": "busybox", "Cmd": ["true"]}, name="bad name!")
    name = f"dup-{os.getpid()}"
    first = engine.create_container({"Image": "busybox", "Cmd": ["true"]}, name=name)["Id"]
    try:
        with pytest.raises(Conflict, match="already in use"):
            engine.create_container({"Image": "busybox", "Cmd": ["true"]}, name=name)
    finally:
        engine.remove(first)


def test_user_groups_and_image_content_copied_into_a_new_volume(engine: Engine, run: Runner) -> None:
    cid = run(["id"], User="app")
    engine.wait(cid)
    assert output(engine, cid).strip() == "uid=1000(app) gid=1000(app) groups=1000(app),2000(extra)"
    name = f"seeded-{os.getpid()}"
    seeded = run(["cat", "/etc/group"], host={"Binds": [f"{name}:/etc"]})
    engine.wait(seeded)
    assert "extra:x:2000:app" in output(engine, seeded)
    engine.remove(seeded)
    engine.volumes.remove(name)


def test_exec_refused_while_paused(engine: Engine, run: Runner) -> None:
    cid = run(["sleep", "30"])
    engine.pause(cid)
    try:
        with pytest.raises(Conflict, match="paused"):
            engine.exec_create(cid, {"Cmd": ["true"]})
    finally:
        engine.unpause(cid)


def test_bridge_network_with_a_published_port(engine: Engine, run: Runner) -> None:
    cid = run(["sh", "-c", "mkdir /www && echo served > /www/index.html && exec httpd -f -p 80 -h /www"],
              host={"NetworkMode": "bridge", "PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}},
              ExposedPorts={"80/tcp": {}})
    info = engine.inspect_container(cid)
    address = info["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
    assert address.startswith("10.199.")
    port = int(info["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"])

    def fetch() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=2) as response:
                return response.read() == b"served\n"
        except OSError:
            return False

    wait_for(fetch, what="the published port")
    engine.stop(cid, timeout=0)
    assert engine.inspect_container(cid)["NetworkSettings"]["Ports"] == {}
    assert not fetch()


def test_resize_reaches_the_container_tty_and_prune_removes_stopped(engine: Engine, run: Runner) -> None:
    cid = run(["sh", "-c", "sleep 0.5; stty size"], Tty=True)
    engine.resize(cid, 40, 120)
    engine.wait(cid)
    assert output(engine, cid).split() == ["40", "120"]
    label = f"prune-{os.getpid()}"
    kept = run(["sleep", "30"], Labels={"suite": label})
    pruned = engine.prune_containers(filters={"label": ["suite=" + label]})
    assert kept not in pruned["ContainersDeleted"]
    stopped = run(["true"], Labels={"suite": label})
    engine.wait(stopped)
    assert engine.prune_containers(filters={"label": ["suite=" + label]})["ContainersDeleted"] == [stopped]


def test_ulimits_sysctls_extra_groups_and_host_namespaces(engine: Engine, run: Runner) -> None:
    cid = run(["sh", "-c", "ulimit -n; cat /proc/sys/net/ipv4/ip_forward; id -G; echo $$; hostname"],
              host={"Ulimits": [{"Name": "nofile", "Soft": 321, "Hard": 654}],
                    "Sysctls": {"net.ipv4.ip_forward": "1"}, "GroupAdd": ["extra", "3000"],
                    "PidMode": "host", "UTSMode": "host"})
    assert engine.wait(cid)["StatusCode"] == 0
    lines = output(engine, cid).splitlines()
    assert lines[:3] == ["321", "1", "0 2000 3000"]
    assert lines[3] != "1" and lines[4] == socket.gethostname()
    with pytest.raises(InvalidParameter):
        run(["true"], host={"Ulimits": [{"Name": "bogus", "Soft": 1, "Hard": 1}]})


def test_device_nodes_beyond_the_default_list_are_unusable(engine: Engine, run: Runner) -> None:
    cid = run(["sh", "-c", "mknod /tmp/disk b 8 0 && head -c1 /tmp/disk; echo rc=$?; head -c1 /dev/zero | wc -c"])
    engine.wait(cid)
    # stdout and stderr are two pipes: their lines are ordered within each, not across them
    assert output(engine, cid, stdout=True) == "rc=1\n1\n"  # the node is refused; /dev/zero still reads
    assert "Operation not permitted" in output(engine, cid, stdout=False, stderr=True)


def test_log_rotation_keeps_max_file_files_and_follow_crosses_rotations(engine: Engine, run: Runner) -> None:
    rotate = {"LogConfig": {"Type": "json-file", "Config": {"max-size": "2k", "max-file": "3"}}}
    cid = run(["sh", "-c", "for i in $(seq 120); do echo line$i; sleep 0.01; done"], host=rotate)
    followed = [d for _, d in engine.logs(cid, follow=True, stdout=True, stderr=True)]
    assert followed == [b"line%d\n" % i for i in range(1, 121)]  # a rotation every ~27 lines: the poll keeps up
    kept = [d for _, d in engine.logs(cid, follow=False, stdout=True, stderr=True)]
    assert kept[-1] == b"line120\n" and 27 < len(kept) < 110
    log_path = engine.inspect_container(cid)["LogPath"]
    assert os.path.exists(log_path + ".2") and not os.path.exists(log_path + ".3")


def test_seccomp_refuses_new_user_namespaces_unless_unconfined(engine: Engine, run: Runner) -> None:
    confined = run(["sh", "-c", "unshare -U true && echo allowed || echo refused"])
    unconfined = run(["sh", "-c", "unshare -U true && echo allowed || echo refused"],
                     host={"SecurityOpt": ["seccomp=unconfined"]})
    engine.wait(confined)
    engine.wait(unconfined)
    assert output(engine, confined) == "refused\n"
    assert output(engine, unconfined) == "allowed\n"


def test_readonly_root_tmpfs_mounts_api_extra_hosts_dns_and_new_workdir(engine: Engine, run: Runner) -> None:
    host_dir = tempfile.mkdtemp(prefix="engine-mounts-")
    with open(os.path.join(host_dir, "marker"), "w") as f:
        f.write("bound\n")
    try:
        cid = run(["sh", "-c", "pwd; touch /rootfile 2>/dev/null || echo ro-root; touch /scratch/x && echo tmpfs-rw;"
                               "grep scratch /proc/mounts | cut -d' ' -f3; cat /in/marker; grep db /etc/hosts;"
                               "grep nameserver /etc/resolv.conf"],
                  WorkingDir="/srv/app",
                  host={"ReadonlyRootfs": True, "Tmpfs": {"/scratch": "size=1m"},
                        "Mounts": [{"Type": "bind", "Source": host_dir, "Target": "/in", "ReadOnly": True}],
                        "ExtraHosts": ["db:10.1.2.3"], "Dns": ["10.9.9.9"]})
        assert engine.wait(cid)["StatusCode"] == 0
        assert output(engine, cid).splitlines() == ["/srv/app", "ro-root", "tmpfs-rw", "tmpfs", "bound",
                                                    "10.1.2.3\tdb", "nameserver 10.9.9.9"]
    finally:
        shutil.rmtree(host_dir)


def test_image_config_merges_with_the_request() -> None:
    image = {"Entrypoint": ["/entry"], "Cmd": ["default"], "Env": ["A=1", "B=2"], "WorkingDir": "/w",
             "User": "app", "Labels": {"x": "1"}, "ExposedPorts": {"80/tcp": {}}, "StopSignal": "SIGQUIT"}
    merged = merge_config({"Cmd": ["mine"], "Env": ["B=3", "C=4"], "Labels": {"y": "2"}, "ExposedPorts": {"53/udp": {}}},
                          image)
    assert command_of(merged) == ["/entry", "mine"]
    assert merged["Env"] == ["A=1", "B=3", "C=4"]
    assert (merged["WorkingDir"], merged["User"], merged["StopSignal"]) == ("/w", "app", "SIGQUIT")
    assert merged["Labels"] == {"x": "1", "y": "2"} and set(merged["ExposedPorts"]) == {"80/tcp", "53/udp"}
    own_entry = merge_config({"Entrypoint": ["/bin/sh"]}, image)
    assert command_of(own_entry) == ["/bin/sh"]  # a new entrypoint drops the image's Cmd
    assert command_of(merge_config({}, image)) == ["/entry", "default"]
    with pytest.raises(InvalidParameter, match="no command"):
        command_of(merge_config({}, {}))


def test_device_option_makes_a_host_device_usable(engine: Engine, run: Runner) -> None:
    source = next((d for d in ("/dev/fuse", "/dev/loop-control", "/dev/kvm") if os.path.exists(d)), None)
    assert source, "the test needs one of /dev/fuse, /dev/loop-control, /dev/kvm on the host"
    major, minor = os.major(os.stat(source).st_rdev), os.minor(os.stat(source).st_rdev)
    probe = "exec 3<>/dev/probe && echo opened"
    without = run(["sh", "-c", f"mknod /dev/probe c {major} {minor}; {probe}"])
    granted = run(["sh", "-c", probe], host={"Devices": [{"PathOnHost": source, "PathInContainer": "/dev/probe",
                                                          "CgroupPermissions": "rwm"}]})
    engine.wait(without)
    engine.wait(granted)
    assert "opened" not in output(engine, without)
    assert output(engine, granted) == "opened\n"
    with pytest.raises(InvalidParameter, match="not a device node"):
        run(["true"], host={"Devices": [{"PathOnHost": "/etc/hostname", "PathInContainer": "/dev/x"}]})


def test_events_without_since_are_only_new_ones(engine: Engine, run: Runner) -> None:
    earlier = run(["true"])
    engine.wait(earlier)
    began = time.time_ns()
    # ``until`` only bounds a hang: the stream is read up to the new container's die, however long a loaded
    # machine takes to create, start and end it (a fixed window cut it short, missing "die")
    stream = engine.events(until=time.time() + 120, filters={"type": ["container"]})
    later = run(["true"])
    seen = []
    for event in stream:
        seen.append((event["Action"], event["Actor"]["ID"], event["timeNano"]))
        if seen[-1][:2] == ("die", later):
            break
    # Other containers may have news meanwhile (a previous test's exec ending late): new is all that counts.
    assert all(stamp >= began for _, _, stamp in seen), "an event from before the stream began"
    assert not [action for action, cid, _ in seen if cid == earlier]
    assert [action for action, cid, _ in seen if cid == later] == ["create", "start", "die"]
