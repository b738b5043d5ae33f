"""``python -m clerk_sync`` runs the ``clerk-sync`` command."""

from clerk_sync.cli import main

main()
