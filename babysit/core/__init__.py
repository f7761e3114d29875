"""The pure core: what a task is and every decision about it, with no I/O.

Models (task, quantities, timeline, protocol) and decisions (capacity: admission; policy: warnings and
kills; outcome: how a run ended; history: estimates learnt from earlier runs; hints and report: what the
user is told). Each takes plain values and returns plain values, so it is tested in a second, anywhere.
Nothing here imports a daemon, executor or CLI module, nor dbus-fast.
"""
