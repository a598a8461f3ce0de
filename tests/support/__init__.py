"""Shared test support: real SSH test hosts (see README.md here)."""
