B=.venv/bin/babysit
$B run --name=xa --command='sleep 5' --estimated_cpu_cores=0.1 --estimated_mem_bytes=16M >/dev/null
sleep 1
for d in $(find /sys/fs/cgroup -type d -name 'babysit-xa.service'); do echo "== $d"; getfattr -d -m - $d 2>&1 | head; done
journalctl --no-pager -o cat | grep -i suppress | tail -3
systemd --version | head -1
