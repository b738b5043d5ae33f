"""clerk-sync: settings and the command line that wires ingress, workers and models together."""
