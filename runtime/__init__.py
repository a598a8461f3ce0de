"""The bundled container runtime. Standard library only; runs on any Linux host with python3 >= 3.9."""

VERSION = "0.1.0"
API_VERSION = "1.47"
MIN_API_VERSION = "1.24"
