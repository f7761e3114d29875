"""babysit: a supervised background runner on systemd user units."""

__version__ = "0.1.0"
