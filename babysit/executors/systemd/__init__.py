"""The systemd executor and its helpers: systemd's D-Bus API (manager), a task's transient unit (unit),
its cgroup (cgroup), its final accounting (accounting) and its output in journald (journal)."""
