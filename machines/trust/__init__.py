"""Image signing and verification on the workstation (sigstore key pairs as cosign writes them, GPG simple signing).

The registry side (sessions, auth challenges, the signature attachment format and its checks) is the runtime's own
code in ``runtime.images``, so what ``machines trust verify`` accepts is exactly what a machine's trust policy does.
"""
