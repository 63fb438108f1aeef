"""`userseg serve`: the long-running service (composition root, health, metrics, systemd glue)."""
