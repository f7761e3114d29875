"""babysitd, the per-user daemon: `babysitd.Babysitd` names its parts and how they meet; `main` runs it."""
