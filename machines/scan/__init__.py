"""``machines scan``: inventory an image's packages from its layers, match them against OSV records, report.

``source`` opens an image (a ``docker save`` archive, a root filesystem tar, a registry reference or an image on a
machine), ``inventory`` reads package databases from its layers, ``versions`` orders versions as each ecosystem
does, ``osv`` loads records and matches, ``report`` writes tables, JSON, SARIF and SBOMs.
"""
