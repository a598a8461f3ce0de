"""Bootstrap: turns "a host I can SSH into" into "a host running our runtime, reachable and trusted"."""
