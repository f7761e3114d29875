"""Where runs execute: systemd transient units on this host (the default), or Slurm batch jobs.

Both meet `base.Executor`, the one interface the daemon uses; neither imports the daemon.
"""
