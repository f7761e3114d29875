"""The `babysit` command: it parses, calls babysitd over D-Bus and renders, and decides nothing itself.

commands (the verbs), client (the one bus connection), top and charts (views), install (the user unit
and activation file), skill (files for coding agents).
"""
