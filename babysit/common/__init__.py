"""What every process of babysit uses from this machine: the session bus, the config file, the host's
RAM and cores, fault points for tests, and coroutines run beside the loop."""
