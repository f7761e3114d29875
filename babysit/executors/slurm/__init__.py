"""The Slurm executor: tasks as batch jobs on a cluster (executor), over Slurm's own commands (commands)."""
